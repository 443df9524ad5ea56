"""The benchmark suite runs end to end (one repeat, tiny size) and writes its report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

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


@pytest.mark.slow
def test_gpu_bench_script_smoke(tmp_path):
    """experiments/bench_gpu.py (the real-size GPU measurement) runs end to end on the tiny parts on CPU."""
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "experiments" / "bench_gpu.py"),
            *("--size", "tiny", "--device", "cpu", "--fp32", "--repeats", "1", "--gen-images", "1"),
            *("--gen-steps", "2", "--out", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "bench_gpu.json").read_text())
    steps = data["steps"]
    assert set(steps) == {"lambda_sfsl=0", "SFSL exact (loss=fast)", "SFSL loss=low_memory"}
    for v in steps.values():
        assert v["median_s"] > 0 and v["tflop_per_step"] > 0
    # the SFSL adds the decoder's and f's FLOPs; checkpointing adds one more decoder forward
    assert steps["lambda_sfsl=0"]["tflop_per_step"] < steps["SFSL exact (loss=fast)"]["tflop_per_step"]
    assert steps["SFSL exact (loss=fast)"]["tflop_per_step"] < steps["SFSL loss=low_memory"]["tflop_per_step"]
    assert data["generation"]["images_per_s"] > 0
    assert "| SFSL exact (loss=fast) |" in (tmp_path / "BENCHMARKS_GPU.md").read_text()


@pytest.mark.slow  # a subprocess that imports the whole stack (about 6 s)
def test_gpu_bench_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the message shown without CUDA")
    out = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "bench_gpu.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 2 and "no CUDA device" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "bench_gpu.json").exists()


@pytest.fixture
def experiments_conf(monkeypatch):
    """experiments/conf (not packaged) on spurgen's config search path, as SPURGEN_CONFIG_PATH puts it there."""
    from spurgen.cli.searchpath import register_search_path

    register_search_path()
    monkeypatch.setenv("SPURGEN_CONFIG_PATH", str(REPO / "experiments" / "conf"))


def test_proportional_experiment_builds_the_benchmarks_model(experiments_conf):
    """experiment=proportional (experiments/conf) composes, validates and builds the parts and extractor that
    experiments/bench_setup.py measures: the same weights from the same settings."""
    from hydra import compose, initialize_config_dir

    from experiments.proportional import build_proportional_sd
    from spurgen.build import build
    from spurgen.config import CONF_DIR
    from spurgen.validation import validate

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=proportional", "debug=default"])
    validate(cfg)
    parts, bench = (
        build(cfg.model),
        build_proportional_sd(width_scale=0.25, vae_width_scale=0.5, resolution=128),
    )
    assert parts.model_id.startswith("proportional-random:") and parts.is_tiny_random
    for mine, theirs in ((parts.unet, bench.unet), (parts.vae, bench.vae)):
        for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
            assert torch.equal(a, b)
    extractor = build(cfg.feature_extractor)
    assert extractor.name == "resnet50_w0.25" and extractor.is_random


@pytest.mark.slow
def test_step_breakdown_smoke(tmp_path):
    """experiments/step_breakdown.py on the default run: every piece is timed, with and without the SFSL, and
    the SFSL's pieces exist only with it."""
    from experiments import step_breakdown

    assert (
        step_breakdown.main(["--steps", "2", "--warmup", "1", "--images", "2", "--out", str(tmp_path)]) == 0
    )
    result = json.loads((tmp_path / "step_breakdown.json").read_text())
    with_sfsl, without = result["lambda_sfsl=0.1"]["pieces_ms"], result["lambda_sfsl=0"]["pieces_ms"]
    assert {"UNet forward, instance half", "UNet backward, class half", "optimiser step"} <= set(without)
    assert not any(k.startswith("sfsl:") for k in without)
    assert with_sfsl["sfsl: extractor backward"] >= 0 and "sfsl: decode forward" in with_sfsl
    assert result["lambda_sfsl=0"]["plain loop"] > 0 and result["lambda_sfsl=0"]["Lightning Trainer"] > 0
    assert "| whole step: Lightning's own time |" in (tmp_path / "STEP_BREAKDOWN.md").read_text()
