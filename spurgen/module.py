"""The LightningModule: receives built parts and computes the objective of METHOD.md (losses/)."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch import nn

from spurgen.errors import SpurgenError
from spurgen.losses import SFSLContext, SpurgenObjective, StepTensors, denoising_target
from spurgen.optim import make_optimizer
from spurgen.pipeline import make_pipeline, sample

FROZEN = ("vae", "feature_extractor")


class NonFiniteLossError(SpurgenError):
    pass


@dataclass
class OptimSettings:
    lr_unet: float = 5e-6
    lr_text_encoder: float = 5e-6
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    train_text_encoder: bool = True
    optimizer: str = "adamw"  # adamw | adamw8bit (spurgen/optim.py)


class SpurgenModule(L.LightningModule):
    """DreamBooth (UNet + text encoder trained jointly) with prior preservation and the SFSL.

    Frozen: the VAE and the robust feature extractor (eval mode always, no gradients, not in the optimiser,
    not in checkpoints). Noise, timesteps and latent samples come from a generator seeded by
    (seed, global step), so a step's randomness depends on nothing else.
    """

    def __init__(
        self,
        unet: nn.Module,
        text_encoder: nn.Module,
        tokenizer,
        vae: nn.Module,
        noise_scheduler,
        feature_extractor: nn.Module | None,
        objective: SpurgenObjective,
        optim: OptimSettings | None = None,
        seed: int = 0,
        on_nonfinite: str = "stop",  # stop: raise naming the term and step | skip: skip the step, count it
        reference_images: torch.Tensor | None = None,  # (R, 3, H, W) in [0, 1], the training transform
        sample_scheduler=None,
        run_config: dict | None = None,
        cache_latents: bool = False,
    ):
        super().__init__()
        self.unet, self.text_encoder, self.vae = unet, text_encoder, vae
        self.feature_extractor = feature_extractor
        self.tokenizer, self.noise_scheduler = tokenizer, noise_scheduler
        self.sample_scheduler = sample_scheduler or noise_scheduler
        self.objective = objective
        self.optim = optim or OptimSettings()
        self.seed = int(seed)
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be stop or skip, got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.batches_seen = 0  # drives the per-batch generator and the data order; saved in checkpoints
        self.skipped_nonfinite = 0
        self.run_config = run_config or {}
        self.strict_loading = False  # frozen parts are not in checkpoints
        self.vae.requires_grad_(False)
        if feature_extractor is not None:
            feature_extractor.requires_grad_(False)
        if not self.optim.train_text_encoder:
            self.text_encoder.requires_grad_(False)
        if objective.uses_sfsl and (feature_extractor is None or reference_images is None):
            raise ValueError("lambda_sfsl > 0 needs a feature extractor and reference images")
        self.register_buffer("reference_images", reference_images, persistent=False)
        self._references_set = False
        self.cache_latents = bool(cache_latents)
        self._latents: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # image key -> E(x)'s (mean, std)
        self.train()

    # -- frozen means frozen ---------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        for name in FROZEN:
            part = getattr(self, name, None)
            if part is not None:
                part.eval()
        if not self.optim.train_text_encoder:
            self.text_encoder.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        sd = checkpoint["state_dict"]
        for key in [k for k in sd if k.split(".", 1)[0] in FROZEN]:
            del sd[key]
        checkpoint["spurgen_config"] = self.run_config
        checkpoint["spurgen_state"] = {
            "batches_seen": self.batches_seen,
            "skipped_nonfinite": self.skipped_nonfinite,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("spurgen_state", {})
        self.batches_seen = int(state.get("batches_seen", 0))
        self.skipped_nonfinite = int(state.get("skipped_nonfinite", 0))

    # -- references: m is computed once per run ----------------------------------------------------------
    def on_fit_start(self) -> None:
        self.prepare_references()

    @torch.no_grad()
    def prepare_references(self) -> None:
        if self._references_set or not self.objective.uses_sfsl:
            return
        with torch.autocast(self.device.type, enabled=False):
            feats = self.feature_extractor.features(self.reference_images.float())
        self.objective.sfsl.set_references(feats)
        self._references_set = True

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

    def sfsl_context(self) -> SFSLContext:
        return SFSLContext(
            vae=self.vae,
            extractor=self.feature_extractor,
            alphas_cumprod=self.noise_scheduler.alphas_cumprod,
            prediction_type=self.noise_scheduler.config.prediction_type,
        )

    def compute_losses(
        self,
        batch: dict,
        generator: torch.Generator,
        global_step: int = 0,
        timesteps: torch.Tensor | None = None,
    ):
        """The objective on one batch; `timesteps` fixes t (measurements on a fixed batch)."""
        pixels = batch["pixel_values"]  # (B, 3, R, R) in [-1, 1], instance half first
        n_inst = int(batch["n_instance"])
        dev = pixels.device
        with torch.no_grad():
            mean, std = self.latent_distribution(pixels, batch.get("keys"))
            noise_z = torch.randn(mean.shape, generator=generator).to(dev, mean.dtype)
            z = (mean + std * noise_z) * self.vae.config.scaling_factor  # (B, 4, h, w)
        z = z.float()
        eps = torch.randn(z.shape, generator=generator).to(dev)
        n_steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, n_steps, (z.shape[0],), generator=generator).to(dev)
        if timesteps is not None:
            t = timesteps.to(dev)
        z_t = self.noise_scheduler.add_noise(z, eps, t)
        enc = self.text_encoder(batch["input_ids"])[0]  # (B, L, D)
        out = self.unet(z_t, t, enc).sample
        target = denoising_target(self.noise_scheduler, z, eps, t)
        step = StepTensors(out, target, z_t, t, n_inst, batch.get("pair_index"))
        ctx = self.sfsl_context() if self.objective.uses_sfsl else None
        return self.objective(step, ctx, global_step)

    @torch.no_grad()
    def latent_distribution(
        self, pixels: torch.Tensor, keys: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """E(x)'s Gaussian (mean, std), each (B, 4, h, w). With cache_latents and keys naming the images, each
        image is encoded once, alone (so its value never depends on its batch-mates), and reused: the VAE is
        frozen and the training transform deterministic, so only the sampled z changes from step to step."""
        if not (self.cache_latents and keys):
            dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
            return dist.mean, dist.std
        for j, key in enumerate(keys):
            if key not in self._latents:
                dist = self.vae.encode(pixels[j : j + 1].to(self.vae.dtype)).latent_dist
                self._latents[key] = (dist.mean[0], dist.std[0])
        return (
            torch.stack([self._latents[k][0] for k in keys]),
            torch.stack([self._latents[k][1] for k in keys]),
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        res = self.compute_losses(batch, self.step_generator(), self.global_step)
        self.batches_seen += 1
        bs = int(batch["n_instance"])
        bad = [name for name, v in {"loss": res.total, **res.parts}.items() if not torch.isfinite(v).all()]
        if bad:
            if self.on_nonfinite == "stop":
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

    def configure_optimizers(self):
        groups = [
            {"params": [p for p in self.unet.parameters() if p.requires_grad], "lr": self.optim.lr_unet}
        ]
        if self.optim.train_text_encoder:
            te = [p for p in self.text_encoder.parameters() if p.requires_grad]
            groups.append({"params": te, "lr": self.optim.lr_text_encoder})
        fp16 = self._trainer is not None and str(self.trainer.precision).startswith("16")
        return make_optimizer(
            self.optim.optimizer,
            groups,
            fused=False if fp16 else None,
            weight_decay=self.optim.weight_decay,
            betas=self.optim.betas,
            eps=self.optim.eps,
        )

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
                return sample(self.pipeline(), prompts, seeds, steps, guidance, resolution, negative_prompt)
        finally:
            self.train(was_training)
