"""Config composition and validation: every class and experiment composes; bad values fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from spurgen.config import CONF_DIR, asset_path, register_configs, register_resolvers
from spurgen.errors import ConfigError
from spurgen.validation import validate

from .conftest import run_cli
from .helpers import TINY

register_configs()
register_resolvers()
CLASSES = sorted(p.stem for p in (Path(CONF_DIR) / "class").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))


def load(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_default_composes_to_mini_world():
    """No overrides: the mini world (its weights in spurgen/assets/mini, EfficientNet-Lite), composed, not built."""
    cfg = validate(load())
    path = Path(cfg.model.path)
    assert path == Path(asset_path("mini")) and path.parts[-3:] == ("spurgen", "assets", "mini")
    assert cfg.model.marks.model_is_mini and not cfg.model.get("is_tiny_random", False)
    assert cfg.target.index == 111 and cfg.target.name == "nematode" and cfg.target.concept == "texture"
    assert cfg.feature_extractor._target_ == "spurgen.models.lite.load_efficientnet_lite"
    assert cfg.feature_extractor.variant == 0
    assert sorted(cfg.eval.classifiers) == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert cfg.loss.lambda_sfsl == cfg.lambda_sfsl == 0.1
    assert cfg.loss.lambda_prior == 1.0 and cfg.loss.sfsl.t_max == 500


def test_tiny_composes_to_tiny_random_model():
    cfg = validate(load(*TINY))
    assert cfg.model.is_tiny_random and cfg.model.unet._target_.endswith("build_tiny_unet")
    assert cfg.feature_extractor._target_.endswith("build_tiny_extractor")
    assert cfg.target.index == 94 and cfg.target.concept == "flower"


@pytest.mark.parametrize("name", [c for c in CLASSES if c != "imagenet"])
def test_every_class_composes(name):
    cfg = validate(load(f"class={name}"))
    assert 0 <= cfg.target.index < 1000 and cfg.target.concept and cfg.target.synonyms
    assert cfg.data.instance_prompt == f"a photo of a sks {cfg.target.concept}"


def test_known_class_indices():
    want = {"hummingbird": 94, "sulphur_butterfly": 325, "freight_car": 565, "koala": 105, "hard_disc": 592}
    for name, index in want.items():
        assert load(f"class={name}").target.index == index


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    cfg = load(f"experiment={name}")
    if cfg.model.get("is_tiny_random"):
        validate(cfg)
    assert OmegaConf.to_container(cfg, resolve=False)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_composes(name):
    overrides = [f"model={name}"] + (["model.path=/models/x"] if name == "local" else [])
    cfg = load(*overrides)
    assert cfg.model._target_


@pytest.mark.parametrize("name", MODELS)
def test_model_presets_describe_a_model_only(name):
    """A model preset sets its parts, marks and banner and picks its extractor and classifiers; the run settings
    (data counts, learning rates, steps, generation) are the experiment's, so they are the same whatever model
    is chosen without one."""
    preset = OmegaConf.load(Path(CONF_DIR) / "model" / f"{name}.yaml")
    assert set(preset) <= {"defaults", "model"}, sorted(preset)
    plain = ["~experiment", "class=hummingbird"]
    path = ["model.path=/models/x"] if name == "local" else []
    cfg, tiny = load(*plain, f"model={name}", *path), load(*plain, "model=tiny")
    for key in ("data", "train", "trainer", "generate", "loss", "module", "callbacks", "stages"):
        assert cfg[key] == tiny[key], key
    assert cfg.feature_extractor._target_ and cfg.eval.classifiers


def test_no_experiment_composes_to_the_general_defaults():
    """`~experiment` leaves the groups' own defaults: what an experiment overrides is visible against them."""
    cfg = load("~experiment", "model=tiny", "class=hummingbird")
    train = OmegaConf.load(Path(CONF_DIR) / "train" / "default.yaml")
    assert cfg.train == train and cfg.trainer.max_steps == 1000
    mini = OmegaConf.load(Path(CONF_DIR) / "experiment" / "mini.yaml")
    assert load().trainer.max_steps == mini.trainer.max_steps == 200


