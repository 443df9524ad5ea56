"""The robust mini extractor (docs/mini_world.md, "Robust extractor"): PGD is correct on tiny models, the
fine-tuning is seeded and replays, the command writes a file that matches its manifest and replays its first
losses, the preset builds the robust extractor (and refuses in one line naming `make mini-robust` when the file
is missing), and experiment=mini_robust composes to its sweep, with each job's extractor."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from experiments.mini_world import robust_gate, robust_lite
from experiments.mini_world.pgd import pgd, project
from spurgen.config import CONF_DIR
from spurgen.errors import SpurgenError
from spurgen.models.extractors import build_tiny_extractor

SHIPPED = robust_lite.OUT / robust_lite.WEIGHTS


def load(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


# --- PGD ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_reaches_the_linear_optimum_inside_the_ball(norm):
    """For loss w·x the best delta in the ball is eps·w/||w||_2 (L2) or eps·sign(w) (L∞): the gain is
    eps·||w||_2 or eps·||w||_1. The box is not binding at x = 0.5 with this eps."""
    torch.manual_seed(0)
    w = torch.randn(1, 3, 8, 8)
    x = torch.full((2, 3, 8, 8), 0.5)
    eps = 0.3 if norm == "l2" else 0.02
    delta = pgd(lambda z: (z * w).flatten(1).sum(1), x, eps, steps=20, norm=norm)
    gain = (delta * w).flatten(1).sum(1)
    best = eps * (w.norm() if norm == "l2" else w.abs().sum())
    assert torch.allclose(gain, best.expand(2), rtol=1e-3)
    size = delta.flatten(1).norm(dim=1) if norm == "l2" else delta.flatten(1).abs().amax(1)
    assert (size <= eps * (1 + 1e-5)).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_raises_a_tiny_cnns_loss_and_stays_in_the_ball_and_the_box(norm):
    model = build_tiny_extractor(input_size=16)
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = model.logits(x).argmax(1)

    def loss(z):
        return nn.functional.cross_entropy(model.logits(z), y, reduction="none")

    eps = 0.5 if norm == "l2" else 4 / 255
    delta = pgd(loss, x, eps, steps=5, norm=norm)
    with torch.no_grad():
        assert (loss(x + delta) > loss(x)).all()
    size = delta.flatten(1).norm(dim=1) if norm == "l2" else delta.flatten(1).abs().amax(1)
    assert (size <= eps * (1 + 1e-5)).all()
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    assert torch.equal(pgd(loss, x, 0.0, steps=5, norm=norm), torch.zeros_like(x))


def test_project_scales_onto_the_l2_ball_and_clamps_to_the_box():
    x = torch.full((1, 3, 4, 4), 0.5)
    big = torch.ones_like(x)
    assert torch.allclose(project(big, x, 0.5, "l2").norm(), torch.tensor(0.5))
    clamped = project(torch.full_like(x, 0.1), torch.full_like(x, 0.95), 1.0, "l2")  # inside the ball, past 1
    assert torch.allclose(clamped, torch.full_like(x, 0.05))
    with pytest.raises(ValueError):
        project(big, x, 0.5, "l1")


# --- the fine-tuning --------------------------------------------------------------------------------------


def tiny_pair():
    """A tiny frozen 'original' and a trainable copy of its network (same init), for fast training tests."""
    teacher = build_tiny_extractor(input_size=32)
    student = build_tiny_extractor(input_size=32).model.requires_grad_(True).eval()
    return teacher, student


def tiny_cfg(**kw) -> robust_lite.RobustConfig:
    base = {"steps": 4, "batch": 2, "pgd_steps": 2, "log_every": 2, "photos": ("brick", "gravel"), "lr": 1e-3}
    return robust_lite.RobustConfig(**{**base, **kw})


def test_training_is_seeded_and_replays_exactly_at_one_thread():
    from spurgen.torch_threads import torch_threads

    with torch_threads(1):
        a = robust_lite.train(tiny_cfg(), *tiny_pair())[1]
        b = robust_lite.train(tiny_cfg(), *tiny_pair())[1]
        c = robust_lite.train(tiny_cfg(seed=1), *tiny_pair())[1]
    assert a["steps"] == 4 and len(a["first_losses"]) == robust_lite.FIRST
    assert a["first_losses"] == b["first_losses"] and a["curve"][-1]["loss"] == b["curve"][-1]["loss"]
    assert a["first_losses"] != c["first_losses"]
    assert [r["step"] for r in a["curve"]] == [1, 2, 4]
    assert {"loss", "clean", "robust"} <= set(a["curve"][0])


def test_the_first_step_has_no_clean_loss_and_a_positive_robust_one():
    """S starts as T: the clean KL is 0 on the first step; the attacked one is not."""
    teacher, student = tiny_pair()
    cfg = tiny_cfg(eps=1.0)
    x = robust_lite.batch(cfg, 0)
    parts = robust_lite.step_loss(cfg, teacher, student, x, torch.Generator().manual_seed(0))
    assert float(parts["clean"].detach()) < 1e-6 < float(parts["robust"].detach())
    assert torch.isclose(parts["loss"], parts["clean"] + cfg.beta * parts["robust"])


def test_training_never_sees_the_measured_photos():
    assert not set(robust_lite.train_photos()) & set(robust_gate.HELDOUT_PHOTOS)
    assert {"brick", "aqua"} <= set(robust_lite.train_photos())  # generator's and autoencoder's photos


def test_the_gate_rule():
    def result(clean, robust, standard):
        return {"models": {"r": {"rates": {"clean": clean, "pgd_0.25": robust}},
                           "s": {"rates": {"clean": 1.0, "pgd_0.25": standard}}}}  # fmt: skip

    assert robust_gate.gate(result(0.8, 0.3, 0.1), "r", "s", 0.25)["passed"]
    assert not robust_gate.gate(result(0.6, 0.3, 0.1), "r", "s", 0.25)["passed"]  # clean too low
    assert not robust_gate.gate(result(0.8, 0.2, 0.1), "r", "s", 0.25)["passed"]  # under 3x
    assert not robust_gate.gate(result(0.8, 0.0, 0.0), "r", "s", 0.25)["passed"]  # nothing survives


# --- the preset -------------------------------------------------------------------------------------------


def fake_robust_file(path: Path) -> Path:
    """A random-init Lite0 state dict in fp16 with the metadata robust_lite.save writes (no package needed)."""
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    cfg = robust_lite.RobustConfig(photos=())
    robust_lite.save(model, path, cfg, steps=7)
    return path


def test_preset_builds_the_robust_extractor_with_its_identity(tmp_path):
    from spurgen.build import build
    from spurgen.files import sha256_file

    cfg = load("feature_extractor=efficientnet_lite0_robust")
    node = cfg.feature_extractor
    assert node._target_ == "spurgen.models.lite.load_robust_lite"
    assert node.weights == str(SHIPPED) and node.made_by == "make mini-robust"
    path = fake_robust_file(tmp_path / "r.safetensors")
    extractor = build(node, weights=str(path))
    ident = extractor.identity()
    assert ident["name"] == "efficientnet_lite0_robust" and ident["weights_sha256"] == sha256_file(path)
    assert ident["robustness"]["eps"] == "0.25" and ident["robustness"]["norm"] == "l2"
    assert ident["robustness"]["steps"] == "7"
    assert extractor.input_size == 224 and extractor.features(torch.rand(1, 3, 64, 64)).shape == (1, 1280)
    assert "robustness" not in build_tiny_extractor().identity()  # other extractors' identity is unchanged


def test_preset_refuses_a_missing_file_in_one_line_naming_the_command(tmp_path, capsys):
    from spurgen.build import build
    from spurgen.validation import check_extractor_file

    from .conftest import run_cli

    missing = tmp_path / "absent.safetensors"
    cfg = load("feature_extractor=efficientnet_lite0_robust", f"feature_extractor.weights={missing}")
    with pytest.raises(SpurgenError, match="make it with `make mini-robust`"):
        check_extractor_file(cfg)
    with pytest.raises(SpurgenError, match="make mini-robust"):
        build(cfg.feature_extractor)
    code = run_cli(["feature_extractor=efficientnet_lite0_robust", f"feature_extractor.weights={missing}",
                    f"hydra.run.dir={tmp_path}/run"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "make mini-robust" in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if "make mini-robust" in line]) == 1
    assert not (tmp_path / "run" / "pipeline").exists()


# --- experiment=mini_robust -------------------------------------------------------------------------------


def test_mini_robust_composes_to_its_sweep_and_each_jobs_extractor():
    cfg = load("experiment=mini_robust")
    params = {k: v.split(",") for k, v in cfg.hydra.sweeper.params.items()}
    assert params == {
        "feature_extractor": ["efficientnet_lite", "efficientnet_lite0_robust"],
        "class": ["nematode", "nematode_retina", "matchstick"],
        "lambda_sfsl": ["0", "0.1", "1"],
        "seed": ["0", "1", "2"],
    }
    assert len(list(itertools.product(*params.values()))) == 54
    assert "mini_robust" in cfg.hydra.sweep.dir
    targets = {}
    for extractor in params["feature_extractor"]:
        job = load(
            "experiment=mini_robust", f"feature_extractor={extractor}", "class=matchstick", "lambda_sfsl=1"
        )
        targets[extractor] = job.feature_extractor._target_
        assert set(job.eval.classifiers) == {
            "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "efficientnet_lite0_robust"
        }  # fmt: skip
        assert job.eval.classifiers.efficientnet_lite0_robust.weights == job.feature_extractor.get(
            "weights", str(SHIPPED)
        )
        pairs = load(
            "experiment=mini_pairs", "class=matchstick", "lambda_sfsl=1"
        )  # every other setting as there
        assert job.trainer == pairs.trainer and job.train == pairs.train and job.data == pairs.data
        assert job.threads == 1 and job.target.file == "matchstick"
    assert targets == {
        "efficientnet_lite": "spurgen.models.lite.load_efficientnet_lite",
        "efficientnet_lite0_robust": "spurgen.models.lite.load_robust_lite",
    }


def test_a_missing_robust_classifier_stops_the_sweep_before_training(tmp_path):
    """The standard arm evaluates with the robust Lite0 too: its file is checked before any job trains."""
    from spurgen.validation import check_classifier_files

    cfg = load("experiment=mini_robust", "lambda_sfsl=0",
               f"eval.classifiers.efficientnet_lite0_robust.weights={tmp_path / 'absent.safetensors'}")  # fmt: skip
    with pytest.raises(
        SpurgenError, match="eval.classifiers.efficientnet_lite0_robust.weights.*make mini-robust"
    ):
        check_classifier_files(cfg)


# --- the command, end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_command_writes_a_file_matching_its_manifest_that_replays(tmp_path):
    """Two steps of the real command on Lite0 (batch 2, one PGD step): the file's sha256 and size are in the
    manifest, the loader reads it with its eps, and the first losses replay bit for bit at one thread."""
    from spurgen.files import sha256_file
    from spurgen.models.lite import load_robust_lite

    argv = ["--steps", "2", "--batch", "2", "--pgd-steps", "1", "--log-every", "1", "--gate-views", "0",
            "--out", str(tmp_path)]  # fmt: skip
    assert robust_lite.main(argv) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    path = tmp_path / robust_lite.WEIGHTS
    assert manifest["files"] == {robust_lite.WEIGHTS: sha256_file(path)}
    assert manifest["size_bytes"] == path.stat().st_size < 25e6
    assert manifest["command"].startswith(robust_lite.PROG) and manifest["threads"] == 1
    assert manifest["replay_command"].endswith("--steps 2 --minutes 100000")
    assert manifest["torch"] == torch.__version__ and manifest["config"]["seed"] == 0
    assert [r["step"] for r in manifest["curve"]] == [1, 2]
    assert robust_lite.replay(manifest, 2) == manifest["first_losses"][:2]
    assert load_robust_lite(str(path)).identity()["robustness"]["eps"] == str(manifest["config"]["eps"])


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no robust Lite0 ships yet (make mini-robust)")
def test_preset_composes_to_the_shipped_robust_extractor_with_its_identity():
    """feature_extractor=efficientnet_lite0_robust builds the shipped file's model: its sha256 is the manifest's,
    its robustness the manifest's norm, eps and steps; it is not the standard Lite0."""
    from hydra.utils import instantiate

    from spurgen.models.lite import load_efficientnet_lite

    manifest = json.loads((robust_lite.OUT / robust_lite.MANIFEST).read_text())
    cfg = load("experiment=mini_robust", "feature_extractor=efficientnet_lite0_robust", "lambda_sfsl=0.1")
    robust = instantiate(cfg.feature_extractor)
    ident = robust.identity()
    assert ident["name"] == "efficientnet_lite0_robust" and ident["weights"] == str(SHIPPED)
    assert ident["weights_sha256"] == manifest["files"][robust_lite.WEIGHTS]
    assert ident["robustness"]["norm"] == manifest["config"]["norm"]
    assert float(ident["robustness"]["eps"]) == manifest["config"]["eps"]
    assert int(ident["robustness"]["steps"]) == manifest["steps"]
    x = robust_gate.heldout_crops(1)[0][:2]
    with torch.no_grad():
        assert not torch.allclose(robust.features(x), load_efficientnet_lite(0).features(x))


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED.is_file(), reason="no robust Lite0 ships yet (make mini-robust)")
def test_shipped_file_matches_its_manifest_and_replays():
    from spurgen.files import sha256_file

    manifest = json.loads((robust_lite.OUT / robust_lite.MANIFEST).read_text())
    assert manifest["files"][robust_lite.WEIGHTS] == sha256_file(SHIPPED)
    assert manifest["size_bytes"] == SHIPPED.stat().st_size <= 25e6
    assert manifest["robustness"]["gate"]["passed"]  # only a file that passed the gate ships
    # on the run's thread count; bit for bit on the machine that made it, to float rounding on another CPU
    assert robust_lite.replay(manifest, 2) == pytest.approx(manifest["first_losses"][:2], rel=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED.is_file(), reason="no robust Lite0 ships yet (make mini-robust)")
