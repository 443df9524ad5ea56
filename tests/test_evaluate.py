"""`spurgen evaluate` on tiny random timm classifiers: outputs, schema, shared decoding, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spurgen.cli.evaluate import main
from spurgen.config import METHOD_VERSION
from tests.conftest import write_images

TEMPLATES = ["{prompt}", "{prompt} on the beach"]
TINY = ["tiny_effnet", "tiny_byobnet", "tiny_vit"]


def make_generated(folder: Path, n: int = 6, class_index: int = 94) -> Path:
    """A folder shaped like `spurgen generate`'s output (random pixels)."""
    paths = write_images(folder, n, size=32)
    lines = []
    for i, p in enumerate(paths):
        t = TEMPLATES[i % 2]
        lines.append(
            json.dumps(
                {
                    "file": p.name,
                    "prompt": t.replace("{prompt}", "a photo of a sks flower"),
                    "template": t,
                    "seed": i,
                }
            )
        )
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "generate.json").write_text(
        json.dumps(
            {"class_index": class_index, "model_is_tiny_random": True, "num_images": n, "black_images": 0}
        )
    )
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaldata")
    si = root / "spurious_imagenet" / "images"
    write_images(si / "spurious_imagenet_94_hummingbird_1", 3, size=48, seed=1)
    write_images(si / "spurious_imagenet_94_hummingbird_2", 2, size=48, seed=2)
    write_images(si / "spurious_imagenet_565_freight_0", 2, size=48, seed=3)
    return {
        "generated": make_generated(root / "generated"),
        "si": si,
        "baseline": write_images(root / "baseline", 3, size=32, seed=4)[0].parent,
        "val": write_images(root / "val" / "n01833805", 4, size=64, seed=5)[0].parent.parent,  # <wnid>/ of 94
    }


def test_evaluate_writes_every_output(data, tmp_path):
    out = tmp_path / "eval"
    rc = main(
        [
            f"images_dir={data['generated']}",
            "eval=tiny",
            "class=hummingbird",
            "target.component=1",
            f"eval.reference_dir={data['si']}",
            f"eval.baseline_dir={data['baseline']}",
            f"eval.imagenet_val_dir={data['val']}",
            f"hydra.run.dir={out}",
            "eval.bootstrap_samples=200",
        ]
    )
    assert rc == 0
    assert {
        "metrics.json",
        "metrics.csv",
        "spurious_rate.png",
        "contact_sheet.html",
        "predictions.jsonl",
    } <= {p.name for p in out.iterdir()}
    m = json.loads((out / "metrics.json").read_text())
    assert m["method_version"] == METHOD_VERSION
    assert m["model_is_tiny_random"] is True and m["random_classifiers"] == TINY
    assert m["target"]["index"] == 94 and m["target"]["component"] == 1
    recorded = m["classifiers"][0]  # the node it was built from, its name and preprocessing
    assert recorded["name"] == "tiny_effnet" and recorded["_target_"].endswith("load_timm")
    assert recorded["input_size"] == 32 and recorded["random_init"] is True
    assert m["sets"]["reference"]["num_images"] == 3  # component 1 of class 94 only
    assert set(m["results"]) == {"images", "reference", "baseline"}
    res = m["results"]["images"]
    assert res["num_images"] == 6 and set(res["per_classifier"]) == set(TINY)
    c = res["per_classifier"]["tiny_vit"]
    for key in ("spurious_rate", "top5_rate", "mean_p_target"):
        lo, hi = c[key]["ci"]
        assert 0 <= lo <= c[key]["value"] <= hi <= 1 and c[key]["n"] == 6
    assert -1 <= c["similarity"]["value"] <= 1
    assert set(res["per_template"]) == set(TEMPLATES) and res["per_template"]["{prompt}"]["num_images"] == 3
    assert set(res["consistency"]) == {"all", "at_least_half", "num_classifiers"}
    assert all(res["images_per_s"][n] > 0 for n in TINY)
    check_spurious_score(m["spurious_score"]["tiny_effnet"])
    flat = m["metrics"]
    for key in (
        "eval/spurious_rate/tiny_vit",
        "eval/top5_rate/tiny_vit",
        "eval/mean_p_target/tiny_vit",
        "eval/similarity/tiny_vit",
        "eval/consistency_all",
        "eval_reference/spurious_rate/tiny_vit",
        "eval_baseline/spurious_rate/tiny_vit",
        "eval/spurious_score_auc/tiny_vit",
        "eval_reference/spurious_score_ap/tiny_vit",
        "eval_reference/spurious_score_ap_all_components/tiny_vit",
        "eval_reference/spurious_score_auc_all_components/tiny_vit",
    ):
        assert key in flat
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {r["set"] for r in rows} == {"images", "reference", "baseline"}
    assert {"spurious_rate", "consistency_all", "spurious_score_roc_auc"} <= {r["metric"] for r in rows}
    pooled = [r for r in rows if r["metric"] == "spurious_score_ap_all_components"]
    assert {r["set"] for r in pooled} == {"reference"} and {r["n"] for r in pooled} == {"5"}
    sheet = (out / "contact_sheet.html").read_text()
    assert all(f"img_{i:03d}.png" in sheet for i in range(6)) and all(n in sheet for n in TINY)
    assert sheet.count("<img ") == 6 and "6 of 6 images" in sheet
    assert (out / "spurious_rate.png").stat().st_size > 1000
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6


