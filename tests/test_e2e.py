"""End to end on the tiny model: the files a run leaves, and that pipeline/ stands alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from .conftest import FAST, run_cli
from .helpers import TINY


@pytest.mark.slow
def test_tiny_run_leaves_every_output(tmp_path):
    run = tmp_path / "run"
    code = run_cli(
        [
            *TINY,
            "trainer.max_steps=4",
            "train.checkpoint_every_n_steps=2",
            "train.sample_every_n_steps=2",
            "train.num_samples=2",
            "trainer.enable_progress_bar=false",
            "logger=wandb",
            "data.num_class_images=2",
            "lambda_sfsl=0.5",
            "loss.sfsl.t_max=1000",
            f"hydra.run.dir={run}",
        ]
    )
    assert code == 0
    for rel in [
        "pipeline/model_index.json",
        "pipeline/unet",
        "pipeline/vae",
        "pipeline/text_encoder",
        "pipeline/tokenizer",
        "pipeline/scheduler",
        "pipeline/spurgen.json",
        "checkpoints/last.ckpt",
        "samples/step_000002.png",
        "samples/final_grid.png",
        ".hydra/config.yaml",
        "run.json",
    ]:
        assert (run / rel).exists(), rel
    meta = json.loads((run / "pipeline" / "spurgen.json").read_text())
    for key in [
        "identifier",
        "concept",
        "class_index",
        "instance_prompt",
        "class_prompt",
        "resolution",
        "method_version",
        "identity",
        "model_is_tiny_random",
    ]:
        assert key in meta, key
    assert meta["model_is_tiny_random"] is True and meta["instance_prompt"] == "a photo of a sks flower"
    assert meta["steps"] == 4 and meta["class_index"] == 94
    run_meta = json.loads((run / "run.json").read_text())
    stamped = json.loads((run / "eval" / "metrics.json").read_text())
    assert run_meta["model_weights"].startswith("tiny-random:")  # the base weights, for the report
    stages = run_meta["stage_seconds"]  # each stage's wall time
    assert set(stages) == {"train", "generate", "evaluate"} and all(v > 0 for v in stages.values()), stages
    assert stamped["model_weights"] == run_meta["model_weights"]
    model_index = json.loads((run / "pipeline" / "model_index.json").read_text())
    assert model_index["safety_checker"] == [None, None]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4 and ckpt["spurgen_config"]["lambda_sfsl"] == 0.5
    assert ckpt["spurgen_config"]["model_is_tiny_random"] is True
    assert any((run / "wandb").glob("offline-run-*")), "W&B offline run folder"
    assert (run / "wandb_run_id.txt").exists()

    # the saved pipeline loads and samples without importing spurgen, at the configured size
    script = (
        "import sys, torch\n"
        "from diffusers import StableDiffusionPipeline\n"
        f"p = StableDiffusionPipeline.from_pretrained(r'{run / 'pipeline'}')\n"
        "im = p('a photo of a sks flower', num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]\n"
        "assert 'spurgen' not in sys.modules\n"
        "print(im.size)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith(f"({meta['resolution']}, {meta['resolution']})")


def test_missing_reference_folder_fails_cleanly(tmp_path, capsys):
    code = run_cli([*TINY, *FAST, f"data.reference_dir={tmp_path}/missing", f"hydra.run.dir={tmp_path}/run"])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_resolution_the_model_cannot_make_fails_cleanly(tmp_path, capsys):
    # the tiny model: VAE factor 2 x UNet downsampling 2, and diffusers' 8 -> multiples of 8
    code = run_cli([*TINY, *FAST, "data.resolution=36", f"hydra.run.dir={tmp_path}/run"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "'data.resolution': 36 px is not a multiple of 8" in err and "try 32 or 40" in err
    assert not (tmp_path / "run" / "pipeline").exists() and not (tmp_path / "run" / "eval").exists()


def test_sfsl_t_max_past_the_timesteps_fails_cleanly(tmp_path, capsys):
    code = run_cli([*TINY, *FAST, "loss.sfsl.t_max=5000", f"hydra.run.dir={tmp_path}/run"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and not (tmp_path / "run").exists()
    assert "'loss.sfsl.t_max': 5000 is past the model's 1000 training timesteps" in err


def test_real_model_missing_offline_says_what_and_where(tmp_path, capsys, image_folder):
    fast = [*FAST, "class=hummingbird"]  # a class without packaged references (nematode has the mini world's)
    code = run_cli([*fast, "model=sd15", f"hydra.run.dir={tmp_path}/run"])
    err = capsys.readouterr().err
    assert code == 2 and "no reference images" in err  # real models never fall back to demo images
    fast = [*fast, f"data.reference_dir={image_folder}"]
    code = run_cli([*fast, "model=sd15", f"model.path={tmp_path}/sd15", f"hydra.run.dir={tmp_path}/run"])
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path}/sd15" in err and "does not exist" in err
    (tmp_path / "sd15").mkdir()
    (tmp_path / "sd15" / "model_index.json").write_text("{}")
    code = run_cli([*fast, "model=sd15", f"model.path={tmp_path}/sd15", f"hydra.run.dir={tmp_path}/run"])
    err = capsys.readouterr().err
    assert code == 2 and "missing unet, vae, text_encoder, tokenizer, scheduler" in err
    # the missing SD folder and the missing extractor file come in one message, before anything loads
    code = run_cli([*fast, "model=sd15", f"model.path={tmp_path}/nothing", f"hydra.run.dir={tmp_path}/run"])
    err = capsys.readouterr().err
    assert code == 2 and "2 problems" in err and "nothing does not exist" in err
    assert "feature_extractor.weights: models/imagenet_l2_3_0.pt not found" in err
    # hub id, offline, no cache (lambda_sfsl=0: no extractor file needed)
    code = run_cli([*fast, "model=sd15", "lambda_sfsl=0", f"hydra.run.dir={tmp_path}/run"])
    err = capsys.readouterr().err
    assert code == 2 and "stable-diffusion-v1-5/stable-diffusion-v1-5" in err and "model.path" in err
    assert "Traceback" not in err


def test_lambda_zero_run_never_builds_the_extractor(tmp_path, monkeypatch):
    import spurgen.models.extractors as ex

    def boom(**kw):
        raise AssertionError("extractor built with lambda_sfsl=0")

    monkeypatch.setattr(ex, "build_tiny_extractor", boom)
    assert run_cli([*TINY, *FAST, "lambda_sfsl=0", f"hydra.run.dir={tmp_path}/run"]) == 0
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["final_losses"]["train/loss_sfsl"] == 0.0
