"""Pre-training runs on a fixed number of CPU threads: a manifest's losses replay exactly only with the thread
count they were recorded with. The caller's count comes back afterwards (in-process callers, such as tests,
compare other runs bit for bit)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on n torch CPU threads (None: unchanged), then restore the count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
