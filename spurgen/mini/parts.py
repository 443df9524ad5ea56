"""Loading the mini world's shipped parts from spurgen/assets/mini (config group entries such as
model/vae=mini point here through the `spurgen_asset` resolver)."""

from __future__ import annotations

from pathlib import Path

import torch

from spurgen.errors import SpurgenError


def load_mini_vae(folder: str):
    """The trained mini AutoencoderKL (a diffusers folder; fp16 storage, loaded as float32 for training)."""
    from diffusers import AutoencoderKL

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise SpurgenError(
            f"no mini autoencoder in {path}; recreate it with: python -m spurgen.mini.pretrain --part vae"
        )
    return AutoencoderKL.from_pretrained(path, torch_dtype=torch.float32)