@pytest.mark.parametrize("group", ["data", "train", "loss"])
def test_each_default_is_written_once(group):
    """A group with a YAML file holds the values; its schema dataclass declares the types only (MISSING), so no
    default is written twice. Every schema key has its value in the YAML file."""
    from spurgen.config import SpurgenConfig

    schema = OmegaConf.structured(SpurgenConfig)[group]
    yaml_node = OmegaConf.load(Path(CONF_DIR) / group / "default.yaml")
    yaml_node.pop("defaults", None)

    def leaves(node, prefix=""):
        for key in node:
            child = node._get_node(key)
            if OmegaConf.is_dict(child) and not child._is_missing():
                yield from leaves(child, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", child

    written_twice = [k for k, n in leaves(schema) if not n._is_missing()]
    assert not written_twice, f"{group}: defaults in both spurgen/config.py and conf/{group}/default.yaml"
    raw = OmegaConf.to_container(yaml_node, resolve=False)

    def present(key: str) -> bool:
        node = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    missing = [k for k, _ in leaves(schema) if not present(k)]
    assert not missing, f"conf/{group}/default.yaml lacks {missing}"


def test_real_model_presets_are_dreambooth_like():
    cfg = load("experiment=sd15_sfsl")
    assert cfg.model.path == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert cfg.train.lr_unet == pytest.approx(5e-6)
    assert 800 <= cfg.trainer.max_steps <= 1200
    assert 100 <= cfg.data.num_class_images <= 200
    assert load("model=sd21").model.path == "stabilityai/stable-diffusion-2-1"
    assert load("model=sd21_base").model.path == "stabilityai/stable-diffusion-2-1-base"


def test_imagenet_class_takes_name_from_label_list():
    cfg = validate(load("class=imagenet", "target.index=281", "target.concept=sofa"))
    assert cfg.target.name == "tabby" and "tabby cat" in cfg.target.synonyms


def test_cli_contract_keys_exist():
    cfg = load(
        "lambda_sfsl=1",
        "seed=3",
        "loss.lambda_prior=0.5",
        "loss.sfsl.distance=mse",
        "loss.sfsl.reference=nearest",
        "feature_extractor.layer=body",
        "loss.sfsl.t_max=300",
        "loss.sfsl.decode_size=224",
        "loss.sfsl.every_n_steps=2",
        "data.reference_dir=/x",
        "data.num_references=3",
        "data.num_class_images=7",
        "data.resolution=64",
        "train.lr_unet=1e-5",
        "train.lr_text_encoder=1e-6",
        "train.checkpoint_every_n_steps=5",
        "train.keep_last_n=3",
        "trainer.max_steps=20",
        "trainer.precision=bf16-mixed",
        "logger=wandb",
    )
    assert cfg.loss.lambda_sfsl == 1.0 and cfg.loss.sfsl.decode_size == 224
    assert cfg.trainer.precision == "bf16-mixed" and cfg.logger.kind == "wandb"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["lambda_sfsl=-1"], "lambda_sfsl"),
        (["loss.lambda_prior=-0.5"], "loss.lambda_prior"),
        (["loss.sfsl.t_max=0"], "loss.sfsl.t_max"),
        (["data.num_references=0"], "data.num_references"),
        (["class=imagenet", "target.index=5"], "target.concept"),
        (["class=imagenet", "target.index=1000", "target.concept=x"], "target.index"),
        (["class=imagenet"], "target.index"),
        (["trainer.max_stepz=3"], "trainer.max_stepz"),
        (["trainer.max_steps=-5"], "trainer.max_steps"),
        (
            ["model=local", "lambda_sfsl=0"],
            "model.path",
        ),  # was: SD 1.5's hub id, silently  # Lightning's own stack trace before
        (["trainer.max_steps=2.5"], "trainer.max_steps"),
        (["trainer.max_steps=-1"], "trainer.max_steps"),  # no limit and no max_epochs: never ends
        (["data.identifier=two words"], "data.identifier"),
        (["train.on_nonfinite=ignore"], "train.on_nonfinite"),
        (["train.lr_unet=-1e-5"], "train.lr_unet"),
        (["trainer._target_=lightning.Fabric"], "trainer._target_"),
    ],
)
def test_invalid_values_name_the_key(overrides, key):
    """Each bad value is a ConfigError naming its key (the CLI prints it as one line and exits 2)."""
    with pytest.raises(ConfigError) as err:
        validate(load(*overrides))
    assert err.value.key == key


def test_cli_errors_exit_nonzero_without_traceback(capsys, tmp_path):
    cases = [
        (["lambda_sfls=0.1"], "lambda_sfls"),  # misspelled key: Hydra names it
        (["loss.sfsl.distnce=cosine"], "distnce"),
        (["lambda_sfsl=abc"], "lambda_sfsl"),  # non-numeric
        (["loss.sfsl.distance=l1"], "distance"),
        (["class=hummingbrid"], "hummingbird"),  # unknown class lists the available ones
        (["lambda_sfsl=-1"], "lambda_sfsl"),
        (["class=imagenet", "target.index=5"], "target.concept"),
    ]
    for argv, needle in cases:
        code = run_cli([*argv, f"hydra.run.dir={tmp_path}/run"])
        err = capsys.readouterr().err
        assert code != 0, argv
        assert needle in err, (argv, err)
        assert "Traceback" not in err, err
    assert not (tmp_path / "run" / "pipeline").exists()
