"""A preset composes to what it says: build what each model and experiment preset composes (its SD parts, its
feature extractor, its classifiers) and assert on the built objects, not on config paths.

Real loading code runs on files the tests write: a tiny diffusers folder stands in for SD 1.5 weights and a
random ResNet-50 saved in the MadryLab layout stands in for imagenet_l2_3_0.pt.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from spurgen.build import build
from spurgen.config import CONF_DIR, asset_path, register_configs, register_resolvers
from spurgen.errors import ConfigError
from spurgen.validation import validate

from .conftest import REPO
from .helpers import TINY

register_configs()
register_resolvers()
MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
REAL = {"sd15", "sd21", "sd21_base", "local"}
MINI = {"mini"}  # trained weights shipped in spurgen/assets/mini (docs/mini_world.md)


def load(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    """A complete diffusers StableDiffusionPipeline folder (tiny weights) written by the test."""
    from spurgen.models.tiny import build_tiny_sd
    from spurgen.pipeline import make_pipeline

    parts = build_tiny_sd()
    folder = tmp_path_factory.mktemp("sd") / "pipeline"
    pipe = make_pipeline(parts.unet, parts.text_encoder, parts.tokenizer, parts.vae, parts.sample_scheduler)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def madry_file(tmp_path_factory) -> Path:
    """A ResNet-50 state dict in the MadryLab `robustness` layout (module.model.* keys), random weights."""
    import torchvision

    torch.manual_seed(0)
    sd = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path_factory.mktemp("madry") / "imagenet_l2_3_0.pt"
    torch.save({"model": {f"module.model.{k}": v for k, v in sd.items()}, "epoch": 90}, path)
    return path


def real_overrides(name: str, sd_folder: Path, madry_file: Path) -> list[str]:
    return [f"model.path={sd_folder}", f"feature_extractor.weights={madry_file}"]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_preset_builds_its_parts(name, sd_folder, madry_file):
    overrides = [f"model={name}"] + (real_overrides(name, sd_folder, madry_file) if name in REAL else [])
    parts = build(load(*overrides).model)
    assert parts.unet.config.in_channels == parts.vae.config.latent_channels
    assert parts.text_encoder.config.hidden_size == parts.unet.config.cross_attention_dim
    if name in REAL:  # read from the folder: the real loading code, on a file the test wrote
        assert not parts.is_tiny_random and parts.model_id == str(sd_folder)
        assert type(parts.sample_scheduler).__name__ == "DDIMScheduler"  # what the folder ships
        assert parts.marks == {} and parts.banner is None
    elif name in MINI:  # the shipped, trained mini pipeline folder, marked in every metadata file
        assert not parts.is_tiny_random and parts.resolution == 64 and len(parts.tokenizer) < 1000
        assert Path(parts.model_id) == Path(asset_path("mini")) and Path(parts.model_id).parts[-2:] == (
            "assets",
            "mini",
        )
        assert parts.marks["model_is_mini"] is True and parts.marks["mini_corpus"]["train_photos"] > 0
        assert "MINI WORLD" in parts.banner
    else:
        assert parts.is_tiny_random and parts.model_id.startswith(f"{name.replace('tiny', 'tiny')}-random:")


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_every_model_preset_builds_its_extractor(name, sd_folder, madry_file):
    """Real generators train through the robust ResNet-50; random ones through a random extractor."""
    overrides = [f"model={name}"] + (real_overrides(name, sd_folder, madry_file) if name in REAL else [])
    extractor = build(load(*overrides).feature_extractor)
    if name in REAL:
        assert extractor.name == "robust_resnet50_l2_eps3" and not extractor.is_random
        assert type(extractor.model).__name__ == "ResNet" and extractor.normalizes_inside is False
    elif name in MINI:  # real with real: a trained ImageNet classifier's features
        assert extractor.name.startswith("efficientnet_lite") and not extractor.is_random
        assert extractor.identity()["weights_sha256"]
    else:
        assert extractor.is_random


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_builds_what_it_says(name, sd_folder, madry_file):
    cfg = load(f"experiment={name}")
    mini = bool(cfg.model.get("marks", {}).get("model_is_mini"))
    real = cfg.model.get("path") is not None and not mini
    if real:
        cfg = load(f"experiment={name}", *real_overrides(name, sd_folder, madry_file))
    validate(cfg)
    parts = build(cfg.model)
    # a classifier whose file a make target writes (made_by) and that has not shipped yet: composed, not built
    # (tests/test_robust_lite.py checks the refusal)
    unmade = {
        n for n, c in cfg.eval.classifiers.items() if c.get("made_by") and not Path(c.weights).is_file()
    }
    nodes = {n: c for n, c in cfg.eval.classifiers.items() if n not in unmade}
    classifiers = {n: build(node) for n, node in nodes.items()} if not real else {}
    assert parts.is_tiny_random is (not real and not mini)
    if mini:  # the shipped mini weights, Lite0 as the extractor, the three real Lite classifiers (and others)
        assert parts.marks["model_is_mini"] and cfg.target.name == "nematode"
        assert build(cfg.feature_extractor).name == "efficientnet_lite0"
        lites = [f"efficientnet_lite{v}" for v in range(3)]
        robust = ["efficientnet_lite0_robust"] if name == "mini_robust" else []
        assert sorted([*classifiers, *unmade]) == sorted([*lites, *robust])
        assert not any(c.is_random for c in classifiers.values())
        return
    if real:  # SD 1.5 with Spurious ImageNet's extractor, and the real classifier set
        assert cfg.feature_extractor._target_.endswith("load_madry")
        assert build(cfg.feature_extractor).name == "robust_resnet50_l2_eps3"
        assert "robust_resnet50_l2_eps3" in cfg.eval.classifiers and "resnet50" in cfg.eval.classifiers
    else:
        assert classifiers and all(c.is_random for c in classifiers.values())


def test_one_part_swaps_alone(monkeypatch):
    """model/vae=... changes the VAE and nothing else: every other part keeps its weights. The VAE swapped in
    is the benchmarks' (experiments/conf, on the search path through SPURGEN_CONFIG_PATH)."""
    from spurgen.cli.searchpath import register_search_path

    register_search_path()
    monkeypatch.setenv("SPURGEN_CONFIG_PATH", str(REPO / "experiments" / "conf"))
    base = build(load(*TINY).model)
    parts = build(load(*TINY, "model/vae=proportional", "model.vae.resolution=32").model)
    assert (
        type(parts.vae.decoder.up_blocks).__name__ == "ModuleList" and len(parts.vae.decoder.up_blocks) == 4
    )
    assert len(base.vae.decoder.up_blocks) == 2
    for a, b in zip(base.unet.parameters(), parts.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    assert parts.model_id != base.model_id  # a different model: a different prior-image cache


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["model.vae.latent_channels=8"], ("model.vae", "model.unet")),
        (["model.text_encoder.hidden=64"], ("model.text_encoder", "model.unet")),
        (["model.text_encoder.max_length=16"], ("model.tokenizer", "model.text_encoder")),
        (
            ["model.sample_scheduler.prediction_type=v_prediction"],
            ("model.sample_scheduler", "noise_scheduler"),
        ),
    ],
)
def test_parts_that_do_not_fit_fail_naming_both_keys(overrides, keys):
    with pytest.raises(ConfigError) as err:
        build(load(*TINY, *overrides).model)
    assert all(k in str(err.value) for k in keys), str(err.value)


