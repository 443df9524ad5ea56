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
from spurgen.models.tiny import build_tiny_tokenizer, random_text_encoder, sd_schedulers

SD15_UNET = (320, 640, 1280, 1280)
SD15_VAE = (128, 256, 512, 512)
SD15_TEXT = 768  # CLIP ViT-L/14 hidden size, 12 layers, 12 heads
RESNET50 = (64, 128, 256, 512)  # bottleneck widths per stage; outputs are 4x (2048-d pool at full width)


def _scale(widths: tuple[int, ...], s: float, multiple: int) -> tuple[int, ...]:
    return tuple(max(multiple, int(round(w * s / multiple)) * multiple) for w in widths)


def build_proportional_sd(
    width_scale: float = 0.25,
    vae_width_scale: float | None = 0.5,
    resolution: int = 128,
    norm_num_groups: int = 8,
    text_layers: int = 12,
    max_length: int = 32,
    prediction_type: str = "epsilon",
    init_seed: int = 0,
    words: tuple[str, ...] = ("a", "photo", "of", "sks", "flower", "the", "on", "in"),
) -> SDParts:
    """SD 1.5-shaped random parts: UNet (4 levels, 2 layers, cross-attention in 3) and a 4-block VAE.

    vae_width_scale (default: width_scale) lets the decoder keep its real cost relative to the UNet: at small
    widths the UNet's many small ops cost more than their FLOPs, so on a CPU x0.25 UNet : x0.5 VAE is
    about SD 1.5's 1 : 3 (UNet forward : decode, ../shared/ENVIRONMENT.md).
    """
    unet_ch = _scale(SD15_UNET, width_scale, norm_num_groups)
    vae_ch = _scale(SD15_VAE, width_scale if vae_width_scale is None else vae_width_scale, norm_num_groups)
    text_hidden = _scale((SD15_TEXT,), width_scale, 12)[0]
    torch.manual_seed(init_seed)
    tokenizer = build_tiny_tokenizer(max_length, tuple(words))
    text_encoder = random_text_encoder(tokenizer, text_hidden, text_layers, 12, 4 * text_hidden, max_length)
    factor = 2 ** (len(vae_ch) - 1)
    unet = UNet2DConditionModel(
        sample_size=resolution // factor,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=unet_ch,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=text_hidden,
        attention_head_dim=8,  # SD 1.5's value (diffusers' name for the number of heads)
        norm_num_groups=norm_num_groups,
    )
    vae = AutoencoderKL(
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
            list(words),
        ]
    )
    model_id = "proportional-random:" + hashlib.sha256(ident.encode()).hexdigest()[:12]
    return SDParts(
        unet,
        text_encoder,
        tokenizer,
        vae,
        *sd_schedulers(prediction_type),
        model_id,
        True,
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
    return FrozenImageModel(
        model, "fc", input_size, normalizes_inside=False, name=f"resnet50_w{width_scale:g}", layer=layer
    )
