"""Real Stable Diffusion parts, loaded with diffusers/transformers from_pretrained (hub id or local folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


_CLASSES = {
    "unet": ("diffusers", "UNet2DConditionModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "scheduler": ("diffusers", "DDPMScheduler"),
}


def _source(path: str) -> tuple[str, bool]:
    local = _looks_local(path)
    source = str(Path(path).expanduser()) if local else path
    if local:
        check_pipeline_folder(Path(source))
    return source, local


def _missing(path: str, source: str, local: bool, exc: Exception) -> MissingWeightsError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    where = (
        f"the local folder {source}"
        if local
        else f"the Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')})"
    )
    return MissingWeightsError(
        f"could not load Stable Diffusion weights '{path}' from {where}"
        + (" with HF_HUB_OFFLINE=1" if offline else "")
        + f": {str(exc).splitlines()[0]}\n"
        "Put a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) "
        "on disk and pass model.path=/path/to/folder, or run once with network access to fill the cache."
    )


def check_source(path: str | None) -> None:
    """Cheap, before anything loads: a local model folder must exist and be complete (a hub id is checked
    when it loads)."""
    if path and _looks_local(path):
        check_pipeline_folder(Path(path).expanduser())


def load_component(path: str, component: str, revision: str | None = None, variant: str | None = None):
    """One part of a diffusers SD folder or hub id (model/unet=pretrained, model/vae=pretrained, ...).

    component: unet | vae | text_encoder | tokenizer | scheduler (the DDPM training schedule). Weights stay
    float32 for training (mixed precision is the Trainer's `precision`). Offline without the files: one
    message saying what is missing and where.
    """
    import importlib

    if component not in _CLASSES:
        raise SpurgenError(f"unknown Stable Diffusion component {component!r}; known: {', '.join(_CLASSES)}")
    module, cls_name = _CLASSES[component]
    cls = getattr(importlib.import_module(module), cls_name)
    source, local = _source(path)
    kw: dict = {} if local else {"revision": revision}
    if variant and component in ("unet", "vae", "text_encoder"):
        kw["variant"] = variant
    try:
        return cls.from_pretrained(source, subfolder=component, **kw)
    except (OSError, ValueError) as exc:
        raise _missing(path, source, local, exc) from None


def load_sampler(path: str, name: str | None = None, revision: str | None = None):
    """The sampling scheduler saved with the pipeline: `name` (a diffusers scheduler class), or the one the
    model ships (PNDM for SD 1.5, DDIM for SD 2.1), on the model's training schedule."""
    import diffusers

    noise = load_component(path, "scheduler", revision)
    source, local = _source(path)
    try:
        sampler_name = (
            name
            or json.loads(
                Path(_scheduler_config_file(source, {} if local else {"revision": revision})).read_text()
            )["_class_name"]
        )
    except (OSError, ValueError) as exc:
        raise _missing(path, source, local, exc) from None
    if not hasattr(diffusers, sampler_name):
        raise SpurgenError(f"model.sample_scheduler.name: diffusers has no scheduler {sampler_name!r}")
    return getattr(diffusers, sampler_name).from_config(noise.config)


def load_sd(
    path: str,
    revision: str | None = None,
    variant: str | None = None,
    sample_scheduler: str | None = None,
) -> SDParts:
    """All SD 1.x/2.x parts from a hub id or a local diffusers folder, in one call (runs compose the same
    parts from the model/* config groups: model=sd15 and friends)."""
    return SDParts(
        unet=load_component(path, "unet", revision, variant),
        text_encoder=load_component(path, "text_encoder", revision, variant),
        tokenizer=load_component(path, "tokenizer", revision),
        vae=load_component(path, "vae", revision, variant),
        noise_scheduler=load_component(path, "scheduler", revision),
        sample_scheduler=load_sampler(path, sample_scheduler, revision),
        path=path,
        revision=revision,
        variant=variant,
    )


def _scheduler_config_file(source: str, kw: dict) -> str:
    local = Path(source) / "scheduler" / "scheduler_config.json"
    if local.exists():
        return str(local)
    from huggingface_hub import hf_hub_download

    return hf_hub_download(source, "scheduler_config.json", subfolder="scheduler", **kw)
