"""Seams the tests own, kept out of production signatures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import torch

from spurgen.module import ModuleSettings, SpurgenModule

# The tiny random plumbing experiment (conf/experiment/tiny.yaml: model=tiny, class hummingbird, few steps):
# the tests' runs and compositions name it (the default is experiment=mini, whose weights the tests train only
# where they measure the method).
TINY = ("experiment=tiny",)


@lru_cache(maxsize=1)
def _module_node():
    """conf/module/default.yaml as the tiny experiment composes it (its values from conf/train/default.yaml)."""
    from hydra import compose, initialize_config_dir

    from spurgen.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(TINY)).module


def module_settings(**overrides: Any) -> ModuleSettings:
    """The module's settings as the config builds them (defaults written once, in conf/), with overrides."""
    from spurgen.build import build

    return ModuleSettings(**{**vars(build(_module_node().settings)), **overrides})


def optimizer_factory(**overrides: Any) -> Callable[..., torch.optim.Optimizer]:
    """The optimiser partial as the config builds it (conf/module/default.yaml), with overrides."""
    from spurgen.build import build

    return build(_module_node().optimizer, **overrides)


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
