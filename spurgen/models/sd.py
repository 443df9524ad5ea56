"""Real Stable Diffusion parts, loaded with diffusers/transformers from_pretrained (hub id or local folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from spurgen.errors import MissingWeightsError, SpurgenError
from spurgen.models.parts import SDParts

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).expanduser().exists()


def check_pipeline_folder(folder: Path) -> None:
    """A diffusers StableDiffusionPipeline folder must have model_index.json and every component."""
    if not folder.is_dir():
        raise SpurgenError(f"model folder {folder} does not exist")
    missing = [c for c in ("model_index.json", *COMPONENTS) if not (folder / c).exists()]
    if missing:
        raise SpurgenError(
            f"{folder} is not a complete diffusers Stable Diffusion folder: missing {', '.join(missing)} "
            "(expected model_index.json and the unet/, vae/, text_encoder/, tokenizer/, scheduler/ subfolders)"
        )


def load_sd(
    path: str,
    revision: str | None = None,
    variant: str | None = None,
    torch_dtype: str | None = None,
    sample_scheduler: str | None = None,
) -> SDParts:
    """Load SD 1.x/2.x parts from a hub id or a local diffusers folder.

    Weights stay float32 for training (mixed precision is the Trainer's `precision`); `torch_dtype` is
    only for inference-only uses. Offline without the files: one message saying what is missing and where.
    """
    import diffusers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local = _looks_local(path)
    source = str(Path(path).expanduser()) if local else path
    if local:
        check_pipeline_folder(Path(source))
    dtype = getattr(torch, torch_dtype) if torch_dtype else None
    kw = dict(revision=revision) if not local else {}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
        text_encoder = CLIPTextModel.from_pretrained(
            source, subfolder="text_encoder", torch_dtype=dtype, **kw
        )
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", variant=variant, torch_dtype=dtype, **kw)
        unet = UNet2DConditionModel.from_pretrained(
            source, subfolder="unet", variant=variant, torch_dtype=dtype, **kw
        )
        noise_scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw)
        sampler_name = (
            sample_scheduler
            or json.loads(Path(_scheduler_config_file(source, kw)).read_text())["_class_name"]
        )
        sampler = getattr(diffusers, sampler_name).from_config(noise_scheduler.config)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        where = (
            f"the local folder {source}"
            if local
            else f"the Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')})"
        )
        raise MissingWeightsError(
            f"could not load Stable Diffusion weights '{path}' from {where}"
            + (" with HF_HUB_OFFLINE=1" if offline else "")
            + f": {str(exc).splitlines()[0]}\n"
            "Put a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) "
            "on disk and pass model.path=/path/to/folder, or run once with network access to fill the cache."
        ) from None
    model_id = path + (f"@{revision}" if revision else "")
    return SDParts(unet, text_encoder, tokenizer, vae, noise_scheduler, sampler, model_id=model_id)


def _scheduler_config_file(source: str, kw: dict) -> str:
    local = Path(source) / "scheduler" / "scheduler_config.json"
    if local.exists():
        return str(local)
    from huggingface_hub import hf_hub_download

    return hf_hub_download(source, "scheduler_config.json", subfolder="scheduler", **kw)
