"""The bundle of Stable Diffusion parts a run receives, whatever built it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class SDParts:
    unet: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    vae: nn.Module
    noise_scheduler: Any  # DDPM-style training scheduler (add_noise, get_velocity, alphas_cumprod)
    sample_scheduler: Any  # the scheduler saved with the pipeline and used to sample
    model_id: str  # hub id, folder or "tiny-random:<hash>"; part of the prior-image cache key
    is_tiny_random: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """Native image size: UNet sample size times the VAE's downsampling (512 for SD 1.5)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type
