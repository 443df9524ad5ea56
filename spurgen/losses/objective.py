"""L = L_inst + lambda_prior·L_prior + lambda_sfsl·L_SFSL  (METHOD.md, Training).

A weight of 0 skips its term: lambda_sfsl = 0 is exactly DreamBooth with prior preservation and never runs
the decoder or the extractor. L_SFSL sees only the instance half of the batch, so prior samples get no
SFSL gradient (pulling them toward the spurious feature would undo prior preservation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from spurgen.losses.diffusion import denoising_losses
from spurgen.losses.sfsl import SpuriousFeatureSimilarityLoss


@dataclass
class StepTensors:
    """One training step's tensors; the instance examples come first in the batch."""

    model_out: torch.Tensor  # (B, 4, h, w) eps_hat or v_hat
    target: torch.Tensor  # (B, 4, h, w) eps or v
    z_t: torch.Tensor  # (B, 4, h, w)
    t: torch.Tensor  # (B,)
    n_instance: int
    pair_index: torch.Tensor | None = None  # (n_instance,) reference index of each instance sample


@dataclass
class LossOutput:
    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    sfsl_samples: int = 0  # instance samples that passed the t_max gate this step


class SpurgenObjective(nn.Module):
    def __init__(
        self,
        lambda_prior: float = 1.0,
        lambda_sfsl: float = 0.1,
        sfsl: SpuriousFeatureSimilarityLoss | None = None,
    ):
        super().__init__()
        if lambda_prior < 0 or lambda_sfsl < 0:
            raise ValueError(
                f"loss weights must be >= 0 (lambda_prior={lambda_prior}, lambda_sfsl={lambda_sfsl})"
            )
        if lambda_sfsl > 0 and sfsl is None:
            raise ValueError("lambda_sfsl > 0 needs an SFSL module")
        self.lambda_prior, self.lambda_sfsl = float(lambda_prior), float(lambda_sfsl)
        self.sfsl = sfsl

    @property
    def uses_sfsl(self) -> bool:
        return self.lambda_sfsl > 0 and self.sfsl is not None

    def forward(self, step: StepTensors, global_step: int = 0) -> LossOutput:
        """The total and its parts for one step. The SFSL (which owns f, the decode and m) sees the instance
        half only."""
        loss_inst, loss_prior = denoising_losses(step.model_out, step.target, step.n_instance)
        total = loss_inst + self.lambda_prior * loss_prior
        loss_sfsl = loss_inst.new_zeros(())
        n_sfsl = 0
        if self.uses_sfsl and self.sfsl.active(global_step):
            n = step.n_instance
            value = self.sfsl(step.z_t[:n], step.model_out[:n], step.t[:n], step.pair_index)
            if value is not None:
                loss_sfsl = value
                n_sfsl = int(self.sfsl.gate(step.t[:n]).sum())
                total = total + self.lambda_sfsl * loss_sfsl
        parts = {"loss_instance": loss_inst, "loss_prior": loss_prior, "loss_sfsl": loss_sfsl}
        return LossOutput(total=total, parts=parts, sfsl_samples=n_sfsl)
