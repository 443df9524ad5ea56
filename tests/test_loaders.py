"""Loaders for real classifiers / robust extractors, on fake checkpoints written in each format."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from spurgen.config import CONF_DIR
from spurgen.errors import MissingWeightsError, SpurgenError
from spurgen.models import loaders
from spurgen.models.extractors import IMAGENET_MEAN, IMAGENET_STD

from .helpers import TINY

REPO = Path(__file__).resolve().parents[1]


def _tiny_timm(arch: str = "test_efficientnet", seed: int = 0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False).eval()


def _normalise(x):
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_timm_safetensors_and_nested_state_dict(tmp_path):
    from safetensors.torch import save_file

    ref = _tiny_timm()
    x = torch.rand(2, 3, 40, 40)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(st))
    pt = tmp_path / "w.pt"
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, pt)
    for path in (st, pt):
        m = loaders.load_timm("test_efficientnet", str(path), name="eff", input_size=40)
        assert not m.normalizes_inside and m.name == "eff" and m.input_size == 40
        with torch.no_grad():
            assert torch.allclose(m.logits(x), ref(_normalise(x)), atol=1e-5)
        assert m.features(x).shape == (2, ref.num_features)
        assert not any(p.requires_grad for p in m.parameters())


def test_timm_missing_mismatched_and_unknown(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(MissingWeightsError, match=str(missing)):
        loaders.load_timm("test_efficientnet", str(missing))
    other = tmp_path / "byob.pt"
    torch.save(_tiny_timm("test_byobnet").state_dict(), other)
    with pytest.raises(SpurgenError, match="does not match"):
        loaders.load_timm("test_efficientnet", str(other))
    shapes = tmp_path / "shapes.pt"
    sd = _tiny_timm("test_efficientnet").state_dict()
    key = next(k for k, v in sd.items() if v.ndim == 4)
    sd[key] = torch.zeros(*[d + 1 for d in sd[key].shape])  # same keys, tensors that do not fit
    torch.save(sd, shapes)
    with pytest.raises(SpurgenError, match="does not match"):
        loaders.load_timm("test_efficientnet", str(shapes))
    with pytest.raises(SpurgenError, match="no model named"):
        loaders.load_timm("no_such_net_xyz", None)


def test_timm_pickled_file_needs_allow_pickle(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": _tiny_timm().state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(SpurgenError, match="allow_pickle"):
        loaders.load_timm("test_efficientnet", str(path))
    m = loaders.load_timm("test_efficientnet", str(path), allow_pickle=True)
    assert m.input_size == 160


def _madry_checkpoint(path: Path, with_model_prefix: bool = True, pickled: bool = False):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    sd = net.state_dict()
    state = {
        "module.normalizer.new_mean": torch.zeros(3, 1, 1),
        "module.attacker.normalize.new_std": torch.ones(3, 1, 1),
    }
    state.update({f"module.attacker.model.{k}": v for k, v in sd.items()})
    if with_model_prefix:
        state.update({f"module.model.{k}": v.clone() for k, v in sd.items()})
    ckpt = {"model": state, "epoch": 90}
    if pickled:
        ckpt["args"] = argparse.Namespace(eps=3.0, constraint="2")  # like robustness' files: needs pickle
    torch.save(ckpt, path)
    return net


def test_madry_key_prefixes():
    t = torch.zeros(1)
    both = {
        "model": {
            "module.normalizer.new_mean": t,
            "module.model.fc.bias": t,
            "module.attacker.model.fc.weight": t,
        }
    }
    assert list(loaders.madry_state_dict(both)) == ["fc.bias"]  # module.model.* preferred
    only_attacker = {"model": {"module.attacker.normalize.new_std": t, "module.attacker.model.fc.weight": t}}
    assert list(loaders.madry_state_dict(only_attacker)) == ["fc.weight"]
    with pytest.raises(SpurgenError, match="module.model."):
        loaders.madry_state_dict({"model": {"fc.weight": t}})


@pytest.mark.slow
def test_madry_loads_with_outside_normalisation(tmp_path):
    path = tmp_path / "imagenet_l2_3_0.pt"
    net = _madry_checkpoint(path, with_model_prefix=False)  # only module.attacker.model.*: the fallback
    m = loaders.load_madry(str(path), arch="resnet18", name="madry")
    assert not m.normalizes_inside and m.input_size == 224
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = net(
            _normalise(torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", antialias=True))
        )
        assert torch.allclose(m.logits(x), expected, atol=1e-4)
    assert m.features(x).shape == (2, 512)


def test_madry_pickle_only_behind_the_option(tmp_path):
    path = tmp_path / "imagenet_l2_3_0.pt"
    _madry_checkpoint(path, pickled=True)
    with pytest.raises(SpurgenError, match="allow_pickle=true"):
        loaders.load_madry(str(path), arch="resnet18")
    assert loaders.load_madry(str(path), arch="resnet18", allow_pickle=True).input_size == 224
    with pytest.raises(MissingWeightsError, match="imagenet_l2_3_0.pt"):
        loaders.load_madry(str(tmp_path / "missing" / "imagenet_l2_3_0.pt"))
    bad = tmp_path / "plain.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(SpurgenError, match="module.model."):
        loaders.load_madry(str(bad), arch="resnet18")


def test_robustbench_missing_offline_names_the_file(tmp_path):
    expected = tmp_path / "imagenet" / "Linf" / "Salman2020Do_R50.pt"
    with pytest.raises(MissingWeightsError, match=str(expected)):
        loaders.load_robustbench("Salman2020Do_R50", str(tmp_path), name="salman")


@pytest.mark.slow
def test_robustbench_loads_a_local_checkpoint_through_its_api(tmp_path):
    import torchvision

    folder = tmp_path / "imagenet" / "Linf"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    torch.save(net.state_dict(), folder / "Salman2020Do_R18.pt")  # the R18 of the same paper: same code path
    m = loaders.load_robustbench("Salman2020Do_R18", str(tmp_path))
    assert m.normalizes_inside  # Sequential(normalize, model): inputs in [0, 1]
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(m.logits(x), net(_normalise(x)), atol=1e-4)
    assert m.features(x).shape == (2, 512)


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from spurgen.config import register_configs, register_resolvers

    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_feature_extractor_configs_use_the_loaders(tmp_path):
    from hydra.utils import instantiate

    w = tmp_path / "eff.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in _tiny_timm().state_dict().items()}, str(w))
    # on the tiny model: the mini preset (the default) sets feature_extractor.variant, which these loaders lack
    cfg = _compose(
        [
            *TINY,
            "feature_extractor=timm",
            "feature_extractor.arch=test_efficientnet",
            f"feature_extractor.weights={w}",
        ]
    )
    fx = instantiate(cfg.feature_extractor)
    assert fx.features(torch.rand(1, 3, 32, 32)).ndim == 2
    madry = tmp_path / "imagenet_l2_3_0.pt"
    _madry_checkpoint(madry)
    cfg = _compose(
        [
            *TINY,
            "feature_extractor=robust_resnet50_madry",
            f"feature_extractor.weights={madry}",
            "feature_extractor.arch=resnet18",
        ]
    )
    assert instantiate(cfg.feature_extractor).features(torch.rand(1, 3, 32, 32)).shape == (1, 512)
    for name in ("salman2020", "engstrom2019"):
        cfg = _compose([*TINY, f"feature_extractor={name}", f"feature_extractor.model_dir={tmp_path}"])
        with pytest.raises(Exception, match=cfg.feature_extractor.arch) as info:  # Hydra wraps it
            instantiate(cfg.feature_extractor)
        assert isinstance(info.value.__cause__ or info.value, MissingWeightsError)


def test_timm_hub_weights_missing_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MissingWeightsError, match="timm/resnet18"):
        loaders.load_timm("resnet18", None, name="r18")


def test_random_tiny_classifiers_are_reproducible():
    def tiny():
        return loaders.load_timm("test_efficientnet", random_init=True, input_size=32, name="t")

    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tiny().logits(x), tiny().logits(x))
    assert tiny().is_random


def test_default_classifiers_offline_fail_with_one_clear_message(tmp_path, monkeypatch):
    from spurgen.build import build

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("SPURGEN_MADRY_WEIGHTS", str(tmp_path / "imagenet_l2_3_0.pt"))
    nodes = _compose(["eval=default"]).eval.classifiers
    assert list(nodes) == [
        "resnet50",
        "vit_base_patch16_224",
        "convnext_base",
        "efficientnet_b0",
        "robust_resnet50_l2_eps3",
    ]
    madry = nodes.robust_resnet50_l2_eps3
    assert madry._target_.endswith("load_madry") and madry.temperature == pytest.approx(0.7156)
    assert madry.allow_pickle is False  # the pickle loads only when the user opts in
    for name, node in nodes.items():
        expected = "imagenet_l2_3_0.pt" if "madry" in node._target_ else f"timm/{node.arch}"
        with pytest.raises(MissingWeightsError, match=expected):
            build(node, name=name)


@pytest.mark.parametrize(
    ("overrides", "first"),
    [
        ([], "efficientnet_lite0"),  # model=mini (the default preset) selects eval=mini
        (["model=tiny"], "tiny_effnet"),
        (["experiment=tiny_lambda_grid"], "tiny_effnet"),
        (["model=sd15"], "resnet50"),
        (["experiment=sd15_sfsl"], "resnet50"),
        (["model=tiny", "eval=default"], "resnet50"),  # the command line wins over the preset
    ],
)
def test_presets_select_the_eval_group(overrides, first):
    cfg = _compose(overrides)
    assert next(iter(cfg.eval.classifiers)) == first
    assert all("_target_" in node for node in cfg.eval.classifiers.values())


@pytest.mark.parametrize(
    ("vae_blocks", "unet_blocks", "multiple"),
    [(4, 4, 64), (3, 3, 16), (2, 2, 8), (1, 2, 8), (2, 1, 8)],  # SD 1.5, the mini model, the tiny model
)
def test_resolution_multiple(vae_blocks, unet_blocks, multiple):
    from types import SimpleNamespace

    from spurgen.models.parts import resolution_multiple

    vae = SimpleNamespace(config=SimpleNamespace(block_out_channels=[8] * vae_blocks))
    unet = SimpleNamespace(config=SimpleNamespace(block_out_channels=[8] * unet_blocks))
    assert resolution_multiple(vae, unet) == multiple


def test_check_resolution_names_the_key_and_the_nearest_sizes(tiny_parts):
    from spurgen.errors import ConfigError
    from spurgen.validation import check_resolution

    assert tiny_parts.resolution_multiple == 8
    assert check_resolution(40, tiny_parts.resolution_multiple, "data.resolution") == 40
    with pytest.raises(ConfigError, match=r"'generate.resolution': 4 px .* multiple of 8.*; try 8$"):
        check_resolution(4, tiny_parts.resolution_multiple, "generate.resolution")
