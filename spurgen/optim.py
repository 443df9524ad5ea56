"""The optimiser: AdamW, or bitsandbytes' 8-bit AdamW (train.optimizer=adamw8bit) for small GPUs."""

from __future__ import annotations

import torch

from spurgen.errors import ConfigError, SpurgenError

OPTIMIZERS = ("adamw", "adamw8bit")


def check_optimizer(name: str) -> None:
    """Fail at start-up, in plain words, when the optimiser cannot run here."""
    if name not in OPTIMIZERS:
        raise ConfigError("train.optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    if name != "adamw8bit":
        return
    if not torch.cuda.is_available():
        raise SpurgenError(
            "train.optimizer=adamw8bit (bitsandbytes' 8-bit AdamW) needs a CUDA GPU and none is available; "
            "use train.optimizer=adamw (the trainer=gpu_24gb / gpu_16gb presets are for GPU machines)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise SpurgenError(
            "train.optimizer=adamw8bit needs bitsandbytes, which is not installed: pip install bitsandbytes "
            "(or use train.optimizer=adamw)"
        ) from exc


def make_optimizer(name: str, groups: list[dict], **kwargs) -> torch.optim.Optimizer:
    """AdamW over the parameter groups, in 32-bit or bitsandbytes 8-bit form."""
    check_optimizer(name)
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)
