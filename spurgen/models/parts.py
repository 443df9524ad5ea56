"""The bundle of Stable Diffusion parts a run receives, whatever built each of them.

The `model` config node builds this dataclass with `_target_`; each part comes from its own config group
(model/unet, model/vae, model/text_encoder, model/tokenizer, model/noise_scheduler, model/sample_scheduler), so
one part can be swapped alone (`model/vae=tiny`). Parts that do not fit together fail here, at start-up, with
a message naming both config keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from spurgen.errors import ConfigError

if TYPE_CHECKING:  # torch is imported by the parts themselves: importing this module stays cheap
    from torch import nn


@dataclass
class SDParts:
    unet: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    vae: nn.Module
    noise_scheduler: Any  # DDPM-style training scheduler (add_noise, get_velocity, alphas_cumprod)
    sample_scheduler: Any  # the scheduler saved with the pipeline and used to sample
    model_id: str | None = None  # hub id, folder or "tiny-random:<hash>"; part of the prior-image cache key
    is_tiny_random: bool = False  # random weights: every output is marked, its numbers mean nothing
    path: str | None = None  # where the weights came from (a hub id or folder), for the record
    revision: str | None = None
    variant: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # What a preset declares about its model family, copied into every metadata file (run.json, spurgen.json,
    # generate.json, metrics.json, the W&B config), e.g. the mini world's {model_is_mini: true, corpus size}
    marks: dict[str, Any] = field(default_factory=dict)
    banner: str | None = None  # printed at the start and end of training (the mini world's caveat)

    def __post_init__(self) -> None:
        check_compatible(self)
        marks = self.marks or {}  # plain containers even when the config passes a DictConfig
        self.marks = (
            OmegaConf.to_container(marks, resolve=True) if OmegaConf.is_config(marks) else dict(marks)
        )
        if self.model_id is None:
            self.model_id = (self.path or "unknown") + (f"@{self.revision}" if self.revision else "")

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """Native image size: UNet sample size times the VAE's downsampling (512 for SD 1.5)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def resolution_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's factor times the UNet's downsampling, and of 8
        (diffusers' pipelines refuse other sizes); 64 for SD 1.5, 16 for the mini model."""
        return resolution_multiple(self.vae, self.unet)

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type


def resolution_multiple(vae: nn.Module, unet: nn.Module) -> int:
    """lcm(8, VAE factor x 2^(UNet blocks - 1)): the image sides a VAE and UNet pair can make."""
    import math

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return math.lcm(8, factor * 2 ** (len(unet.config.block_out_channels) - 1))


def _mismatch(key_a: str, what_a: str, a: Any, key_b: str, what_b: str, b: Any) -> ConfigError:
    return ConfigError(
        key_a,
        f"{what_a}={a} does not fit model.{key_b} ({what_b}={b}); choose parts that belong together "
        f"(model/{key_a.split('.', 1)[1]}=... or model/{key_b}=...)",
    )


def check_compatible(parts: SDParts) -> None:
    """The parts must fit: VAE latents = UNet channels, text width = cross-attention width, tokenizer ids
    inside the text encoder's vocabulary and positions, and one prediction type for training and sampling."""
    unet, vae, text = parts.unet.config, parts.vae.config, parts.text_encoder.config
    if vae.latent_channels != unet.in_channels:
        raise _mismatch(
            "model.vae", "latent_channels", vae.latent_channels, "unet", "in_channels", unet.in_channels
        )
    if unet.out_channels != unet.in_channels:
        raise ConfigError(
            "model.unet", f"out_channels={unet.out_channels} differs from in_channels={unet.in_channels}"
        )
    if text.hidden_size != unet.cross_attention_dim:
        raise _mismatch(
            "model.text_encoder",
            "hidden_size",
            text.hidden_size,
            "unet",
            "cross_attention_dim",
            unet.cross_attention_dim,
        )
    if len(parts.tokenizer) > text.vocab_size:
        raise _mismatch(
            "model.tokenizer",
            "vocabulary size",
            len(parts.tokenizer),
            "text_encoder",
            "vocab_size",
            text.vocab_size,
        )
    if parts.tokenizer.model_max_length > text.max_position_embeddings:
        raise _mismatch(
            "model.tokenizer",
            "model_max_length",
            parts.tokenizer.model_max_length,
            "text_encoder",
            "max_position_embeddings",
            text.max_position_embeddings,
        )
    train_kind = parts.noise_scheduler.config.prediction_type
    sample_kind = parts.sample_scheduler.config.prediction_type
    if train_kind != sample_kind:
        raise _mismatch(
            "model.sample_scheduler",
            "prediction_type",
            sample_kind,
            "noise_scheduler",
            "prediction_type",
            train_kind,
        )