def test_shipped_gate_numbers_replay_on_the_first_chunk():
    """The manifest's per-image clean and PGD hits at the gate's eps replay on the first CHUNK held-out crops
    (at most one image of the chunk may flip on another CPU, where an attack ends on a decision boundary)."""
    from spurgen.models.lite import load_efficientnet_lite, load_robust_lite
    from spurgen.torch_threads import torch_threads

    manifest = json.loads((robust_lite.OUT / robust_lite.MANIFEST).read_text())
    rob = manifest["robustness"]
    eps, n = rob["gate"]["eps"], robust_gate.CHUNK
    x = robust_gate.heldout_crops(rob["views_per_photo"])[0][:n]
    with torch_threads(manifest["threads"]):
        standard = load_efficientnet_lite(0)
        models = {"robust": load_robust_lite(str(SHIPPED)), "standard": standard}
        labels = robust_gate.top1(standard, x)
        for name, model in models.items():
            recorded = rob["models"][name]["hits"]
            assert (robust_gate.top1(model, x) == labels).tolist() == recorded["clean"][:n]
            hits = robust_gate.attacked_agreement(model, x, labels, eps, rob["pgd_steps"]).tolist()
            assert sum(a != b for a, b in zip(hits, recorded[f"pgd_{eps:g}"][:n], strict=True)) <= 1, name
