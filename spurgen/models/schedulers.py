"""Stable Diffusion 1.x's noise schedule, for parts built in code (model/noise_scheduler=sd,
model/sample_scheduler=ddim). Pretrained models bring their own (spurgen/models/sd.py)."""

from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler


def _sd_schedule(prediction_type: str) -> dict:
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
    )


def sd_noise_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """SD 1.x's training schedule: scaled-linear betas, 1000 steps (model/noise_scheduler=sd)."""
    return DDPMScheduler(**_sd_schedule(prediction_type))


def ddim_sampler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """A DDIM sampler on SD 1.x's schedule (model/sample_scheduler=ddim)."""
    return DDIMScheduler(**_sd_schedule(prediction_type), set_alpha_to_one=False, steps_offset=1)