def check_spurious_score(score: dict) -> None:
    """The spurious-score block of the fixture's evaluation (reference: component 1 of class 94)."""
    assert score["num_val"] == 4 and set(score) >= {"images", "reference", "baseline"}
    assert 0 <= score["images"]["roc_auc"] <= 1 and 0 < score["images"]["ap"] <= 1
    ref = score["reference"]  # the official score pools components 1 and 2 of class 94, not class 565
    assert ref["num_spurious"] == 3 and ref["num_spurious_all_components"] == 5
    assert ref["pooled_over_components"] is True and ref["component"] == 1 and ref["components"] == [1, 2]
    assert 0 < ref["ap_all_components"] <= 1 and 0 <= ref["roc_auc_all_components"] <= 1


def test_each_image_decoded_once_and_shared(data, monkeypatch):
    import spurgen.eval.predict as P

    models = tiny_classifiers()
    models[1].input_size = 24  # a second preprocessing group
    calls = []
    real = P.load_rgb
    monkeypatch.setattr(P, "load_rgb", lambda p: calls.append(p) or real(p))
    paths = sorted(data["generated"].glob("*.png"))
    out = P.predict_set(models, paths, target=94, batch_size=4)
    assert len(calls) == len(paths)  # once per image, whatever the number of classifiers
    m = models[1]  # same numbers as running that classifier alone on the resized image
    x = torch.stack([P.resize_image(P.to_tensor(real(p)), 24, m.interpolation, None) for p in paths])
    with torch.no_grad():
        p_alone = m.logits(x).softmax(1)[:, 94].numpy()
    assert np.allclose(out.per_classifier[m.name].p_target, p_alone, atol=1e-6)