def test_callbacks_and_logger_come_from_their_groups(tmp_path):
    from spurgen.checkpointing import GracefulInterrupt
    from spurgen.loggers import CsvLogger, WandbLogger

    cfg = load(f"run_dir={tmp_path}", "logger=wandb", "~callbacks.samples")
    built = [build(node) for node in cfg.callbacks.values()]
    assert {type(c).__name__ for c in built} == {"ModelCheckpoint", "StepProgressBar", "GracefulInterrupt"}
    assert any(isinstance(c, GracefulInterrupt) and c.run_dir == tmp_path for c in built)
    assert isinstance(build(cfg.logger), WandbLogger)
    assert isinstance(build(load().logger), CsvLogger)


def test_real_generator_refuses_a_random_extractor_unless_meant(sd_folder):
    from spurgen.errors import SpurgenError
    from spurgen.stages.train import build_extractor, extractor_identity

    cfg = validate(load("model=sd15", f"model.path={sd_folder}", "feature_extractor=tiny"))
    with pytest.raises(SpurgenError, match=r"train\.allow_random_extractor=true") as err:
        build_extractor(cfg)
    assert "feature_extractor=robust_resnet50_madry" in str(err.value)
    cfg = validate(
        load(
            "model=sd15",
            f"model.path={sd_folder}",
            "feature_extractor=tiny",
            "train.allow_random_extractor=true",
        )
    )
    ident = extractor_identity(cfg, build_extractor(cfg))
    assert ident["name"] == "tiny_cnn" and ident["is_random"] and ident["used"]
    # lambda_sfsl = 0 builds no extractor at all, and records only the configured name
    cfg = validate(load("model=sd15", f"model.path={sd_folder}", "lambda_sfsl=0"))
    assert build_extractor(cfg) is None
    assert extractor_identity(cfg, None) == {"name": "robust_resnet50_l2_eps3", "used": False}


