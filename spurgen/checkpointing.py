"""Checkpoints that survive pre-emption: atomic writes, safe loading, a save on SIGTERM/SIGINT."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from spurgen.errors import SpurgenError


class DiskFullError(SpurgenError):
    pass


class TrainingInterrupted(SpurgenError):
    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    A crash or a full disk never leaves a half-written checkpoint under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"disk full while writing {path}: free space and resume; the previous checkpoint is intact"
            ) from None
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO: atomic saves; loads with weights_only=True (no pickled code runs)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = True) -> dict:
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user-facing problem
            raise SpurgenError(
                f"checkpoint {path} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                "delete it to resume from an older one in the same folder, or start a new run"
            ) from None


def newest_loadable_checkpoint(folder: Path) -> Path | None:
    """last.ckpt if it loads, else the newest step-*.ckpt that does (a corrupt file is skipped, not used)."""
    candidates = [folder / "last.ckpt"] + sorted(folder.glob("step-*.ckpt"), reverse=True)
    for path in candidates:
        if not path.exists():
            continue
        try:
            # mmap: checks the archive (a truncated file has no zip directory) without reading every
            # tensor, so a multi-GB checkpoint is not read twice on resume
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return path
        except Exception:  # noqa: BLE001 - corrupt or truncated: try the next one
            continue
    return None


class GracefulInterrupt(L.Callback):
    """SIGTERM / SIGINT: finish the current step, save last.ckpt, then stop with a resume hint."""

    def __init__(self, ckpt_path: str | Path, run_dir: str | Path):
        self.ckpt_path, self.run_dir = Path(ckpt_path), Path(run_dir)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        self.received = signum
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    # the handlers live exactly as long as the fit: installed at setup, removed at teardown or on an exception
    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self._previous:
            self.install()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.uninstall()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.uninstall()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is None:
            return
        trainer.save_checkpoint(str(self.ckpt_path), weights_only=False)
        name = signal.Signals(self.received).name
        raise TrainingInterrupted(
            f"{name} received: saved {self.ckpt_path} at step {trainer.global_step}; "
            f"continue with the same overrides plus resume={self.run_dir}",
            self.received,
        )
