"""What every mini pre-training run reports (recorded in spurgen/assets/mini/manifest.json)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainResult:
    """Losses and timing of one training run."""

    first_losses: list[float] = field(default_factory=list)  # exact step losses: tests replay them
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss over the last log_every)
    final_loss: float = float("nan")
    wall_s: float = 0.0
