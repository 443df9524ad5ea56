"""Reliability (issue 5): exact resume, signals, non-finite losses, bad input, determinism, safe loading."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from .conftest import REPO, run_cli, write_images
from .faults import fault_overrides
from .helpers import TINY

RUN = [
    *TINY,
    "debug=default",
    "trainer.max_steps=6",
    "train.checkpoint_every_n_steps=2",
    "data.num_class_images=2",
    "data.num_references=2",
    "lambda_sfsl=0.5",
    "loss.sfsl.t_max=1000",
    "stages=[train]",  # what these tests check is written by training; test_secrets_never_saved runs all three
]


def weights(run: Path) -> dict[str, torch.Tensor]:
    out = {}
    for sub in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        out.update({f"{sub}:{k}": v for k, v in load_file(run / "pipeline" / sub).items()})
    return out


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted run every resumed run must match bit for bit."""
    os.environ.setdefault("SPURGEN_CACHE", str(tmp_path_factory.mktemp("cache")))
    run = tmp_path_factory.mktemp("ref") / "run"
    assert run_cli([*RUN, f"hydra.run.dir={run}"]) == 0
    return run


def _killed_subprocess(run: Path, step: int, signal_name: str = "KILL") -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "spurgen.run",
            *RUN,
            *fault_overrides(step, signal_name),
            f"hydra.run.dir={run}",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode


@pytest.mark.slow
def test_fault_injection_kill_resume_and_corruption(reference_run, tmp_path, monkeypatch):
    """SIGKILL at up to 3 seeded random steps, then resume; a corrupt checkpoint; a corrupt reference."""
    tried, nothing_lost = 0, 0
    steps = sorted(random.Random(0).sample(range(1, 6), 3))
    for step in steps:
        run = tmp_path / f"kill{step}"
        tried += 1
        code = _killed_subprocess(run, step)
        assert code in (-9, 137), code
        if step == steps[-1]:  # the latest kill, before its resume, also serves the corrupt-checkpoint case
            shutil.copytree(run, tmp_path / "corrupt")
        assert run_cli([*RUN, f"resume={run}"]) == 0
        nothing_lost += same_weights(run, reference_run)

    # a corrupt last.ckpt: resume falls back to the newest loadable checkpoint and still matches
    run = tmp_path / "corrupt"
    tried += 1
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    assert run_cli([*RUN, f"resume={run}"]) == 0
    nothing_lost += same_weights(run, reference_run)

    # a corrupt reference image: a clear error, no run folder left behind
    refs = tmp_path / "refs"
    write_images(refs, 3)
    (refs / "img_001.png").write_bytes((refs / "img_001.png").read_bytes()[:60])
    tried += 1
    code = run_cli(
        [*RUN, "data.num_references=3", f"data.reference_dir={refs}", f"hydra.run.dir={tmp_path}/bad"]
    )
    nothing_lost += code == 2 and not (tmp_path / "bad").exists()
    print(f"fault injection: tried {tried} cases, {nothing_lost} ended with nothing lost")
    assert nothing_lost == tried


@pytest.mark.slow
@pytest.mark.parametrize(("name", "code"), [("TERM", 143), ("INT", 130)])
def test_sigterm_and_sigint_save_a_checkpoint(reference_run, tmp_path, monkeypatch, capsys, name, code):
    run = tmp_path / "run"
    assert run_cli([*RUN, *fault_overrides(3, name), "logger=wandb", f"hydra.run.dir={run}"]) == code
    err = capsys.readouterr().err
    assert f"SIG{name} received" in err and "resume=" in err
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    time.sleep(
        1.1
    )  # W&B names offline run folders by the second: the resumed session gets a folder of its own
    assert run_cli([*RUN, "logger=wandb", f"resume={run}"]) == 0
    assert same_weights(run, reference_run)
    # the W&B run continues under the same id: two offline run folders, one id
    ids = {p.name.rsplit("-", 1)[-1] for p in (run / "wandb").glob("offline-run-*")}
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2 and len(ids) == 1, ids


def test_checkpoints_keep_last_n(reference_run):
    names = sorted(p.name for p in (reference_run / "checkpoints").glob("*.ckpt"))
    assert names == ["last.ckpt", "step-000004.ckpt", "step-000006.ckpt"]  # train.keep_last_n=2
    assert not list((reference_run / "checkpoints").glob(".*.tmp"))


