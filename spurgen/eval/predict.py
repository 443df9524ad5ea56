"""Batched inference of several classifiers over an image set.

Each image file is decoded once per chunk; classifiers that share a preprocessing (input size,
interpolation, crop) share the resized batch, and each then only normalises (FrozenImageModel.prepare
skips the resize when the size already matches). METHOD.md's single preprocessing rule: generated and
reference images are resized (bicubic) to the input size with no crop; ImageNet validation images get
the model's own resize + centre crop (`crop=True`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from spurgen.data.images import load_rgb
from spurgen.models.extractors import FrozenImageModel

log = logging.getLogger("spurgen")
THUMBNAIL_SIZE = 128  # pixels, the longer side (contact sheet, W&B grid)


@dataclass
class Predictions:
    """One classifier on one image set."""

    top5: np.ndarray  # (N, 5) class indices, best first
    top5_p: np.ndarray  # (N, 5) their probabilities
    p_target: np.ndarray  # (N,) p_c(k | x)
    features: np.ndarray  # (N, D) phi(x)
    seconds: float = 0.0

    @property
    def argmax(self) -> np.ndarray:
        return self.top5[:, 0]

    @property
    def images_per_s(self) -> float:
        return len(self.top5) / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class SetPredictions:
    per_classifier: dict[str, Predictions]
    thumbnails: list[Image.Image] = field(default_factory=list)


def to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float32 in [0, 1]."""
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def resize_image(x: torch.Tensor, size: int, interpolation: str, crop_pct: float | None) -> torch.Tensor:
    """(3, H, W) -> (3, size, size). crop_pct None: resize without crop; else the shorter side to
    floor(size / crop_pct), then a centre crop of size (timm / torchvision evaluation transform)."""
    x = x.unsqueeze(0)
    mode_kw = (
        dict(mode=interpolation, align_corners=False) if interpolation != "nearest" else dict(mode="nearest")
    )
    if crop_pct is None:
        out = F.interpolate(x, size=(size, size), antialias=interpolation != "nearest", **mode_kw)
    else:
        h, w = x.shape[-2:]
        short = int(math.floor(size / crop_pct))
        nh, nw = (
            (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
        )
        out = F.interpolate(x, size=(nh, nw), antialias=interpolation != "nearest", **mode_kw)
        top, left = (nh - size) // 2, (nw - size) // 2
        out = out[..., top : top + size, left : left + size]
    return out.clamp_(0, 1)[0]


def prep_key(model: FrozenImageModel, crop: bool) -> tuple:
    return (model.input_size, model.interpolation, float(model.crop_pct) if crop else None)


def predict_set(
    models: Sequence[FrozenImageModel],
    paths: Sequence[Path],
    target: int,
    crop: bool = False,
    batch_size: int = 32,
    num_thumbnails: int = 0,
) -> SetPredictions:
    """Run every model over the images at `paths` (on the device the models are on: spurgen.eval.predict.place);
    p(k|x) uses each model's temperature. The first num_thumbnails images are kept as thumbnails."""
    device = models[0].mean.device
    groups: dict[tuple, list[FrozenImageModel]] = {}
    for m in models:
        groups.setdefault(prep_key(m, crop), []).append(m)
    parts: dict[str, dict[str, list]] = {m.name: {"i": [], "p": [], "t": [], "f": []} for m in models}
    seconds = dict.fromkeys(parts, 0.0)
    thumbs: list[Image.Image] = []
    for start in range(0, len(paths), batch_size):
        chunk = []
        for p in paths[start : start + batch_size]:
            im = load_rgb(p)  # decoded once, shared by every classifier
            if len(thumbs) < num_thumbnails:
                t = im.copy()
                t.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
                thumbs.append(t)
            chunk.append(to_tensor(im))
        for (size, interp, crop_pct), members in groups.items():
            x = torch.stack([resize_image(c, size, interp, crop_pct) for c in chunk]).to(
                device
            )  # (B, 3, S, S)
            for m in members:
                t0 = time.perf_counter()
                with torch.inference_mode():
                    xm = m.prepare(x)
                    if m.channels_last:
                        xm = xm.contiguous(memory_format=torch.channels_last)
                    feats, logits = m.forward_prepared(xm)  # logits already divided by the temperature
                    probs = logits.float().softmax(dim=1)
                    top_p, top_i = probs.topk(5, dim=1)
                rec = parts[m.name]
                rec["i"].append(top_i.cpu().numpy())
                rec["p"].append(top_p.cpu().numpy())
                rec["t"].append(probs[:, target].cpu().numpy())
                rec["f"].append(feats.float().cpu().numpy())
                seconds[m.name] += time.perf_counter() - t0
    out = {
        name: Predictions(
            np.concatenate(r["i"]),
            np.concatenate(r["p"]),
            np.concatenate(r["t"]),
            np.concatenate(r["f"]),
            seconds[name],
        )
        for name, r in parts.items()
    }
    for name, pred in out.items():
        log.info("%s: %d images, %.1f images/s", name, len(pred.top5), pred.images_per_s)
    return SetPredictions(out, thumbs)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def place(models: Sequence[FrozenImageModel], device: torch.device, channels_last: bool) -> None:
    """Move to the device; channels_last=True stores convolution weights (and, in predict_set, inputs)
    channels-last, which oneDNN and cuDNN run faster (timed on 2 CPU cores: a full-width ResNet-50 at batch 8
    takes 98 ms per image channels-last against 121 ms in the default layout, the narrow proportional one 36
    against 52 ms per 16 images; BENCHMARKS.md has the end-to-end evaluation numbers). Values agree with the
    default layout to float rounding."""
    for m in models:
        m.to(device)
        if channels_last:
            m.to(memory_format=torch.channels_last)
        m.channels_last = bool(channels_last)