def test_channels_last_placement_keeps_the_predictions(data):
    """eval.channels_last (the default) changes only the memory layout: the same top-5 and probabilities."""
    import spurgen.eval.predict as P

    default, cl = tiny_classifiers(), tiny_classifiers(channels_last=True)
    conv = next(w for w in cl[0].parameters() if w.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    paths = sorted(data["generated"].glob("*.png"))
    a, b = P.predict_set(default, paths, 94), P.predict_set(cl, paths, 94)
    for name, pa in a.per_classifier.items():
        pb = b.per_classifier[name]
        assert np.array_equal(pa.top5[:, 0], pb.top5[:, 0])
        assert np.allclose(pa.p_target, pb.p_target, atol=1e-5)
        assert np.allclose(pa.features, pb.features, atol=1e-4)


def tiny_eval_cfg():
    """eval=tiny, as the config group composes it."""
    from omegaconf import OmegaConf

    from spurgen.config import CONF_DIR, EvalConfig

    tiny = OmegaConf.load(Path(CONF_DIR) / "eval" / "tiny.yaml")
    return OmegaConf.merge(OmegaConf.structured(EvalConfig(seed=0)), tiny)


def tiny_classifiers(channels_last: bool = False) -> list:
    from spurgen.eval.classifiers import build_classifiers

    return build_classifiers(tiny_eval_cfg().classifiers, torch.device("cpu"), channels_last)


def test_classifiers_are_built_from_target_nodes_named_by_their_keys():
    models = tiny_classifiers()
    assert [m.name for m in models] == TINY and all(m.is_random for m in models)
    assert models[0].input_size == 32 and not models[0].normalizes_inside


def test_model_crop_differs_from_resize_only():
    from spurgen.eval.predict import resize_image

    x = torch.rand(3, 40, 80)
    assert resize_image(x, 32, "bicubic", None).shape == (3, 32, 32)
    cropped = resize_image(x, 32, "bicubic", 0.875)
    assert cropped.shape == (3, 32, 32) and not torch.allclose(cropped, resize_image(x, 32, "bicubic", None))


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "spurgen: error:" in err
    return err


def test_bad_input_is_one_clear_error(data, tmp_path, capsys):
    h = f"hydra.run.dir={tmp_path}/h"
    gen = f"images_dir={data['generated']}"
    assert main(["class=koala", "eval=tiny", h]) == 2  # images_dir: ??? in the config
    assert "images_dir is required: give images_dir=<value>" in _err(capsys)
    assert main([f"images_dir={tmp_path / 'missing'}", "class=koala", "eval=tiny", h]) == 2
    assert "does not exist" in _err(capsys)
    (tmp_path / "empty").mkdir()
    assert main([f"images_dir={tmp_path / 'empty'}", "class=koala", "eval=tiny", h]) == 2
    assert "holds no images" in _err(capsys)
    bad = tmp_path / "bad"
    write_images(bad, 2, size=32)
    (bad / "broken.png").write_bytes(b"not a png")
    assert main([f"images_dir={bad}", "class=koala", "eval=tiny", h]) == 2
    err = _err(capsys)
    assert "cannot read image" in err and "broken.png" in err
    keras = "+eval.classifiers.x={_target_: spurgen.models.loaders.load_keras, arch: y}"
    assert main([gen, "eval=tiny", keras, h]) == 2
    assert "eval.classifiers.x" in (e := _err(capsys)) and "load_keras" in e
    assert main([gen, "eval=empty", h]) == 2 and "eval=default" in _err(capsys)
    assert main([gen, "class=imagenet", "target.index=1000", "eval=tiny", h]) == 2
    assert "0..999" in _err(capsys)
    assert main([gen, "class=imagenet", "eval=tiny", h]) == 2
    assert "target.index" in _err(capsys)
    plain = tmp_path / "plain"
    write_images(plain, 2, size=32)
    assert main([f"images_dir={plain}", "eval=tiny", h]) == 2
    assert "class=" in _err(capsys)
    assert main([gen, "eval=tiny", "eval.crop=half", h]) == 2
    assert "eval.crop" in _err(capsys)
    assert main([gen, "class=hummingbird", "eval=tiny", f"eval.reference_dir={data['si']}", h]) == 2
    assert "component 1 (3 images" in _err(capsys)  # ambiguous Spurious ImageNet class: lists the components
    assert main([gen, "eval.classifier_set=tiny", h]) == 2  # the old switch names its replacement
    assert "eval=tiny" in _err(capsys)


def test_inputs_are_checked_before_any_weights_are_fetched(tmp_path, capsys, monkeypatch):
    """eval=default needs real weights (absent offline): a bad folder must be reported, not the weights."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    h = f"hydra.run.dir={tmp_path}/h"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("not an image")
    assert main([f"images_dir={notes}", "class=koala", h]) == 2
    err = _err(capsys)
    assert "readme.txt" in err and "holds no images" in err and "resnet50" not in err
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "photo.png").write_text("not a png")
    assert main([f"images_dir={fake}", "class=koala", h]) == 2
    err = _err(capsys)
    assert "cannot read image" in err and "photo.png" in err and "resnet50" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([f"images_dir={empty}", h]) == 2  # no class= and nothing to read: both, in one message
    err = _err(capsys)
    assert "no target class" in err and "holds no images" in err and len(err.strip().splitlines()) == 1


def test_missing_class_and_empty_folder_are_reported_together(tmp_path):
    from spurgen.errors import SpurgenError
    from spurgen.stages.evaluate import evaluate

    (tmp_path / "empty").mkdir()
    with pytest.raises(SpurgenError) as info:
        evaluate(tiny_eval_cfg(), tmp_path / "empty", tmp_path / "out", None)
    msg = str(info.value)
    assert msg.startswith("2 problems") and "no target class" in msg and "holds no images" in msg
    assert "\n" not in msg and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_wandb_offline_logs_table_chart_and_grid(data, tmp_path):
    out = tmp_path / "eval"
    rc = main(
        [
            f"images_dir={data['generated']}",
            "eval=tiny",
            f"eval.reference_dir={data['si']}",
            "target.component=2",
            "class=hummingbird",
            "logger=wandb",
            f"hydra.run.dir={out}",
        ]
    )
    assert rc == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert runs and (out / "wandb_run_id.txt").exists()
    files = [p.name for p in runs[0].rglob("*")]
    assert any(f.endswith(".wandb") for f in files)


def test_the_end_of_run_table_shows_rates_similarities_kid_and_diversity():
    from spurgen.eval.outputs import summary_table

    def block(rate, sim, kid=None, div=None):
        out = {"spurious_rate": {"value": rate, "ci": [rate - 0.1, rate + 0.1], "n": 32},
               "similarity": {"value": sim}}  # fmt: skip
        out.update({"kid": {"value": kid}} if kid is not None else {})
        out.update({"diversity": {"value": div}} if div is not None else {})
        return {"per_classifier": {"a": out}}

    result = {
        "target": {"index": 111, "name": "nematode"},
        "extractor": {"used": True, "name": "a"},
        "results": {
            "images": block(0.5, 0.61, 0.01234, 0.3),
            "baseline": block(0.25, 0.4, 0.05, 0.35),
            "reference": block(1.0, 0.9, None, 0.2),
        },  # fmt: skip
    }
    lines = summary_table(result).splitlines()
    assert lines[0].startswith("spurious rate = share of images classified as 111 (nematode)")
    assert lines[2].split()[:4] == ["a", "(trained", "the", "SFSL)"] and "0.50 [0.40, 0.60] n=32" in lines[2]
    assert lines[-2].split()[:5] == ["classifier", "KID", "generated", "KID", "baseline"]
    assert lines[-1].split() == ["a", "0.0123", "0.0500", "0.300", "0.350", "0.200"]
    for s in result["results"].values():  # an evaluation without the distribution measures: no second table
        s["per_classifier"]["a"].pop("kid", None), s["per_classifier"]["a"].pop("diversity", None)
    assert "KID" not in summary_table(result)