def test_nonfinite_loss_stops_naming_term_and_step(tmp_path, monkeypatch, capsys):
    from spurgen.losses import objective

    real = objective.SpurgenObjective.forward

    def poisoned(self, step, global_step=0):
        out = real(self, step, global_step)
        if global_step >= 3:
            out.parts["loss_prior"] = out.parts["loss_prior"] * float("nan")
            out.total = out.total + out.parts["loss_prior"]
        return out

    monkeypatch.setattr(objective.SpurgenObjective, "forward", poisoned)
    run = tmp_path / "run"
    assert run_cli([*RUN, f"hydra.run.dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "non-finite loss, loss_prior at step 3" in err and "Traceback" not in err
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2  # the last good checkpoint is loadable

    run2 = tmp_path / "skip"
    assert run_cli([*RUN, "train.on_nonfinite=skip", f"hydra.run.dir={run2}"]) == 0
    meta = json.loads((run2 / "run.json").read_text())
    assert meta["final_losses"]["train/skipped_nonfinite"] >= 1


def test_disk_full_while_checkpointing_keeps_previous(tmp_path, capsys, monkeypatch):
    import spurgen.checkpointing as ck

    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj, fh, *a, **k):
        calls["n"] += 1
        if calls["n"] >= 2:  # the first checkpoint (step 2) succeeds, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, fh, *a, **k)

    monkeypatch.setattr(ck.torch, "save", flaky_save)
    run = tmp_path / "run"
    assert run_cli([*RUN, f"hydra.run.dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "disk full while writing" in err and "Traceback" not in err
    ckpt = torch.load(run / "checkpoints" / "step-000002.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert not list((run / "checkpoints").glob(".*.tmp"))


def _bad(tmp_path, argv, capsys, needle):
    code = run_cli([*RUN, *argv, f"hydra.run.dir={tmp_path}/run"])
    err = capsys.readouterr().err
    assert code != 0 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / "pipeline").exists()


def test_bad_input_rows(tmp_path, capsys):
    """The README's table of bad input, one row each."""
    (tmp_path / "empty").mkdir()
    _bad(tmp_path, [f"data.reference_dir={tmp_path}/empty"], capsys, "holds no images")
    _bad(tmp_path, [f"data.reference_dir={tmp_path}/nope"], capsys, "does not exist")
    junk = tmp_path / "junk"
    write_images(junk, 2)
    (junk / "notes.png").write_text("this is not an image")
    _bad(tmp_path, [f"data.reference_dir={junk}", "data.num_references=3"], capsys, "cannot read image")
    trunc = tmp_path / "trunc"
    write_images(trunc, 2, fmt="jpg")
    data = (trunc / "img_000.jpg").read_bytes()
    (trunc / "img_000.jpg").write_bytes(data[: len(data) // 2])
    _bad(tmp_path, [f"data.reference_dir={trunc}"], capsys, "cannot read image")
    _bad(tmp_path, [f"data.reference_dir={junk}", "data.num_references=5"], capsys, "data.num_references=5")
    sin = tmp_path / "images"
    write_images(sin / "n1_hb_94_feeder_1", 2)
    write_images(sin / "n1_hb_94_flower_4", 2)
    _bad(tmp_path, [f"data.spurious_imagenet_dir={sin}"], capsys, "several Spurious ImageNet components")
    _bad(tmp_path, ["lambda_sfsl=-0.1"], capsys, "lambda_sfsl")
    _bad(tmp_path, ["loss.lambda_prior=abc"], capsys, "lambda_prior")
    _bad(tmp_path, ["loss.lambda_prior=nan"], capsys, "lambda_prior")
    _bad(tmp_path, ["class=unicorn"], capsys, "hummingbird")
    code = (
        run_cli([*RUN, f"hydra.run.dir={tmp_path}/afile/run"]) if (tmp_path / "afile").touch() is None else 0
    )
    assert code == 2 and "not writable" in capsys.readouterr().err
    code = run_cli(["-m", *RUN, "lambda_sfsl=0,1", f"hydra.sweep.dir={tmp_path}/afile/sweep"])
    assert code == 2 and "choose another with hydra.sweep.dir=" in capsys.readouterr().err


def test_every_command_refuses_an_output_folder_it_cannot_create(tmp_path, capsys):
    """Hydra would make its folder, or a stage its out_dir, and fail with a traceback: one line and exit 2,
    naming the key, for each command (a file stands where a folder should be)."""
    from spurgen.cli import evaluate, export, generate, report

    blocked = tmp_path / "afile"
    blocked.write_text("a file")
    bad = blocked / "out"
    cases = [
        (generate.main, [f"pipeline_dir={tmp_path}", f"out_dir={bad}"], "out_dir"),
        (evaluate.main, [f"images_dir={tmp_path}", f"out_dir={bad}"], "out_dir"),
        (export.main, [f"images_dir={tmp_path}", f"hydra.run.dir={bad}"], "hydra.run.dir"),
        (report.main, [str(tmp_path), "--out", str(bad)], "--out"),
    ]
    for main, argv, key in cases:
        if main is report.main:
            (tmp_path / "run" / ".hydra").mkdir(parents=True)  # a sweep folder with one (unfinished) run
            (tmp_path / "run" / ".hydra" / "config.yaml").write_text("seed: 0\n")
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and f"{bad}" in err and key in err, err


def test_small_references_are_upscaled_with_a_warning(tmp_path):
    small = tmp_path / "small"
    write_images(small, 2, size=12)
    with pytest.warns(UserWarning, match="upscaled"):
        assert (
            run_cli(
                [*RUN, "trainer.max_steps=1", f"data.reference_dir={small}", f"hydra.run.dir={tmp_path}/run"]
            )
            == 0
        )


def test_resume_with_other_training_settings_is_refused_before_hydra_touches_the_run(tmp_path, capsys):
    """resume= continues a run only with the settings it was trained with (training_key.json); a refusal
    comes before Hydra rewrites the run's .hydra/config.yaml, so the finished run keeps its own record. More
    steps (a trainer setting) are allowed."""
    run = tmp_path / "run"
    assert run_cli([*RUN, "trainer.max_steps=1", "lambda_sfsl=0.1", f"hydra.run.dir={run}"]) == 0
    assert json.loads((run / "training_key.json").read_text())["lambda_sfsl"] == 0.1
    saved = (run / ".hydra" / "config.yaml").read_bytes()
    capsys.readouterr()
    assert run_cli([*RUN, "trainer.max_steps=1", "lambda_sfsl=1", f"resume={run}"]) == 2
    err = capsys.readouterr().err
    assert "was trained with other settings (lambda_sfsl: 0.1 -> 1.0" in err and "Traceback" not in err
    assert (run / ".hydra" / "config.yaml").read_bytes() == saved
    assert (
        run_cli([*RUN, "trainer.max_steps=1", "lambda_sfsl=0.1", "data.num_references=0", f"resume={run}"])
        == 2
    )
    assert (run / ".hydra" / "config.yaml").read_bytes() == saved  # any refusal before Hydra starts
    assert run_cli([*RUN, "trainer.max_steps=2", "lambda_sfsl=0.1", f"resume={run}"]) == 0  # train longer


def test_prior_preservation_without_class_images_is_said(tmp_path):
    """loss.lambda_prior > 0 with data.num_class_images=0 trains without prior preservation: the log says so."""
    run = tmp_path / "run"
    assert run_cli([*RUN, "trainer.max_steps=1", "data.num_class_images=0", f"hydra.run.dir={run}"]) == 0
    assert "prior preservation is off: data.num_class_images=0" in (run / "run.log").read_text()


@pytest.mark.slow
def test_same_config_and_seed_give_same_everything(reference_run, tmp_path):
    run = tmp_path / "again"
    extra = ["train.sample_every_n_steps=3", "train.num_samples=2", "logger=csv"]
    for r in (reference_run.parent / "det", run):
        assert run_cli([*RUN, *extra, f"hydra.run.dir={r}"]) == 0
    a, b = reference_run.parent / "det", run
    ma, mb = (json.loads((r / "run.json").read_text()) for r in (a, b))
    assert ma["references"] == mb["references"]
    assert ma["final_losses"] == mb["final_losses"]
    assert (a / "logs" / "metrics.csv").read_text() == (b / "logs" / "metrics.csv").read_text()
    for name in ("step_000003.png", "final_grid.png"):
        assert Image.open(a / "samples" / name).tobytes() == Image.open(b / "samples" / name).tobytes()
    assert same_weights(a, b)


def test_no_unsafe_torch_load_in_the_package():
    offenders = []
    for path in (REPO / "spurgen").rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line and "allow_pickle" not in line:
                offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_secrets_never_saved(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "sekrit-env-key")
    run = tmp_path / "run"
    assert (
        run_cli(
            [
                *RUN,
                "stages=[train,generate,evaluate]",  # every file a run writes is searched
                "trainer.max_steps=2",
                "+extras.hf_token=sekrit-token",
                "logger=wandb",
                f"hydra.run.dir={run}",
            ]
        )
        == 0
    )
    for path in run.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            blob = path.read_bytes()
            assert b"sekrit" not in blob, path
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["spurgen_config"]["extras"]["hf_token"] == "***"
    assert re.search(r"hf_token=\*\*\*", (run / ".hydra" / "overrides.yaml").read_text())
