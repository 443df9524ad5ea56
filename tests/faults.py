"""Test-only fault injection, added to a run through the config (never an environment switch in spurgen/):

python -m spurgen.run ... +callbacks.fault._target_=tests.faults.FaultInjection +callbacks.fault.kill_at_step=3
"""

from __future__ import annotations

import os
import signal

import lightning as L


class FaultInjection(L.Callback):
    """Send this process a signal (KILL, TERM or INT) right after the given global step."""

    def __init__(self, kill_at_step: int, signal_name: str = "KILL"):
        self.kill_at_step = int(kill_at_step)
        self.signum = getattr(signal, f"SIG{signal_name.upper()}")
        self.sent = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.kill_at_step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


def fault_overrides(step: int, signal_name: str = "KILL") -> list[str]:
    """Command-line overrides that add FaultInjection as the first callback (before GracefulInterrupt, which
    then sees the signal at the same step)."""
    return [
        "+callbacks.fault._target_=tests.faults.FaultInjection",
        f"+callbacks.fault.kill_at_step={step}",
        f"+callbacks.fault.signal_name={signal_name}",
    ]
