"""The benchmark suite runs end to end (one repeat, tiny size) and writes its report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_bench_smoke(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "bench.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = (tmp_path / "BENCHMARKS.md").read_text()
    for heading in [
        "(a) Training step",
        "(b) Framework overhead",
        "(c) Evaluation",
        "(d) Generation",
        "Fidelity",
        "Peak memory",
        "No GPU was available",
    ]:
        assert heading in report, heading
    data = json.loads((tmp_path / "bench.json").read_text())
    tiny = data["sizes"]["tiny"]
    # checkpointing recomputes the same decoder: the same gradient
    assert tiny["fidelity"]["decoder checkpointing (loss=low_memory)"]["cosine"] > 0.99
    assert tiny["memory"]["step/SFSL exact (loss=default = loss=fast)"]["peak_mib"] > 0
    run = tiny["run"]
    assert run["steps"] == 2 and 0 <= run["term_ran"] <= 2
    framework = tiny["framework"]
    own = framework["Lightning's own time in a fit step"]["median"]
    assert 0 <= own < framework["Lightning fit (spurgen module)"]["median"]
    assert tiny["eval"]["classifiers"]["tiny_cnn"]["gflop_per_image"] > 0
