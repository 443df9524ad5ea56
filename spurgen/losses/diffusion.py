"""L_inst and L_prior: DreamBooth's denoising loss on the instance and prior halves (METHOD.md, Training)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def denoising_target(scheduler, z: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """target = eps, or scheduler.get_velocity(z, eps, t) for v-prediction.  # (B, 4, h, w)"""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        return scheduler.get_velocity(z, eps, t)
    raise ValueError(f"unsupported prediction type {kind!r} (epsilon or v_prediction)")


def denoising_losses(
    model_out: torch.Tensor, target: torch.Tensor, n_instance: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_inst = mean ||target - out_inst||^2,  L_prior = mean ||target' - out_prior||^2.

    The batch holds the instance examples first, then the prior (class) examples. Computed in float32
    even under mixed precision. L_prior is 0 when the batch has no prior half.
    """
    if model_out.shape != target.shape:
        raise ValueError(f"model output {tuple(model_out.shape)} and target {tuple(target.shape)} differ")
    if not 0 < n_instance <= model_out.shape[0]:
        raise ValueError(f"n_instance={n_instance} for a batch of {model_out.shape[0]}")
    out, tgt = model_out.float(), target.float()
    loss_inst = F.mse_loss(out[:n_instance], tgt[:n_instance])
    if n_instance == out.shape[0]:
        loss_prior = out.new_zeros(())
    else:
        loss_prior = F.mse_loss(out[n_instance:], tgt[n_instance:])
    return loss_inst, loss_prior
