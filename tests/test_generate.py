"""`spurgen generate`: per-image seeds, manifest, atomic writes, rerun skips, black images, baseline, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from spurgen.cli.generate import main
from spurgen.config import GenerateConfig
from spurgen.seeds import generation_seed

META = {
    "identifier": "sks",
    "concept": "flower",
    "instance_prompt": "a photo of a sks flower",
    "class_prompt": "a photo of a flower",
    "negative_prompt": "hummingbird, bird",
    "resolution": 32,
    "model_is_tiny_random": True,
    "method_version": "1",
    "class_index": 94,
}
FAST = ["generate.num_inference_steps=2", "generate.guidance_scale=3.0", "generate.batch_size=2"]


def make_tiny_pipeline(folder: Path, meta: dict | None = META) -> Path:
    from spurgen.models.tiny import build_tiny_sd
    from spurgen.pipeline import make_pipeline, save_pipeline

    p = build_tiny_sd()
    pipe = make_pipeline(p.unet, p.text_encoder, p.tokenizer, p.vae, p.sample_scheduler)
    save_pipeline(pipe, folder, meta or {})
    if meta is None:
        (folder / "spurgen.json").unlink()
    return folder


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    return make_tiny_pipeline(tmp_path_factory.mktemp("run") / "pipeline")


def _manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def _gen_cfg(**kw):
    settings = {"seed": 0, "num_inference_steps": 2, "guidance_scale": 3.0, "batch_size": 2, **kw}
    return OmegaConf.structured(GenerateConfig(**settings))


@pytest.mark.slow
def test_generate_manifest_seeds_templates_and_rerun_skip(pipeline_dir, tmp_path):
    out = tmp_path / "gen"
    argv = [
        f"pipeline_dir={pipeline_dir}",
        f"out_dir={out}",
        "generate.num_images=5",
        f"hydra.run.dir={tmp_path}/h",
        "seed=1",
        *FAST,
    ]
    assert main(argv) == 0
    recs = _manifest(out)
    assert [r["file"] for r in recs] == [f"{i:05d}.png" for i in range(5)]
    assert [r["seed"] for r in recs] == [1_000_000 + i for i in range(5)]  # generation_seed(1, i)
    assert recs[1]["prompt"] == "a photo of a sks flower on the beach" and recs[0]["template"] == "{prompt}"
    assert recs[4]["prompt"] == "a photo of a sks flower in a market"
    for r in recs:
        assert r["negative_prompt"] == "hummingbird, bird" and r["steps"] == 2 and r["guidance"] == 3.0
        assert r["sampler"] and r["black"] is False and (out / r["file"]).exists()
    summary = json.loads((out / "generate.json").read_text())
    assert summary["num_images"] == 5 and summary["generated_now"] == 5 and summary["black_images"] == 0
    assert summary["model_is_tiny_random"] is True and summary["class_index"] == 94
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert main([*argv[:2], "generate.num_images=6", *argv[3:]]) == 0  # rerun: only the one new image is made
    assert json.loads((out / "generate.json").read_text())["generated_now"] == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name != "00005.png"} == mtimes
    assert not list(out.glob(".*tmp*"))


@pytest.mark.slow
def test_any_image_regenerates_alone_from_its_record(pipeline_dir, tmp_path):
    from spurgen.pipeline import SampleSettings, sample
    from spurgen.stages.generate import generate, load_generation_pipeline

    out = tmp_path / "all"
    generate(_gen_cfg(num_images=4, seed=2), pipeline_dir, out)
    rec = _manifest(out)[3]
    pipe = load_generation_pipeline(False, pipeline_dir, None)[0]
    settings = SampleSettings(rec["steps"], rec["guidance"], rec["resolution"], rec["negative_prompt"])
    alone = sample(pipe, [rec["prompt"]], [rec["seed"]], settings)[0]
    a = np.asarray(Image.open(out / rec["file"]), dtype=int)
    assert rec["seed"] == generation_seed(2, 3) and rec["template"] == "{prompt} in a garden"
    assert np.abs(a - np.asarray(alone, dtype=int)).max() <= 2  # batch of 2 vs 1 may differ by rounding only


def test_generation_seeds_are_paired_with_the_baseline_and_disjoint_across_training_seeds(
    pipeline_dir, tmp_path
):
    from spurgen.stages.generate import plan_generation

    def seeds(seed: int, baseline: bool) -> list[int]:
        plan = plan_generation(_gen_cfg(num_images=3, seed=seed), pipeline_dir, tmp_path, None, baseline)
        return [image.seed for image in plan.images]

    assert seeds(0, False) == seeds(0, True) == [generation_seed(0, i) for i in range(3)]
    assert not set(seeds(0, False)) & set(seeds(1, False))
    assert seeds(1, False) == [1_000_000, 1_000_001, 1_000_002]


def test_a_seed_other_than_the_training_seed_is_flagged(tmp_path, caplog):
    from spurgen.stages.generate import plan_generation

    folder = tmp_path / "pipeline"
    folder.mkdir()
    (folder / "spurgen.json").write_text(json.dumps({**META, "seed": 3}))  # planning reads nothing else
    plan_generation(_gen_cfg(num_images=1, seed=3), folder, tmp_path / "out", None, False)
    assert "not paired" not in caplog.text
    plan = plan_generation(_gen_cfg(num_images=1, seed=0), folder, tmp_path / "out", None, False)
    assert "not paired" in caplog.text and "seed=3" in caplog.text and plan.images[0].seed == 0
    assert not (tmp_path / "out").exists()  # a plan writes nothing


def test_crash_leaves_only_complete_images_and_rerun_finishes(pipeline_dir, tmp_path, monkeypatch):
    import spurgen.stages.generate as G

    real_sample, calls = G.sample, []

    def crash_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_sample(*args, **kwargs)

    out = tmp_path / "gen"
    monkeypatch.setattr(G, "sample", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        G.generate(_gen_cfg(num_images=4), pipeline_dir, out)
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png"]
    assert [r["file"] for r in _manifest(out)] == ["00000.png", "00001.png"]
    (out / ".00002.png.tmp").write_bytes(b"half")  # a half-written temp file and an image without a record
    Image.new("RGB", (32, 32)).save(out / "00003.png")
    monkeypatch.setattr(G, "sample", real_sample)
    summary = G.generate(_gen_cfg(num_images=4), pipeline_dir, out)
    assert summary["generated_now"] == 2 and summary["num_images"] == 4
    assert len(_manifest(out)) == 4


def test_black_images_are_counted(pipeline_dir, tmp_path, monkeypatch, caplog):
    import spurgen.stages.generate as G

    monkeypatch.setattr(
        G, "sample", lambda pipe, prompts, *a, **k: [Image.new("RGB", (32, 32))] * len(prompts)
    )
    summary = G.generate(_gen_cfg(num_images=3), pipeline_dir, tmp_path / "g")
    assert summary["black_images"] == 3
    assert all(r["black"] for r in _manifest(tmp_path / "g"))
    assert "all black" in caplog.text


def test_baseline_uses_the_base_model_and_the_class_prompt(pipeline_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pipeline_dir, run / "pipeline")
    argv = [
        f"pipeline_dir={run / 'pipeline'}",
        "model=tiny",
        "generate.baseline=true",
        "generate.num_images=2",
        f"hydra.run.dir={tmp_path}/h",
        *FAST,
    ]
    assert main(argv) == 0
    recs = _manifest(run / "baseline")
    assert [r["prompt"] for r in recs] == ["a photo of a flower", "a photo of a flower on the beach"]
    assert all(r["baseline"] and r["model"].startswith("tiny-random:") for r in recs)
    assert [r["seed"] for r in recs] == [
        generation_seed(0, i) for i in range(2)
    ]  # the fine-tuned images' seeds
    assert not (run / "generated").exists()


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_bad_input_is_one_clear_error(pipeline_dir, tmp_path, capsys):
    h = f"hydra.run.dir={tmp_path}/h"
    foreign = make_tiny_pipeline(tmp_path / "foreign", meta=None)
    assert main([f"pipeline_dir={foreign}", h, *FAST]) == 2
    assert "spurgen: error:" in (e := _err(capsys)) and "generate.instance_prompt" in e
    out = tmp_path / "f_out"
    assert (
        main(
            [
                f"pipeline_dir={foreign}",
                "generate.instance_prompt=a photo of a sks flower",
                "class=koala",
                "generate.num_images=1",
                f"out_dir={out}",
                h,
                *FAST,
            ]
        )
        == 0
    )
    assert _manifest(out)[0]["negative_prompt"].startswith("koala")
    assert main([h]) == 2 and "pipeline_dir is required" in _err(capsys)
    assert main([f"pipeline_dir={tmp_path / 'missing'}", h]) == 2 and "does not exist" in _err(capsys)
    (tmp_path / "empty").mkdir()
    assert main([f"pipeline_dir={tmp_path / 'empty'}", "generate.instance_prompt=x", h]) == 2
    assert "model_index.json" in _err(capsys)
    assert main([f"pipeline_dir={pipeline_dir}", "generate.templates=[on the beach]", h]) == 2
    assert "{prompt}" in _err(capsys)
    assert main([f"pipeline_dir={pipeline_dir}", "generate.num_images=0", h]) == 2
    assert "generate.num_images" in _err(capsys)
    assert main([f"pipeline_dir={pipeline_dir}", "seed=-1", h]) == 2
    assert "generate.seed" in _err(capsys)
    assert main([f"pipeline_dir={pipeline_dir}", "generate.sampler=NoSuchScheduler", h]) == 2
    assert "not a diffusers scheduler" in _err(capsys)
    bad = tmp_path / "bad_size"
    assert main([f"pipeline_dir={pipeline_dir}", "generate.resolution=36", f"out_dir={bad}", h]) == 2
    assert "'generate.resolution': 36 px is not a multiple of 8" in _err(capsys) and not bad.exists()
