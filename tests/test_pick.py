"""`spurgen pick` (spurgen/cli/pick.py, spurgen/stages/pick.py): the selection rule on hand-made numbers, bad
input (one line, exit 2, nothing written), and one slow pick of the moon with the real Lite classifiers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import spurgen.cli
from spurgen.stages.pick import (
    PickSettings,
    Scores,
    candidate_boxes,
    cosine_matrix,
    cut,
    diverse,
    iou,
    ranking,
)
from tests.conftest import write_images

REPO = Path(__file__).resolve().parents[1]
MOON_REFS = REPO / "spurgen" / "assets" / "mini" / "references" / "moon"


def scores_of(sources, boxes, features, p=None) -> Scores:
    n = len(sources)
    p = np.ones((n, 1)) if p is None else np.asarray(p, float)
    return Scores(list(sources), list(boxes), p, np.ones_like(p, dtype=int), np.asarray(features, float))


# --- the rule, by hand ---


def test_iou_by_hand():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 5, 10, 10)) == pytest.approx(25 / 175)  # 5x5 shared, 100 + 100 - 25
    assert iou((0, 0, 4, 8), (0, 4, 4, 8)) == pytest.approx(16 / 48)  # (top, left, height, width)
    assert iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0  # touching edges share nothing
    assert iou((0, 0, 10, 10), (0, 0, 5, 5)) == pytest.approx(25 / 100)  # a box inside another


def test_cosine_matrix_by_hand():
    cos = cosine_matrix(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]))
    h = 1 / np.sqrt(2)
    np.testing.assert_allclose(cos, [[1, h, 0], [h, 1, h], [0, h, 1]], atol=1e-12)


def test_ranking_by_agreement_then_lowest_probability():
    agreement = np.array([3, 2, 3, 1, 2])
    p_min = np.array([0.5, 0.9, 0.7, 0.99, 0.9])
    assert ranking(agreement, p_min, 2) == [2, 0, 1, 4]  # 3s first (0.7 before 0.5); tied 2s keep their order
    assert ranking(agreement, p_min, 3) == [2, 0]
    assert ranking(agreement, p_min, 1) == [2, 0, 1, 4, 3]


def test_diversity_iou_on_one_photo_only():
    boxes = [(0, 0, 10, 10), (2, 2, 10, 10), (2, 2, 10, 10), (5, 5, 10, 10)]
    sources = ["a.png", "a.png", "b.png", "a.png"]
    features = np.eye(4)  # all orthogonal: only the boxes decide
    s = scores_of(sources, boxes, features)
    # 1 vs 0: 8x8 = 64 shared, IoU 64/136 = 0.47 <= 0.5 kept; 3 vs 0: 25/175 kept; 2 is on another photo
    assert diverse([0, 1, 2, 3], s, PickSettings(n=4, max_iou=0.5)) == [0, 1, 2, 3]
    # at max_iou 0.3: 1 overlaps 0 by 0.47 and goes; 3 overlaps 1 (gone) but 0 by 0.14 only
    assert diverse([0, 1, 2, 3], s, PickSettings(n=4, max_iou=0.3)) == [0, 2, 3]
    assert diverse([0, 1, 2, 3], s, PickSettings(n=2, max_iou=0.3)) == [0, 2]  # stops at n


def test_diversity_feature_cosine():
    boxes = [(0, 0, 10, 10), (20, 20, 10, 10), (40, 40, 10, 10)]
    features = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])  # cos(0, 1) = 1 / sqrt(1.01) = 0.995
    s = scores_of(["a.png"] * 3, boxes, features)
    assert diverse([0, 1, 2], s, PickSettings(n=3, max_cosine=0.99)) == [0, 2]
    assert diverse([0, 1, 2], s, PickSettings(n=3, max_cosine=0.999)) == [0, 1, 2]
    assert diverse([1, 0, 2], s, PickSettings(n=3, max_cosine=0.99)) == [1, 2]  # the order decides who stays


def test_candidate_boxes_are_the_mini_worlds_moon_crops():
    """The shipped moon references were cut by experiments/mini_world/pick_references.py from a pool of 96 crops
    (seed [0, 111]); the command draws the same boxes, after the whole photo."""
    boxes = candidate_boxes([(512, 512)], 111, PickSettings(crops_per_photo=96))[0]
    assert boxes[0] == (0, 0, 512, 512) and len(boxes) == 97
    shipped = json.loads((MOON_REFS / "selection.json").read_text())
    for crop in shipped["crops"]:
        top, left, side = crop["box"]
        assert boxes[crop["index"] + 1] == (top, left, side, side)
    assert {b[2] for b in boxes[1:]} == {512, 307, 179}  # scales 1.0, 0.6, 0.35 of the short side
    import skimage

    moon = Image.open(Path(skimage.__file__).parent / "data" / "moon.png").convert("RGB")
    for n, crop in enumerate(shipped["crops"]):  # and cut() gives their pixels
        top, left, side = crop["box"]
        shipped_png = np.asarray(Image.open(MOON_REFS / f"moon_{n:02d}.png").convert("RGB"))
        assert np.array_equal(np.asarray(cut(moon, (top, left, side, side), 64)), shipped_png)


def test_cut_resizes_only_when_asked():
    photo = Image.fromarray(np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3))
    assert cut(photo, (5, 10, 20, 20), None).size == (20, 20)
    assert np.array_equal(np.asarray(cut(photo, (5, 10, 20, 20), None)), np.asarray(photo)[5:25, 10:30])
    assert cut(photo, (0, 0, 40, 60), 16).size == (16, 16)


# --- bad input: one line, exit 2, nothing written ---


def one_line_exit_2(argv: list[str], capsys) -> str:
    assert spurgen.cli.main(["pick", *argv]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("spurgen: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def photos(tmp_path) -> Path:
    write_images(tmp_path / "photos", 2, size=48)
    return tmp_path / "photos"


def test_bad_input_is_one_line(tmp_path, photos, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    assert "holds no images" in one_line_exit_2(
        [str(tmp_path / "empty"), "class=nematode", f"out_dir={out}"], capsys
    )
    assert "does not exist" in one_line_exit_2(
        [str(tmp_path / "nope"), "class=111", f"out_dir={out}"], capsys
    )
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    line = one_line_exit_2([str(photos), "class=nematode", f"out_dir={out}"], capsys)
    assert "1 of 3 files" in line and "broken.jpg" in line
    (photos / "broken.jpg").unlink()
    line = one_line_exit_2([str(photos), "class=no_such_class", f"out_dir={out}"], capsys)
    assert "unknown class 'no_such_class'" in line and "nematode" in line
    line = one_line_exit_2([str(photos), "class=nematode", "min_classifiers=4", f"out_dir={out}"], capsys)
    assert "min_classifiers must be in 1..3" in line
    assert "required" in one_line_exit_2([str(photos), f"out_dir={out}"], capsys)
    assert "0..999" in one_line_exit_2([str(photos), "class=1000", f"out_dir={out}"], capsys)
    assert "n must be" in one_line_exit_2([str(photos), "class=111", "n=0", f"out_dir={out}"], capsys)
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep")
    assert "not an empty folder" in one_line_exit_2([str(photos), "class=111", f"out_dir={full}"], capsys)
    assert [p.name for p in full.iterdir()] == ["mine.txt"]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full", "photos"]


def test_too_few_writes_nothing(tmp_path, photos, capsys, monkeypatch):
    """Tiny random classifiers call no crop of random noise 'tench' (0) with all three: one line with the best
    candidates' figures, exit 2, and neither out_dir nor a temporary folder is left."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "refs"
    argv = [str(photos), "class=0", "eval=tiny", "crops_per_photo=3", f"out_dir={out}"]
    line = one_line_exit_2(argv, capsys)
    assert "only 0 of 8 candidates qualify" in line and "best: img_" in line and "agreement 0" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_help_and_dispatch(capsys):
    assert spurgen.cli.main(["pick", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: spurgen pick <folder> class=")
    assert spurgen.cli.main(["--help"]) == 0
    assert "\n  pick " in capsys.readouterr().out


# --- the real thing (slow) ---


@pytest.mark.slow
def test_pick_the_moon_with_the_lite_classifiers(tmp_path, capsys, monkeypatch):
    """scikit-image's moon, 20 crops + the whole photo, the real EfficientNet-Lite0/1/2 (eval=mini): the picked
    boxes are the drawn ones, the written crops are those boxes of the photo, the evaluation labels each written
    file as selection.json says, and the diversity rule holds, all checked here by hand."""
    import skimage

    from spurgen.eval.classifiers import build_classifiers
    from spurgen.eval.predict import predict_set

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(Path(skimage.__file__).parent / "data" / "moon.png", folder / "moon.png")
    out = tmp_path / "refs"
    argv = [str(folder), "class=nematode", "crops_per_photo=20", "size=64", f"out_dir={out}"]
    assert spurgen.cli.main(["pick", *argv]) == 0
    assert "max_cosine 0.95" in capsys.readouterr().out  # the threshold is printed
    sel = json.loads((out / "selection.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["selection.json", "contact_sheet.html", *(c["file"] for c in sel["crops"])]
    )
    names = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert sel["classifiers"] == names and sel["feature_classifier"] == names[0]
    assert (sel["target"], sel["n"], sel["min_classifiers"]) == ({"index": 111, "name": "nematode"}, 5, 3)
    assert (sel["seed"], sel["max_iou"], sel["max_cosine"], sel["num_candidates"]) == (0, 0.5, 0.95, 21)
    assert sel["command"].startswith("spurgen pick ") and "class=nematode" in sel["command"]
    crops = sel["crops"]
    assert len(crops) == 5

    # the boxes: drawn ones (the whole photo or squares at the scales), cut pixel for pixel
    photo = np.asarray(Image.open(folder / "moon.png").convert("RGB"))
    drawn = {(0, 0, 512, 512)} | {
        b for b in candidate_boxes([(512, 512)], 111, PickSettings(crops_per_photo=20))[0]
    }
    for c in crops:
        top, left, h, w = c["box"]
        assert tuple(c["box"]) in drawn and h == w and h in (512, 307, 179)
        assert 0 <= top and top + h <= 512 and 0 <= left and left + w <= 512
        expected = Image.fromarray(photo[top : top + h, left : left + w]).resize(
            (64, 64), Image.Resampling.BICUBIC, reducing_gap=None
        )
        assert np.array_equal(np.asarray(Image.open(out / c["file"]).convert("RGB")), np.asarray(expected))
    # the best crop is the shipped references' best: moon_00.png, the same pixels
    assert crops[0]["box"] == [210, 157, 179, 179]
    assert np.array_equal(
        np.asarray(Image.open(out / crops[0]["file"])), np.asarray(Image.open(MOON_REFS / "moon_00.png"))
    )

    # the labels: the evaluation's own prediction of each written file
    from omegaconf import OmegaConf

    nodes = OmegaConf.load(REPO / "conf" / "eval" / "mini.yaml").classifiers
    import torch

    models = build_classifiers(nodes, torch.device("cpu"), False)
    preds = predict_set(models, [out / c["file"] for c in crops], 111).per_classifier
    for i, c in enumerate(crops):
        for name in names:
            assert int(preds[name].argmax[i]) == 111 and c["rank"][name] == 1
            assert c["p"][name] == pytest.approx(float(preds[name].p_target[i]), abs=2e-3)
        assert c["agreement"] == 3 and c["p_min"] == pytest.approx(min(c["p"].values()), abs=1e-4)
    lows = [c["p_min"] for c in crops]
    assert lows == sorted(lows, reverse=True)  # equal agreement: the lowest probability decides

    # the diversity rule, by hand: IoU on the one photo, and the cosine of Lite0's pooled features
    for i in range(5):
        for j in range(i + 1, 5):
            (t1, l1, s1, _), (t2, l2, s2, _) = crops[i]["box"], crops[j]["box"]
            inter = max(0, min(t1 + s1, t2 + s2) - max(t1, t2)) * max(0, min(l1 + s1, l2 + s2) - max(l1, l2))
            assert inter / (s1 * s1 + s2 * s2 - inter) <= 0.5
    f = preds[names[0]].features
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    cos = f @ f.T
    assert cos[np.triu_indices(5, 1)].max() <= 0.95 + 1e-4
    assert sel["max_pairwise_cosine"] == pytest.approx(cos[np.triu_indices(5, 1)].max(), abs=2e-3)
