"""The mini world's shipped spurious pairs (docs/mini_world.md, "The shipped pairs"): every class file composes,
and every class file whose references ship under spurgen/assets/mini/references has them labelled as it says
(its target.index, top-1) by at least the selection's min_classifiers of the classifiers its selection.json
lists, through the evaluation's own preprocessing (spurgen.eval.predict)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from spurgen.config import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
MINI_REFS = REPO / "spurgen" / "assets" / "mini" / "references"
CLASS_FILES = sorted((Path(CONF_DIR) / "class").glob("*.yaml"))
ASSET = re.compile(r"^\$\{spurgen_asset:mini/references/([^}]+)\}$")


def mini_pairs() -> list[tuple[str, dict, Path]]:
    """(class file name, its node, its reference folder) for every class file with mini references."""
    pairs = []
    for f in CLASS_FILES:
        node = OmegaConf.to_container(OmegaConf.load(f), resolve=False)
        m = ASSET.match(str(node.get("reference_dir") or ""))
        if m:
            pairs.append((f.stem, node, MINI_REFS / m.group(1)))
    return pairs


def test_there_are_at_least_three_shipped_pairs():
    assert len(mini_pairs()) >= 3
    assert "nematode" in [name for name, _, _ in mini_pairs()]


@pytest.mark.parametrize("name", [f.stem for f in CLASS_FILES])
def test_every_class_file_composes(name):
    extra = ["target.index=1", "target.concept=fish"] if name == "imagenet" else []  # the template's blanks
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"class={name}", *extra])
    assert cfg.target.file == name and 0 <= int(cfg.target.index) < 1000
    if cfg.target.reference_dir is not None:
        assert Path(cfg.target.reference_dir).is_dir(), cfg.target.reference_dir


@pytest.mark.parametrize("name", [name for name, _, _ in mini_pairs()])
def test_shipped_references_are_labelled_as_the_class_file_says(name):
    import torch

    from spurgen.eval.classifiers import build_classifiers
    from spurgen.eval.predict import predict_set

    node, folder = next((n, f) for k, n, f in mini_pairs() if k == name)
    sel = json.loads((folder / "selection.json").read_text())
    index = int(node["index"])
    available = OmegaConf.load(REPO / "conf" / "eval" / "mini.yaml").classifiers
    # the moon's selection.json predates `spurgen pick`: its rule is "all three Lite top-1"
    names = sel.get("classifiers", list(available))
    k = int(sel.get("min_classifiers", len(names)))
    assert set(names) <= set(available), f"{name}: selection.json lists classifiers outside eval=mini"
    target = sel["target"]["index"] if isinstance(sel["target"], dict) else sel["target"]
    assert int(target) == index, f"{name}: selection.json picked class {target}, the class file says {index}"
    files = sorted(p for p in folder.iterdir() if p.suffix == ".png")
    assert len(files) >= 5 and len(sel["crops"]) == len(files)
    models = build_classifiers({n: available[n] for n in names}, torch.device("cpu"), False)
    preds = predict_set(models, files, index).per_classifier
    for i, f in enumerate(files):
        agree = [n for n in names if int(preds[n].argmax[i]) == index]
        assert len(agree) >= k, f"{name}: {f.name} is class {index} for only {agree}, needs {k} of {names}"
