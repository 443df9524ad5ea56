"""Building, sampling from and saving a standard diffusers StableDiffusionPipeline."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

SPURGEN_JSON = "spurgen.json"


def make_pipeline(unet, text_encoder, tokenizer, vae, scheduler) -> StableDiffusionPipeline:
    """A pipeline from parts, safety checker off (spurious-feature images are benign; it would black them)."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass(frozen=True)
class SampleSettings:
    """How images are drawn (everything but the prompts and seeds)."""

    steps: int
    guidance: float
    resolution: int  # pixels, square
    negative_prompt: str | None = None
    batch_size: int = 4  # prompts per pipeline call


@torch.no_grad()
def sample(
    pipe: StableDiffusionPipeline, prompts: Sequence[str], seeds: Sequence[int], settings: SampleSettings
) -> list[Image.Image]:
    """One image per (prompt, seed); each has its own CPU generator so it can be regenerated alone."""
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    images: list[Image.Image] = []
    negative, bs = settings.negative_prompt, settings.batch_size
    for i in range(0, len(prompts), bs):
        p, s = list(prompts[i : i + bs]), list(seeds[i : i + bs])
        out = pipe(
            prompt=p,
            negative_prompt=[negative] * len(p) if negative else None,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            height=settings.resolution,
            width=settings.resolution,
            generator=[torch.Generator("cpu").manual_seed(int(x)) for x in s],
            output_type="pil",
        )
        images.extend(out.images)
    return images


def image_grid(images: Sequence[Image.Image], cols: int | None = None) -> Image.Image:
    cols = cols or min(len(images), 4)
    rows = (len(images) + cols - 1) // cols
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def save_pipeline(pipe: StableDiffusionPipeline, folder: Path, meta: dict) -> Path:
    """save_pretrained into folder.tmp, add spurgen.json, then swap it in (never a half-written folder)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / SPURGEN_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def read_spurgen_json(folder: Path) -> dict | None:
    path = Path(folder) / SPURGEN_JSON
    return json.loads(path.read_text()) if path.exists() else None
