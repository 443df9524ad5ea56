"""Multi-device (DDP) rules in one place: who does what, and what each rank sees.

- Prior images and their cache: made once. `file_lock` serialises the makers (DDP ranks started together by
  torchrun/SLURM, or parallel sweep jobs of one class sharing the cache); the others wait, then reuse them.
- W&B, saving pipeline/, generation and evaluation: rank 0 only (`is_global_zero`).
- Data and noise: rank r of W takes global batch b*W + r (`RankBatchSampler`, SpurgenModule.step_generator),
  so ranks never train on duplicate batches, and W = 1 is bit-identical to a single-device run.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


def global_rank() -> int:
    """This process's global rank (0 without DDP), as Lightning sees it."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_global_zero() -> bool:
    return global_rank() == 0


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if needed); blocks until it is free."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class RankBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Wraps spurgen's StepBatchSampler: rank r of W yields its global batches b*W + r. Rank and world size
    are read when iteration starts (after Lightning has set up the strategy)."""

    def __init__(self, inner, rank_world: Callable[[], tuple[int, int]]):
        self.inner, self.rank_world = inner, rank_world

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = self.rank_world()
        if world <= 1:
            yield from self.inner
            return
        b = int(self.inner.start())
        while True:
            yield self.inner.batch(b * world + rank)
            b += 1


def module_rank_world(module) -> Callable[[], tuple[int, int]]:
    """(global rank, world size) of a LightningModule's trainer; (0, 1) before it has one."""

    def get() -> tuple[int, int]:
        trainer = getattr(module, "_trainer", None)
        return (0, 1) if trainer is None else (int(trainer.global_rank), int(trainer.world_size))

    return get
