"""The one training resize/crop, applied to instance, prior and (for m) reference images alike."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def train_transform(im: Image.Image, resolution: int, center_crop: bool = True) -> torch.Tensor:
    """PIL RGB -> (3, R, R) float in [0, 1]: shorter side resized (bicubic) to R, then centre crop."""
    w, h = im.size
    if center_crop:
        scale = resolution / min(w, h)
        nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
    else:
        im = im.resize((resolution, resolution), Image.BICUBIC)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
