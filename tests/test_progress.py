"""The training progress bar counts optimiser steps: labelled "train" (not Lightning's "Epoch 0/-2" when
trainer.max_steps ends the run) with the rate in steps/s."""

from __future__ import annotations

from types import SimpleNamespace

from hydra import compose, initialize_config_dir

from spurgen.callbacks import StepProgressBar, StepRateColumn
from spurgen.config import CONF_DIR
from spurgen.stages.train import build_callbacks

from .helpers import TINY


def test_rate_is_steps_per_second_with_accumulation():
    assert StepRateColumn("", 1).render(SimpleNamespace(speed=4.3125)).plain == "4.31 steps/s"
    assert (
        StepRateColumn("", 4).render(SimpleNamespace(speed=8.0)).plain == "2.00 steps/s"
    )  # 4 batches a step
    assert StepRateColumn("", 1).render(SimpleNamespace(speed=None)).plain == "0.00 steps/s"


def test_the_bar_says_train_and_its_last_column_is_the_step_rate():
    bar = StepProgressBar()
    assert bar._get_train_description(0) == "train"
    trainer = SimpleNamespace(accumulate_grad_batches=2)
    assert isinstance(bar.configure_columns(trainer)[-1], StepRateColumn)


def test_the_bar_is_a_callback_unless_the_trainer_hides_it(tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        shown = compose("config", overrides=[*TINY, f"run_dir={tmp_path}"])
        hidden = compose(
            "config", overrides=[*TINY, f"run_dir={tmp_path}", "trainer.enable_progress_bar=false"]
        )
    kinds = lambda cfg: [type(c).__name__ for c in build_callbacks(cfg)]  # noqa: E731
    assert "StepProgressBar" in kinds(shown) and "StepProgressBar" not in kinds(hidden)
