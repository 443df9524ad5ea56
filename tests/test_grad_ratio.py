"""experiments/grad_ratio.py: ||lambda grad L_SFSL|| / ||grad L_inst|| on the run's own parts, here
the tiny model. The gradients are taken separately, so the ratio for lambda is exactly lambda times r."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow  # trains the tiny model through the experiment script (about 8 s)
def test_grad_ratio_scales_with_lambda_and_counts_gated_batches(tmp_path):
    out = tmp_path / "ratio.json"
    cmd = [sys.executable, str(REPO / "experiments" / "grad_ratio.py"), "experiment=tiny",
           "data.batch_size=2", "--batches", "4", "--lambdas", "0,0.1,1", "--threads", "1", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    r = result["ratio_median"]
    assert result["batches"] == 4 and 1 <= result["batches_with_sfsl"] <= 4
    assert math.isfinite(r) and r > 0
    assert result["per_lambda"]["0.0"]["median"] == 0
    assert math.isclose(result["per_lambda"]["0.1"]["median"], 0.1 * r, rel_tol=1e-12)
    assert all(row["grad_inst"] > 0 for row in result["rows"])
    assert all((row["grad_sfsl"] > 0) == (row["sfsl_samples"] > 0) for row in result["rows"])
    bad = subprocess.run([*cmd[:2], "--lambdas", "a,b"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "comma-separated" in bad.stderr
