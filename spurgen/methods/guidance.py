"""Sampling-time SFSL guidance: the sampler is steered by the gradient of L_SFSL, with no fine-tuning
(method=guidance) or after it (method=sfsl_guidance). The approach of classifier guidance, universal guidance and
DiG-IN, with spurgen's own loss.

At sampler step i of n (i = 0 .. n-1), before the scheduler's update from z_t to the next latent:

    z0_hat(z_t) = (z_t - sqrt(1-ab_t)·eps_hat) / sqrt(ab_t)          epsilon prediction (v: sqrt(ab_t)·z_t - sqrt(1-ab_t)·v_hat)
    L(z_t)      = sum over the batch's images of L_SFSL(x0_hat),  x0_hat = D(z0_hat / s) in [0, 1]
    z_t        <- z_t - strength · w_i · grad_{z_t} L(z_t)
    w_i         = 0 for i < n - K;  for the j-th of the last K steps (j = i - (n - K) = 0 .. K-1):
                  1 (schedule=constant) or (j + 1) / K (schedule=linear)

then the scheduler steps from the moved z_t with the same eps_hat. eps_hat is the sampler's own prediction
(classifier-free guidance included) and is held fixed: the gradient passes through z0_hat, the frozen decoder D
and the frozen extractor f, not the UNet, so grad_{z_t} L = grad_{z0_hat} L / sqrt(ab_t) (epsilon prediction;
sqrt(ab_t)·grad_{z0_hat} L for v-prediction). L_SFSL is training's (METHOD.md, "spurgen's precise definition";
spurgen/losses/sfsl.py: SpuriousFeatureSimilarityLoss.value_at): the same extractor, reference features and
target, distance, decode and resize, built from the same `loss.sfsl` node. Its training-only options do not
apply: the t_max gate and every_n_steps (the last K steps are the guidance's gate), mean_free (eps_hat carries
no gradient here). Summing over images gives each image the gradient of its own loss, whatever the batch size.
strength = 0 or a step outside the last K calls the scheduler with its own arguments: the plain sampler, bit
for bit. The sampler must be variance preserving (init_noise_sigma 1: DDIM, DDPM, PNDM, DPM-Solver, UniPC),
whose `sample` is z_t itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from spurgen.errors import ConfigError, SpurgenError
from spurgen.losses.sfsl import SpuriousFeatureSimilarityLoss, predict_z0

SCHEDULES = ("constant", "linear")


class SFSLGuidance:
    """The guidance's settings (the `method.guidance` node): strength s, the last K steps, the schedule."""

    def __init__(self, strength: float, last_k: int, schedule: str = "constant"):
        if not strength >= 0:
            raise ConfigError("method.guidance.strength", f"must be >= 0, got {strength!r}")
        if int(last_k) < 1:
            raise ConfigError("method.guidance.last_k", f"must be >= 1, got {last_k!r}")
        if schedule not in SCHEDULES:
            raise ConfigError(
                "method.guidance.schedule", f"must be one of {', '.join(SCHEDULES)}, got {schedule!r}"
            )
        self.strength, self.last_k, self.schedule = float(strength), int(last_k), str(schedule)

    def weight(self, index: int, total: int) -> float:
        """w_i of step `index` (0-based) of `total` sampler steps."""
        k = min(self.last_k, total)
        j = index - (total - k)
        if j < 0:
            return 0.0
        return 1.0 if self.schedule == "constant" else (j + 1) / k

    def describe(self) -> dict:
        """The settings as recorded with every guided image (manifest.jsonl) and in generate.json."""
        return {"strength": self.strength, "last_k": self.last_k, "schedule": self.schedule}


class GuidedSampling:
    """An SFSLGuidance bound to an SFSL (its extractor and references set) and a pipeline's VAE and sampler.
    `attached(scheduler)` wraps the scheduler's `step` while a pipeline samples."""

    def __init__(self, guidance: SFSLGuidance, sfsl: SpuriousFeatureSimilarityLoss):
        self.guidance, self.sfsl = guidance, sfsl
        self.guided_steps = 0  # sampler steps that took a gradient (all images of a batch together)

    def bind(self, pipe: Any) -> GuidedSampling:
        """The pipeline's VAE and sampler (which must be variance preserving) decode and schedule; f and the
        references move to the pipeline's device, and m is computed there."""
        scheduler = pipe.scheduler
        if float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0:
            raise SpurgenError(
                f"SFSL guidance needs a variance-preserving sampler (DDIM, DDPM, PNDM, DPM-Solver); "
                f"{type(scheduler).__name__} scales its latents (set generate.sampler=DDIMScheduler)"
            )
        if next(pipe.vae.parameters()).dtype == torch.float16:
            raise SpurgenError(
                "SFSL guidance decodes with gradients: generate.dtype must be float32 or bfloat16"
            )
        self.sfsl.to(pipe.device).bind(pipe.vae, scheduler)
        self.sfsl.prepare_target()
        return self

    def gradient(self, z_t: torch.Tensor, eps_hat: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """grad_{z_t} of sum_images L_SFSL(x0_hat(z_t)), eps_hat held fixed.  z_t, eps_hat (N, C, h, w)."""
        with torch.enable_grad():
            z = z_t.detach().float().requires_grad_(True)
            ab = self.sfsl.alphas_cumprod[int(t)].expand(z.shape[0])  # (N,)
            z0_hat = predict_z0(z, eps_hat.detach(), ab, self.sfsl.prediction_type)
            loss = self.sfsl.value_at(z0_hat) * z.shape[0]  # the sum: each image's own gradient
            (grad,) = torch.autograd.grad(loss, z)
        return grad

    @contextmanager
    def attached(self, scheduler: Any) -> Iterator[None]:
        """While active, scheduler.step guides the last K steps of each sampling run (a run starts at
        set_timesteps); both methods are restored afterwards."""
        step, set_timesteps = scheduler.step, scheduler.set_timesteps
        own = {k: scheduler.__dict__[k] for k in ("step", "set_timesteps") if k in scheduler.__dict__}
        calls = {"index": 0}

        def reset(*args, **kwargs):
            calls["index"] = 0
            return set_timesteps(*args, **kwargs)

        def guided(model_output, timestep, sample, *args, **kwargs):
            w = self.guidance.weight(calls["index"], len(scheduler.timesteps))
            calls["index"] += 1
            if w > 0 and self.guidance.strength > 0:
                grad = self.gradient(sample, model_output, timestep)
                sample = (sample.float() - self.guidance.strength * w * grad).to(sample.dtype)
                self.guided_steps += 1
            return step(model_output, timestep, sample, *args, **kwargs)

        scheduler.step, scheduler.set_timesteps = guided, reset
        try:
            yield
        finally:
            for key in ("step", "set_timesteps"):  # as they were: the class's methods, or what was set before
                if key in own:
                    setattr(scheduler, key, own[key])
                else:
                    delattr(scheduler, key)