def test_extractor_identity_hashes_its_weights_file(madry_file):
    import hashlib

    cfg = load("model=sd15", f"feature_extractor.weights={madry_file}")
    ident = build(cfg.feature_extractor).identity()
    assert ident["weights_sha256"] == hashlib.sha256(madry_file.read_bytes()).hexdigest()
    assert ident["arch"] == "torchvision:resnet50" and ident["layer"] == "pool" and not ident["is_random"]


METHODS = sorted(p.stem for p in (Path(CONF_DIR) / "method").glob("*.yaml"))
# method -> (lambda_sfsl, lambda_prior, what fine-tuning trains (None: none), L_SFSL allowed, guidance settings)
METHOD_PRESETS = {
    "dreambooth": (0.0, 1.0, "FullTuning", False, None),
    "sfsl": (0.1, 1.0, "FullTuning", True, None),
    "guidance": (0.0, 1.0, None, False, {"strength": 1.0, "last_k": 10, "schedule": "constant"}),
    "sfsl_guidance": (0.1, 1.0, "FullTuning", True, {"strength": 1.0, "last_k": 10, "schedule": "constant"}),
    "textual_inversion": (0.0, 0.0, "TextualInversion", True, None),
}


def test_every_method_has_a_preset_test():
    assert sorted(METHOD_PRESETS) == METHODS


@pytest.mark.parametrize("name", METHODS)
def test_every_method_builds_what_it_says(name):
    """Each method's loss weights, whether and what it fine-tunes, and its guidance, from the built objects;
    the rest of the run is the default's (experiment=tiny here)."""
    lam, prior, tuning, sfsl_loss, guidance = METHOD_PRESETS[name]
    cfg = validate(load(*TINY, f"method={name}"))
    method = build(cfg.method)
    assert method.name == name and cfg.loss.lambda_sfsl == cfg.lambda_sfsl == lam
    assert cfg.loss.lambda_prior == prior and method.sfsl_loss is sfsl_loss
    assert (type(method.tuning).__name__ if method.fine_tunes else None) == tuning
    assert (method.guidance.describe() if method.guidance else None) == guidance
    default = load(*TINY)
    if guidance and not method.fine_tunes:  # nothing learnt the identifier: the class prompt
        assert cfg.data.instance_prompt == cfg.data.class_prompt
    elif tuning == "TextualInversion":  # a new token, trained alone; the prompt's shape is the default's
        assert (
            method.tuning.token == cfg.data.identifier == "<spurgen-v>"
            and method.tuning.initializer == "flower"
        )
        assert cfg.data.instance_prompt == default.data.instance_prompt.replace("sks", "<spurgen-v>")
    else:
        assert cfg.data.instance_prompt == default.data.instance_prompt
    same = ("model", "train", "trainer", "module", "generate", "feature_extractor", "eval")
    assert [k for k in same if cfg[k] != default[k]] == []
    assert cfg.callbacks.samples.prompt == cfg.data.instance_prompt  # validation samples: the method's prompt
    assert cfg.loss.sfsl == default.loss.sfsl  # guidance and the training term share one L_SFSL node
