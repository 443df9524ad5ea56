"""Seams the tests own, kept out of production signatures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from spurgen.module import SpurgenModule

# The tiny random plumbing model and its class: the tests' runs and compositions name it (the default is the
# mini world, conf/model/mini.yaml, whose weights the tests do not build).
TINY = ("model=tiny", "class=hummingbird")


@contextmanager
def fixed_timesteps(module: SpurgenModule, t: torch.Tensor | list[int]) -> Iterator[None]:
    """While active, `module.compute_losses` uses t (B,) instead of drawing it (measurements on a fixed batch).

    t is the last draw from the step's generator, so the noise of the step is the same as without the
    override. Replaces the module's `sample_timesteps` on this instance only."""
    fixed = torch.as_tensor(t, dtype=torch.long)

    def sample_timesteps(n: int, generator: torch.Generator) -> torch.Tensor:  # noqa: ARG001
        if n != fixed.numel():
            raise ValueError(f"fixed_timesteps holds {fixed.numel()} timesteps for a batch of {n}")
        return fixed.clone()

    module.sample_timesteps = sample_timesteps
    try:
        yield
    finally:
        del module.sample_timesteps
