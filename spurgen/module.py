"""The LightningModule: receives built parts and computes the objective of METHOD.md (losses/)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import torch
from torch import nn

from spurgen.errors import SpurgenError
from spurgen.losses import SpurgenObjective, StepTensors, denoising_target
from spurgen.methods.tuning import FullTuning, TextualInversion
from spurgen.models.parts import SDParts
from spurgen.pipeline import SampleSettings, make_pipeline, sample

OptimizerFactory = Callable[..., torch.optim.Optimizer]  # (param groups, fused=...) -> optimiser


def _dropout_active(model: nn.Module) -> bool:
    """Whether `model` drops out anything in training: a Dropout module with p > 0, or (transformers' CLIP
    applies attention dropout functionally) a config rate above 0."""
    config = getattr(model, "config", None)
    rates = [getattr(config, k, 0.0) or 0.0 for k in ("dropout", "attention_dropout", "hidden_dropout")]
    modules = [m.p for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    return any(float(r) > 0 for r in rates + modules)


class NonFiniteLossError(SpurgenError):
    pass


@dataclass
class ModuleSettings:
    """What the module decides itself (conf/module/default.yaml binds each to its train.* key, where the
    defaults are written and spurgen/validation.py checks them); the optimiser's own settings live in its
    partial (spurgen/optim.py)."""

    lr_unet: float
    lr_text_encoder: float
    train_text_encoder: bool
    seed: int
    on_nonfinite: str  # stop: raise naming the term and step | skip: skip the step, count it
    cache_latents: bool  # encode each keyed training image once (train.cache_latents)


class SpurgenModule(L.LightningModule):
    """DreamBooth (UNet + text encoder trained jointly) with prior preservation and the SFSL. What the optimiser
    trains is the method's `tuning` (spurgen/methods/tuning.py: FullTuning by default, or TextualInversion).

    Frozen: the VAE and the robust feature extractor, which the SFSL owns (eval mode always, no gradients,
    not in the optimiser, not in checkpoints). objective.sfsl may be None (lambda_sfsl = 0: no extractor is
    built); when present, the module binds it to its VAE and noise schedule. Noise, timesteps and latent
    samples come from a generator seeded by (seed, batch number), so a step's randomness depends on nothing
    else. `run_config` (the resolved config, saved in checkpoints) is set by the train stage.
    """

    def __init__(
        self,
        parts: SDParts,
        objective: SpurgenObjective,
        optimizer: OptimizerFactory,
        settings: ModuleSettings,
        tuning: FullTuning | TextualInversion | None = None,
    ):
        super().__init__()
        self.parts = parts  # the bundle as built (model id, is_tiny_random, resolution); its modules are registered below
        self.unet, self.text_encoder, self.vae = parts.unet, parts.text_encoder, parts.vae
        self.tokenizer, self.noise_scheduler = parts.tokenizer, parts.noise_scheduler
        self.sample_scheduler = parts.sample_scheduler or parts.noise_scheduler
        self.objective = objective
        self.optimizer_factory = optimizer
        self.settings = settings
        self.tuning = tuning or FullTuning()  # what the optimiser trains (spurgen/methods/tuning.py)
        self.seed = int(self.settings.seed)
        self.batches_seen = 0  # drives the per-batch generator and the data order; saved in checkpoints
        self.skipped_nonfinite = 0
        self.run_config: dict = {}
        self.strict_loading = False  # frozen parts are not in checkpoints
        self.vae.requires_grad_(False)
        if objective.sfsl is not None:
            objective.sfsl.bind(self.vae, self.noise_scheduler)
        if not self.settings.train_text_encoder:
            self.text_encoder.requires_grad_(False)
        self._latents: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # image key -> E(x)'s (mean, std)
        self.train()

    @property
    def feature_extractor(self) -> nn.Module | None:
        """f, owned by the SFSL (None without one)."""
        return None if self.objective.sfsl is None else self.objective.sfsl.extractor

    # -- frozen means frozen ---------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()
        if self.feature_extractor is not None:
            self.feature_extractor.eval()
        for module in self.tuning.frozen_modules(self):
            module.eval()
        return self

    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the frozen parts (the VAE, and f inside the SFSL)."""
        frozen = [m for m in (self.vae, self.feature_extractor) if m is not None]
        named = self.named_modules(remove_duplicate=False)
        return tuple(f"{name}." for name, m in named if any(m is f for f in frozen))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        sd = checkpoint["state_dict"]
        prefixes = self.frozen_prefixes()
        for key in [k for k in sd if k.startswith(prefixes)]:
            del sd[key]
        checkpoint["spurgen_config"] = self.run_config
        checkpoint["spurgen_state"] = {
            "batches_seen": self.batches_seen,
            "skipped_nonfinite": self.skipped_nonfinite,
            "extractor_passes": self.extractor_passes(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("spurgen_state", {})
        self.batches_seen = int(state.get("batches_seen", 0))
        self.skipped_nonfinite = int(state.get("skipped_nonfinite", 0))
        if self.objective.sfsl is not None and "extractor_passes" in state:
            self.objective.sfsl.passes.restore(state["extractor_passes"])

    def extractor_passes(self) -> dict[str, int]:
        """Images through f so far in this run, forward and backward (cost accounting; zeros without f)."""
        sfsl = self.objective.sfsl
        return sfsl.passes.as_dict() if sfsl is not None else {"forward": 0, "backward": 0}

    def on_fit_start(self) -> None:
        """m is computed once per run, here, on the training device (a resumed run or each DDP rank computes
        the same m from the same reference images; it is never stored)."""
        if self.objective.uses_sfsl:
            self.objective.sfsl.prepare_target()

    # -- one step -------------------------------------------------------------------------------------------
    def step_generator(self, batch_number: int | None = None) -> torch.Generator:
        """Seeded by (seed, batch number): the global step times the accumulation plus the micro-batch,
        counted over the whole run (and restored on resume), so nothing else changes a step's noise."""
        b = self.batches_seen if batch_number is None else batch_number
        if batch_number is None and self._trainer is not None and self._trainer.world_size > 1:
            b = (
                int(b) * self._trainer.world_size + self._trainer.global_rank
            )  # DDP: rank r, global batch b*W+r
        return torch.Generator("cpu").manual_seed(self.seed * 1_000_003 + int(b))

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """t ~ U{0, ..., T-1} for n samples, drawn last from the step's generator.  (n,) on the CPU"""
        n_steps = self.noise_scheduler.config.num_train_timesteps
        return torch.randint(0, n_steps, (n,), generator=generator)

    def compute_losses(self, batch: dict, generator: torch.Generator, global_step: int = 0):
        """The objective on one batch (METHOD.md, Training): z = E(x)·s, z_t, the model's output, the target."""
        pixels = batch["pixel_values"]  # (B, 3, R, R) in [-1, 1], instance half first
        dev = pixels.device
        with torch.no_grad():
            mean, std = self.latent_distribution(pixels, batch.get("keys"))
            noise_z = torch.randn(mean.shape, generator=generator).to(dev, mean.dtype)
            z = (mean + std * noise_z) * self.vae.config.scaling_factor  # (B, 4, h, w)
        z = z.float()
        eps = torch.randn(z.shape, generator=generator).to(dev)
        t = self.sample_timesteps(z.shape[0], generator).to(dev)  # (B,)
        z_t = self.noise_scheduler.add_noise(z, eps, t)
        enc = self.encode_prompts(batch["input_ids"])  # (B, L, D)
        out = self.unet(z_t, t, enc).sample
        target = denoising_target(self.noise_scheduler, z, eps, t)
        step = StepTensors(out, target, z_t, t, int(batch["n_instance"]), batch.get("pair_index"))
        return self.objective(step, global_step)

    def encode_prompts(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The text encoder's hidden states (B, L, D) for (B, L) token ids. A batch holds few distinct prompts
        (the instance prompt and the class prompt), and the encoder treats each sequence alone, so each
        distinct one is encoded once and the rows are gathered back: the same values (the gradient sums
        over the gathered rows) at a quarter of the cost for batch 4 + 4. An encoder with dropout active gets
        the whole batch, so that each row keeps its own dropout mask."""
        if self.text_encoder.training and _dropout_active(self.text_encoder):
            return self.text_encoder(input_ids)[0]
        distinct, rows = torch.unique(input_ids, dim=0, return_inverse=True)
        return self.text_encoder(distinct)[0][rows]

    @torch.no_grad()
    def latent_distribution(
        self, pixels: torch.Tensor, keys: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """E(x)'s Gaussian (mean, std), each (B, C, h, w). With cache_latents and keys naming the images, each
        image is encoded once, alone (so its value never depends on its batch-mates), and reused: the VAE is
        frozen and the training transform deterministic, so only the sampled z changes from step to step."""
        if not (self.settings.cache_latents and keys):
            dist = self._encode(pixels)
            return dist.mean, dist.std
        for j, key in enumerate(keys):
            if key not in self._latents:
                dist = self._encode(pixels[j : j + 1])
                self._latents[key] = (dist.mean[0], dist.std[0])
        return (
            torch.stack([self._latents[k][0] for k in keys]),
            torch.stack([self._latents[k][1] for k in keys]),
        )

    def _encode(self, pixels: torch.Tensor):
        """E(x) in the VAE's own dtype with autocast off: mixed precision never lowers the encoder's
        precision (a PCA encoder such as the mini world's needs float32)."""
        with torch.autocast(pixels.device.type, enabled=False):
            return self.vae.encode(pixels.to(self.vae.dtype)).latent_dist

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        res = self.compute_losses(batch, self.step_generator(), self.global_step)
        self.batches_seen += 1
        bs = int(batch["n_instance"])
        bad = [name for name, v in {"loss": res.total, **res.parts}.items() if not torch.isfinite(v).all()]
        if bad:
            if self.settings.on_nonfinite == "stop":
                raise NonFiniteLossError(
                    f"non-finite {', '.join(bad)} at step {self.global_step}: training stopped; the last "
                    "checkpoint in checkpoints/ is intact (train.on_nonfinite=skip skips such steps instead)"
                )
            self.skipped_nonfinite += 1
            self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), batch_size=bs)
            return None  # automatic optimisation skips the optimiser step
        self.log("train/loss", res.total.detach(), prog_bar=True, batch_size=bs)
        for name, value in res.parts.items():
            self.log(f"train/{name}", value.detach(), batch_size=bs)
        self.log("train/sfsl_samples", float(res.sfsl_samples), batch_size=bs)
        return res.total

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """The update, then the gradients freed at once. Lightning's loop sets them to None only inside the
        next step's closure, after that step's forward, so a full set of gradients (3.9 GB in fp32 for SD
        1.5's UNet and text encoder) stayed alive through every forward; freed here, the forward reuses their
        memory (lower peak; on a CPU, fewer page faults: experiments/bench.py, section b)."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer.zero_grad(set_to_none=True)
        self.tuning.after_optimizer_step(self)  # textual inversion: the other embeddings restored

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimiser partial called with the tuning's parameter groups (fused off under mixed precision)."""
        groups = self.tuning.param_groups(self)
        # Lightning's mixed precision (16-mixed, bf16-mixed) refuses gradient clipping with a fused optimiser
        mixed = self._trainer is not None and "mixed" in str(self.trainer.precision)
        return self.optimizer_factory(groups, fused=False if mixed else None)

    # -- images (a callback decides when and where) ------------------------------------------------------
    def pipeline(self):
        return make_pipeline(self.unet, self.text_encoder, self.tokenizer, self.vae, self.sample_scheduler)

    @torch.no_grad()
    def log_images(
        self,
        prompts: list[str],
        seeds: list[int],
        steps: int,
        guidance: float,
        resolution: int,
        negative_prompt: str | None = None,
    ):
        """Sample with the current weights from per-image seeds; never touches the training RNG."""
        was_training = self.training
        self.eval()
        try:
            with torch.autocast(self.device.type, enabled=False):
                settings = SampleSettings(steps, guidance, resolution, negative_prompt)
                return sample(self.pipeline(), prompts, seeds, settings)
        finally:
            self.train(was_training)
