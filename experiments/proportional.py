"""SD 1.5's architecture with channel widths scaled down (random init), for benchmarks on a CPU.

Block types, layers per block, attention layout, VAE depth and a ResNet-50's stage depths are SD 1.5's and
torchvision's; only the widths shrink (and the image side, 128 px by default, with f's input 224 * 128/512),
chosen so that UNet : VAE decoder : ResNet-50 keep roughly their real cost ratios on a CPU
(experiments/bench.py measures them beside ../shared/ENVIRONMENT.md). Numbers mean nothing.
"""

from __future__ import annotations

import hashlib
import json

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from timm.models.resnet import Bottleneck, ResNet

from spurgen.models.extractors import FrozenImageModel
from spurgen.models.parts import SDParts
from spurgen.models.schedulers import ddim_sampler, sd_noise_scheduler
from spurgen.models.tiny import DEFAULT_WORDS, build_tiny_tokenizer, random_text_encoder

SD15_UNET = (320, 640, 1280, 1280)
SD15_VAE = (128, 256, 512, 512)
SD15_TEXT = 768  # CLIP ViT-L/14 hidden size, 12 layers, 12 heads
RESNET50 = (64, 128, 256, 512)  # bottleneck widths per stage; outputs are 4x (2048-d pool at full width)


def _scale(widths: tuple[int, ...], s: float, multiple: int) -> tuple[int, ...]:
    return tuple(max(multiple, int(round(w * s / multiple)) * multiple) for w in widths)


def build_proportional_unet(
    width_scale: float = 0.25,
    resolution: int = 128,
    vae_levels: int = 4,
    norm_num_groups: int = 8,
    init_seed: int = 0,
) -> UNet2DConditionModel:
    """SD 1.5's UNet layout (4 levels, 2 layers, cross-attention in 3) with widths x width_scale, random."""
    unet_ch = _scale(SD15_UNET, width_scale, norm_num_groups)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return UNet2DConditionModel(
            sample_size=resolution // 2 ** (vae_levels - 1),
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=unet_ch,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=proportional_text_hidden(width_scale),
            attention_head_dim=8,  # SD 1.5's value (diffusers' name for the number of heads)
            norm_num_groups=norm_num_groups,
        )


def build_proportional_vae(
    width_scale: float = 0.5, resolution: int = 128, norm_num_groups: int = 8, init_seed: int = 0
) -> AutoencoderKL:
    """SD 1.5's 4-block VAE with widths x width_scale, random."""
    vae_ch = _scale(SD15_VAE, width_scale, norm_num_groups)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=vae_ch,
            latent_channels=4,
            layers_per_block=2,
            norm_num_groups=norm_num_groups,
            sample_size=resolution,
            scaling_factor=0.18215,
        )


def proportional_text_hidden(width_scale: float) -> int:
    return _scale((SD15_TEXT,), width_scale, 12)[0]


def build_proportional_text_encoder(
    width_scale: float = 0.25,
    layers: int = 12,
    max_length: int = 32,
    words: tuple[str, ...] = DEFAULT_WORDS,
    init_seed: int = 0,
):
    """CLIP ViT-L/14's text model (12 layers, 12 heads) with width x width_scale, random."""
    hidden = proportional_text_hidden(width_scale)
    tokenizer = build_tiny_tokenizer(max_length, tuple(words))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return random_text_encoder(tokenizer, hidden, layers, 12, 4 * hidden, max_length)


def build_proportional_sd(  # noqa: PLR0913 - one keyword per size setting of the benchmark model
    width_scale: float = 0.25,
    vae_width_scale: float | None = 0.5,
    resolution: int = 128,
    norm_num_groups: int = 8,
    text_layers: int = 12,
    max_length: int = 32,
    prediction_type: str = "epsilon",
    init_seed: int = 0,
) -> SDParts:
    """SD 1.5-shaped random parts in one call (benchmarks; a run composes them from experiments/conf,
    model=proportional).

    vae_width_scale (default: width_scale) lets the decoder keep its real cost relative to the UNet: at small
    widths the UNet's many small ops cost more than their FLOPs, so on a CPU x0.25 UNet : x0.5 VAE is
    about SD 1.5's 1 : 3 (UNet forward : decode, ../shared/ENVIRONMENT.md).
    """
    vae_scale = width_scale if vae_width_scale is None else vae_width_scale
    ident = json.dumps(
        [
            width_scale,
            vae_width_scale,
            resolution,
            norm_num_groups,
            text_layers,
            max_length,
            prediction_type,
            init_seed,
        ]
    )
    return SDParts(
        unet=build_proportional_unet(width_scale, resolution, 4, norm_num_groups, init_seed),
        text_encoder=build_proportional_text_encoder(
            width_scale, text_layers, max_length, DEFAULT_WORDS, init_seed
        ),
        tokenizer=build_tiny_tokenizer(max_length, DEFAULT_WORDS),
        vae=build_proportional_vae(vae_scale, resolution, norm_num_groups, init_seed),
        noise_scheduler=sd_noise_scheduler(prediction_type),
        sample_scheduler=ddim_sampler(prediction_type),
        model_id="proportional-random:" + hashlib.sha256(ident.encode()).hexdigest()[:12],
        is_tiny_random=True,
    )


def build_proportional_extractor(
    width_scale: float = 0.25,
    input_size: int = 56,
    init_seed: int = 0,
    layer: str = "pool",
) -> FrozenImageModel:
    """A ResNet-50 (Bottleneck, 3-4-6-3 blocks) with widths scaled by width_scale; random, frozen."""
    state = torch.random.get_rng_state()
    torch.manual_seed(init_seed)
    channels = _scale(RESNET50, width_scale, 4)
    model = ResNet(Bottleneck, [3, 4, 6, 3], channels=channels, stem_width=channels[0])
    torch.random.set_rng_state(state)
    wrapped = FrozenImageModel(
        model, "fc", input_size, normalizes_inside=False, name=f"resnet50_w{width_scale:g}", layer=layer
    )
    wrapped.is_random = True
    return wrapped
