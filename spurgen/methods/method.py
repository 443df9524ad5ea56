"""A method: fine-tuning (or none) plus the sampler's guidance (or none)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Method:
    """Built from `cfg.method` (conf/method/<name>.yaml).

    tuning: what fine-tuning trains (FullTuning, TextualInversion), or None: no fine-tuning, the train stage
    saves the base model. sfsl_loss: whether lambda_sfsl > 0 may add L_SFSL to the fine-tuning objective
    (spurgen/validation.py refuses it otherwise). guidance: an SFSLGuidance for the sampler, or None.
    """

    name: str
    tuning: Any = None
    sfsl_loss: bool = True
    guidance: Any = None

    @property
    def fine_tunes(self) -> bool:
        return self.tuning is not None
