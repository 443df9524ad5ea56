"""The evaluation classifiers: built from eval.classifiers (name -> `_target_` node) and placed on the device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from spurgen.build import build
from spurgen.errors import SpurgenError
from spurgen.eval.predict import place
from spurgen.models.extractors import FrozenImageModel


def build_classifiers(
    nodes: Mapping[str, Any], device: torch.device, channels_last: bool
) -> list[FrozenImageModel]:
    """Each node built with its key as the classifier's name, then moved to the device. Call this after the
    cheap input checks (spurgen.eval.plan): it may fetch weights."""
    models = []
    for name, node in nodes.items():
        model = build(node, name=name)
        if not isinstance(model, FrozenImageModel):
            raise SpurgenError(
                f"eval.classifiers.{name}: {node['_target_']} returned a {type(model).__name__}, "
                "not a FrozenImageModel"
            )
        models.append(model)
    place(models, device, channels_last)
    return models


def random_classifiers(models: list[FrozenImageModel]) -> list[str]:
    """Names of the classifiers with random weights (their numbers mean nothing)."""
    return [m.name for m in models if m.is_random]
