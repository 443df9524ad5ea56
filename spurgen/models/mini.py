"""The mini world's shipped autoencoder (spurgen/assets/mini/vae; docs/mini_world.md), loaded for
model/vae=mini. The folder is a plain diffusers AutoencoderKL: loading it needs no mini-world code."""

from __future__ import annotations

from pathlib import Path

import torch

from spurgen.errors import SpurgenError


def load_mini_vae(folder: str):
    """The trained mini AutoencoderKL, loaded as float32 (its PCA encoder's large constants need float32)."""
    from diffusers import AutoencoderKL

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise SpurgenError(
            f"no mini autoencoder in {path}; recreate it from a spurgen checkout with: "
            "python -m experiments.mini_world.pretrain --part vae"
        )
    return AutoencoderKL.from_pretrained(path, torch_dtype=torch.float32)
