"""The mini text-to-image model's parts before training: a UNet2DConditionModel on the mini autoencoder's
16x16 latents and a CLIPTextModel over the mini tokenizer. They keep Stable Diffusion's classes and block
layout, so a trained pair loads with diffusers and transformers alone."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from spurgen.models.tiny import build_tiny_unet, random_text_encoder

UNET_CHANNELS = (32, 64, 128)
TEXT_HIDDEN = 128  # = the UNet's cross_attention_dim
TEXT_LAYERS = 4
LATENT_SIZE = 16  # 64-px crops through a factor-4 autoencoder
LATENT_CHANNELS = 4  # SD's; pretrain_generator passes the autoencoder's own (12 for the shipped PCA)


def build_mini_unet(
    sample_size: int = LATENT_SIZE,
    block_out_channels: tuple[int, ...] = UNET_CHANNELS,
    cross_attention_dim: int = TEXT_HIDDEN,
    init_seed: int = 0,
    latent_channels: int = LATENT_CHANNELS,
) -> UNet2DConditionModel:
    """SD's layout at a small width: cross-attention in every block but the lowest, one layer per block,
    8 heads, GroupNorm of 8 groups; random initial weights from `init_seed`."""
    return build_tiny_unet(
        sample_size,
        tuple(block_out_channels),
        cross_attention_dim,
        latent_channels,
        init_seed,
        attention_head_dim=8,
    )


def build_mini_text_encoder(
    tokenizer: CLIPTokenizer, hidden: int = TEXT_HIDDEN, layers: int = TEXT_LAYERS, init_seed: int = 0
) -> CLIPTextModel:
    """A CLIP text transformer sized for `tokenizer` (vocabulary and length): 4 heads, MLP 4x wide."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return random_text_encoder(tokenizer, hidden, layers, 4, 4 * hidden, tokenizer.model_max_length)
