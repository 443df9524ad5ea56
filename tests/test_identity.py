"""The run identity (spurgen/identity.py): which runs the report may average as seeds of one experiment."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from spurgen.identity import class_key, flat_config, identities, run_identity

from .helpers import TINY


@pytest.fixture(scope="module")
def compose_cfg():
    from hydra import compose, initialize_config_dir

    from spurgen.config import CONF_DIR, register_configs, register_resolvers

    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        # the tiny model: its keys (model.unet.init_seed, feature_extractor.input_size) are what the tests vary
        yield lambda *overrides: compose("config", [*TINY, *overrides])


def test_identity_leaves_out_seed_lambda_target_paths_and_inert_keys(compose_cfg):
    base = identities(compose_cfg())
    same = [
        ["seed=3", "lambda_sfsl=0", "data.num_workers=2", "train.sample_every_n_steps=5", "logger=none"],
        ["generate.batch_size=1", "eval.device=cpu", "stages=[train]", "generate.baseline=true"],
        [
            "class=koala",
            "data.instance_prompt=a photo of a sks flower",
            "data.class_prompt=a photo of a flower",
        ],
    ]
    assert all(identities(compose_cfg(*o)) == base for o in same)
    other = {
        o: identities(compose_cfg(o))
        for o in (
            "feature_extractor.input_size=64",
            "loss.sfsl.t_max=300",
            "data.reference_seed=1",
            "trainer.precision=bf16-mixed",
            "model.unet.init_seed=1",
        )
    }
    assert all(i["run"] != base["run"] for i in other.values())
    assert other["loss.sfsl.t_max=300"]["baseline"] == base["baseline"]  # not the baseline's business
    assert other["loss.sfsl.t_max=300"]["reference"] == base["reference"]
    assert other["model.unet.init_seed=1"]["baseline"] != base["baseline"]  # another base model
    assert other["model.unet.init_seed=1"]["reference"] == base["reference"]


def test_class_file_tells_two_features_of_one_class_apart(compose_cfg):
    feeder = compose_cfg("class=hummingbird_feeder")
    assert class_key(feeder) == (94, "hummingbird_feeder", None)
    assert class_key(compose_cfg()) == (94, "hummingbird", None)
    from spurgen.config import CONF_DIR

    for path in (__import__("pathlib").Path(CONF_DIR) / "class").glob("*.yaml"):
        assert compose_cfg(f"class={path.stem}").target.file == path.stem, path


def test_a_saved_config_gives_the_identity_of_the_run(compose_cfg):
    live = compose_cfg("seed=2")
    saved = yaml.safe_load(OmegaConf.to_yaml(live))  # as .hydra/config.yaml: interpolations unresolved
    assert "${" in str(saved) and run_identity(saved) == identities(compose_cfg())["run"]


def test_saved_configs_resolve_what_they_can():
    """A saved .hydra/config.yaml holds interpolations, some of which need Hydra (`${hydra:...}`)."""
    saved = {
        "a": {"x": "${b}", "y": "${hydra:runtime.output_dir}", "z": "???"},
        "b": 3,
        "seed": 1,
        "model": {"init_seed": "${seed}", "n": 4},
        "eval": {},
    }
    flat = flat_config(saved)
    expected = {
        "a.x": 3,
        "a.y": "${hydra:runtime.output_dir}",
        "a.z": "???",
        "b": 3,
        "model.n": 4,
        "eval": {},
    }
    assert flat == expected
    assert run_identity(saved) == run_identity({**saved, "seed": 2, "run_dir": "/elsewhere"})
    assert run_identity(saved) != run_identity({**saved, "b": 4})
    # a value that only repeats the seed leaves with it; one set on its own is a setting
    assert run_identity({**saved, "model": {"init_seed": 7, "n": 4}}) != run_identity(saved)


def test_the_evaluate_stage_writes_metrics_json_once_with_the_identity(compose_cfg, tmp_path, monkeypatch):
    """The identity is in the result before eval/metrics.json is written, and the file is written once: no
    crash between two writes can leave a metrics.json without it."""
    import json
    from pathlib import Path

    from spurgen.stages import evaluate as stage
    from tests.test_evaluate import make_generated

    cfg = compose_cfg("eval=tiny", "logger=none", "eval.bootstrap_samples=20")
    run = tmp_path / "run"
    make_generated(run / "generated", n=2)
    (run / "run.json").write_text(json.dumps({"extractor": {"name": "x"}, "model_weights": "tiny-random:1"}))
    written: list[tuple[dict, int]] = []
    real_write = stage.write_json

    def spy(path, data):
        real_write(path, data)
        if Path(path).name == "metrics.json":
            written.append((json.loads(Path(path).read_text()), Path(path).stat().st_ino))

    monkeypatch.setattr(stage, "write_json", spy)
    result = stage.run_stage(cfg, run)
    (first, inode), *again = written
    assert again == [] and first["identity"] == identities(cfg) == result["identity"]
    assert first["class_file"] == "hummingbird" and first["model_weights"] == "tiny-random:1"
    path = run / "eval" / "metrics.json"
    assert path.stat().st_ino == inode and json.loads(path.read_text()) == first  # not rewritten since


def test_the_identity_of_a_run_on_shipped_assets_does_not_depend_on_where_spurgen_is_installed(
    compose_cfg, monkeypatch
):
    """The mini model's parts resolve to absolute paths under spurgen/assets (model.unet.path -> model.path ->
    ${spurgen_asset:mini}); the identity names them by the asset, so a fresh clone elsewhere, or an installed
    wheel, gives the same identity and its runs pool with the documented ones."""
    import spurgen.config

    cfg = compose_cfg("experiment=mini")
    flat = flat_config(cfg)
    assert flat["model.unet.path"] == flat["model.path"] == "${spurgen_asset:mini}"
    assert not any(isinstance(v, str) and spurgen.config.asset_path("") in v for v in flat.values())
    here = run_identity(cfg)
    cfg.model.path = spurgen.config.asset_path("mini")  # the resolved text in place of the interpolation
    assert run_identity(cfg) == here
    monkeypatch.setattr(
        spurgen.config, "asset_path", lambda name: f"/elsewhere/spurgen/assets/{name}".rstrip("/")
    )
    cfg.model.path = "/elsewhere/spurgen/assets/mini"  # the same asset in another install
    assert run_identity(cfg) == here
    cfg.model.path = "/elsewhere/my_model"  # not an asset: the path itself
    assert run_identity(cfg) != here
