"""Frozen image models wrapped for spurgen: phi(x) for the SFSL and logits for evaluation.

Every wrapper takes images in [0, 1] (METHOD.md). A model that normalises inside (RobustBench's
Sequential(normalize, model)) declares `normalizes_inside=True`; otherwise the wrapper applies the
ImageNet mean/std once. Nothing is normalised twice.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spurgen.files import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FrozenImageModel(nn.Module):
    """A frozen classifier exposing `features(x)` (phi) and `logits(x)`, inputs in [0, 1] at any size.

    phi = the input of the final fc layer (`layer="pool"`: the 2048-d global pool of a ResNet-50), or the
    output of a named module, average-pooled over space. Always in eval mode: `.train()` cannot change it,
    so BatchNorm statistics never move.
    """

    def __init__(
        self,
        model: nn.Module,
        head: str,
        input_size: int,
        normalizes_inside: bool,
        name: str = "model",
        layer: str = "pool",
    ):
        super().__init__()
        self.model = model
        self.name = name
        self.input_size = int(input_size)
        self.normalizes_inside = normalizes_inside
        # Settings a loader changes after construction where its model differs from these defaults:
        self.temperature = 1.0  # logits / T before the softmax (Spurious ImageNet's robust ResNet: 0.7156)
        self.interpolation = "bicubic"  # the resize to input_size
        self.crop_pct = 0.875  # centre-crop ratio of the model's own evaluation transform (crop: model)
        self.is_random = False  # random weights (tiny tests): numbers computed with it mean nothing
        self.arch = type(model).__name__  # the architecture's name (a loader sets timm/torchvision's)
        self.weights: str | None = None  # the weights file it was loaded from, if any
        self._weights_sha256: str | None = None
        # how the weights were made robust (norm, eps, ...; a loader sets it): part of the identity when set
        self.robustness: dict | None = None
        self.channels_last = False  # set by spurgen.eval.predict.place; predict_set then feeds NHWC
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        modules = dict(model.named_modules())
        if head not in modules:
            raise ValueError(f"{name}: no module named {head!r} (the final classifier layer)")
        self.layer = layer
        self._captured: torch.Tensor | None = None
        if layer == "pool":
            modules[head].register_forward_pre_hook(self._capture_input)
        else:
            if layer not in modules:
                raise ValueError(f"{name}: feature_extractor.layer={layer!r} is not a module of the model")
            modules[layer].register_forward_hook(self._capture_output)
        self.requires_grad_(False)
        super().train(False)

    def normalize_with(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """The per-channel mean and std the model was trained with (default: ImageNet's)."""
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.mean.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.std.device).view(1, 3, 1, 1)

    def _capture_input(self, _module, inputs):
        self._captured = inputs[0]

    def _capture_output(self, _module, _inputs, output):
        self._captured = output.mean(dim=(2, 3)) if output.ndim == 4 else output

    def train(self, mode: bool = True) -> FrozenImageModel:  # noqa: ARG002 - frozen means frozen
        return super().train(False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 3, H, W) -> the model's input: resized (no crop), normalised unless inside."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode=self.interpolation,
                align_corners=False,
                antialias=True,
            )
        if not self.normalizes_inside:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x

    def forward_prepared(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Already-prepared input -> (features (B, D), logits (B, 1000))."""
        self._captured = None
        logits = self.model(x)
        feats, self._captured = self._captured, None
        if feats.ndim > 2:
            feats = feats.flatten(1)
        return feats, logits / self.temperature

    def identity(self) -> dict:
        """What this model is, for run.json, spurgen.json, metrics.json, the W&B config and the report:
        name, architecture, phi's layer, the weights file and its sha256, whether it is random, and (for an
        adversarially trained model whose loader knows it) its robustness: norm, eps and how it was trained."""
        if self.weights and self._weights_sha256 is None and Path(self.weights).is_file():
            self._weights_sha256 = sha256_file(Path(self.weights))
        identity = {
            "name": self.name,
            "arch": self.arch,
            "layer": self.layer,
            "weights": self.weights,
            "weights_sha256": self._weights_sha256,
            "is_random": bool(self.is_random),
        }
        if self.robustness:
            identity["robustness"] = dict(self.robustness)
        return identity

    def features(self, x: torch.Tensor) -> torch.Tensor:  # phi(x), (B, D)
        return self.forward_prepared(self.prepare(x))[0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1000), temperature applied
        return self.forward_prepared(self.prepare(x))[1]

    forward = features


class TinyCNN(nn.Module):
    """A tiny ResNet-shaped classifier (conv-BN-ReLU, global pool, fc) with BatchNorm buffers to prove
    they never change."""

    def __init__(self, width: int = 16, num_classes: int = 1000):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.body(x)).flatten(1))


def build_tiny_extractor(
    width: int = 16, input_size: int = 32, init_seed: int = 0, layer: str = "pool", name: str = "tiny_cnn"
) -> FrozenImageModel:
    """Tiny random frozen extractor (stands in for the robust ResNet-50 in tests and the demo)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(init_seed)
    model = TinyCNN(width)
    # Non-trivial BatchNorm statistics, so a test can tell if they ever move.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.9, 1.1)
    torch.random.set_rng_state(gen_state)
    wrapped = FrozenImageModel(model, "fc", input_size, normalizes_inside=False, name=name, layer=layer)
    wrapped.is_random = True
    return wrapped
