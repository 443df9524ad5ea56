"""The run's stages end to end on tiny models: train -> generate (+ baseline) -> evaluate."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from tests.conftest import FAST, run_cli
from tests.helpers import TINY

TINY_GEN_EVAL = [
    "generate.num_images=3",
    "generate.num_inference_steps=2",
    "generate.guidance_scale=3.0",
    "generate.baseline=true",
    "eval=tiny",
    "eval.bootstrap_samples=100",
]


@pytest.mark.slow
def test_run_train_generate_evaluate(tmp_path):
    run_dir = tmp_path / "run"
    rc = run_cli(
        [*TINY, *FAST, *TINY_GEN_EVAL, "stages=[train,generate,evaluate]", f"hydra.run.dir={run_dir}"]
    )
    assert rc == 0
    gen = json.loads((run_dir / "generated" / "generate.json").read_text())
    assert gen["num_images"] == 3 and gen["model_is_tiny_random"] is True and gen["class_index"] == 94
    assert json.loads((run_dir / "baseline" / "generate.json").read_text())["baseline"] is True
    m = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert m["model_is_tiny_random"] is True and m["generator_is_tiny_random"] is True
    assert set(m["results"]) == {"images", "baseline", "reference"}  # the run's (demo) references
    assert "eval/similarity/tiny_vit" in m["metrics"]
    # KID to the references for the generated and baseline sets (not the references), diversity for every set
    kid = m["results"]["images"]["per_classifier"]["tiny_vit"]["kid"]
    assert kid["n"] == 3 and kid["n_reference"] >= 2 and m["metrics"]["eval/kid/tiny_vit"] == kid["value"]
    assert (
        "eval_baseline/kid/tiny_effnet" in m["metrics"] and "eval_reference/kid/tiny_vit" not in m["metrics"]
    )
    assert all(
        f"{s}/diversity/tiny_byobnet" in m["metrics"] for s in ("eval", "eval_baseline", "eval_reference")
    )
    assert (
        "eval/spurious_rate/tiny_effnet" in m["metrics"]
        and "eval_baseline/spurious_rate/tiny_vit" in m["metrics"]
    )
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")  # the classifiers are part of the saved config
    assert list(saved.eval.classifiers) == ["tiny_effnet", "tiny_byobnet", "tiny_vit"]
    assert [c["name"] for c in m["classifiers"]] == list(saved.eval.classifiers)
    first = json.loads((run_dir / "generated" / "manifest.jsonl").read_text().splitlines()[0])
    assert first["prompt"] == "a photo of a sks flower" and "hummingbird" in first["negative_prompt"]
