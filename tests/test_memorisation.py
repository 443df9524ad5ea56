"""The memorisation check (spurgen/eval/memorisation.py, issue 13) against values computed by hand.

Flat-colour images keep every PSNR a hand formula: two flat images whose values (in [0, 1]) differ by d in
every channel have MSE d², so PSNR = -20 log10(d); they stay flat under resizing to the comparison size.
Each case is built so that a mean over references (instead of the nearest one) or a reference set compared
with itself without leaving each image out gives other numbers.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from spurgen.eval import memorisation as MEM
from spurgen.eval.imagesets import ImageSet
from spurgen.eval.predict import Predictions, SetPredictions
from spurgen.eval.summary import flat_metrics
from spurgen.stages.evaluate import evaluate
from tests.test_evaluate_hand import ID_STEP, K, dirs, eval_cfg  # noqa: F401 - dirs: the hand images' fixture

R = math.sqrt(0.5)  # cos 45°


def flat(folder: Path, name: str, value: int, size: tuple[int, int] = (48, 48)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


def db(d: float) -> float:
    """PSNR of two flat images whose values differ by d (in [0, 1]) in every channel."""
    return -20 * math.log10(d)


@pytest.fixture
def folders(tmp_path) -> tuple[list[Path], list[Path]]:
    """References black (0), grey 0.2 (51/255) and white; generated: a byte copy of the grey reference, a
    grey 0.4 (102) at 40 px and a light grey 230 at 100x60 px (resized to the comparison size)."""
    refs = [flat(tmp_path / "ref", "r0.png", 0), flat(tmp_path / "ref", "r1.png", 51)]
    refs.append(flat(tmp_path / "ref", "r2.png", 255))
    (tmp_path / "gen").mkdir()
    gen = [Path(shutil.copy(refs[1], tmp_path / "gen" / "copy.png"))]
    gen += [
        flat(tmp_path / "gen", "mid.png", 102, (40, 40)),
        flat(tmp_path / "gen", "light.png", 230, (100, 60)),
    ]
    return refs, gen


def test_psnr_db_peak_one_and_the_cap():
    got = MEM.psnr_db(np.array([1.0, 0.01, 0.04, 1e-12, 0.0]))
    assert got[:3] == pytest.approx([0.0, 20.0, 10 * math.log10(25)])
    assert got[3] == got[4] == MEM.PSNR_CAP_DB == 100.0  # 120 dB and an exact copy (infinite) report the cap
    assert np.isfinite(got).all()


def test_nearest_reference_psnr_by_hand(folders):
    """Nearest, not mean: mid (0.4) is 0.2 from grey, 0.4 from black and 0.6 from white -> -20 log10 0.2
    (13.98 dB); a mean of the three MSEs would give 7.29 dB. The copy reports the 100 dB cap."""
    refs, gen = folders
    pixels = MEM.load_pixels(refs)
    assert pixels.shape == (3, MEM.COMPARE_SIZE * MEM.COMPARE_SIZE * 3)
    got = MEM.nearest_psnr(gen, pixels)
    assert got == pytest.approx([100.0, db(51 / 255), db(25 / 255)], abs=1e-4)
    assert got[1] == pytest.approx(13.9794, abs=1e-4) and got[2] == pytest.approx(20.1720, abs=1e-4)


def test_references_leave_themselves_out(folders, monkeypatch):
    """Black's nearest other reference is grey (0.2), grey's is black (0.2), white's is grey (0.8). Without
    leaving itself out every reference would be its own exact copy (100 dB). Read two at a time, the third
    reference still skips itself (not the first of the whole set)."""
    refs, _ = folders
    pixels = MEM.load_pixels(refs)
    got = MEM.nearest_psnr(refs, pixels, leave_one_out=True)
    assert got == pytest.approx([db(0.2), db(0.2), db(0.8)], abs=1e-4)
    assert got[2] == pytest.approx(1.9382, abs=1e-4)
    assert MEM.nearest_psnr(refs, pixels) == pytest.approx([100.0] * 3)
    monkeypatch.setattr(MEM, "CHUNK", 2)
    assert MEM.nearest_psnr(refs, pixels, leave_one_out=True) == pytest.approx(got)


def test_a_copy_of_a_textured_reference_among_textured_references(tmp_path):
    """Seeded noise images: the copy is found (100 dB) and nothing else comes near the cap."""
    rng = np.random.default_rng(0)
    refs = []
    for i in range(4):
        path = tmp_path / f"n{i}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        refs.append(path)
    other = tmp_path / "other.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(other)
    got = MEM.nearest_psnr([other, shutil.copy(refs[2], tmp_path / "copy.png")], MEM.load_pixels(refs))
    assert got[1] == 100.0 and got[0] < 10  # independent uniform noise: MSE ~ 1/6, about 7.8 dB


def test_nearest_feature_cosine_by_hand():
    """References (1,0), (0,1), (1,1): (2,0) meets (1,0) -> 1 (the mean over references would be 0.57);
    (-1,0) -> 0; (1,2) -> cos with (1,1) = 3/sqrt(10). Left out, each reference's nearest other is 45° away."""
    refs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    got = MEM.nearest_cosine(np.array([[2.0, 0.0], [-1.0, 0.0], [1.0, 2.0]]), refs)
    assert got == pytest.approx([1.0, 0.0, 3 / math.sqrt(10)])
    assert MEM.nearest_cosine(refs, refs, leave_one_out=True) == pytest.approx([R, R, R])
    assert MEM.nearest_cosine(refs, refs) == pytest.approx([1.0, 1.0, 1.0])


def test_leave_one_out_across_chunks(monkeypatch):
    """Chunked rows skip their own reference, not the chunk-relative one."""
    monkeypatch.setattr(MEM, "CHUNK", 2)
    refs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [1.0, 0.1]])
    expected = [
        max(float(a @ b) / np.linalg.norm(a) / np.linalg.norm(b) for j, b in enumerate(refs) if j != i)
        for i, a in enumerate(refs)
    ]
    assert MEM.nearest_cosine(refs, refs, leave_one_out=True) == pytest.approx(expected)
    pixels = np.array([[0.0, 0.0], [0.1, 0.1], [0.5, 0.5], [0.9, 0.9], [1.0, 1.0]], dtype=np.float32)
    mse = MEM.nearest_mse(pixels[2:4], pixels, np.array([2, 3]))
    assert mse == pytest.approx([0.16, 0.01])


def test_distribution_by_hand():
    got = MEM.distribution(np.array([4.0, 1.0, 100.0, 3.0, 2.0]))
    # sorted 1 2 3 4 100; linear percentiles: p05 at position 0.2 -> 1.2, p95 at 3.8 -> 4 + 0.8 * 96 = 80.8
    assert got == pytest.approx(
        {"n": 5, "mean": 22.0, "median": 3.0, "p05": 1.2, "p95": 80.8, "min": 1.0, "max": 100.0}
    )
    assert MEM.distribution(np.array([])) is None


def predictions(features: list[tuple[float, float]]) -> Predictions:
    n = len(features)
    zeros = np.zeros((n, 5))
    return Predictions(zeros.astype(int), zeros, np.zeros(n), np.array(features, dtype=np.float64))


def test_every_set_and_the_single_reference(folders, tmp_path):
    refs, gen = folders
    sets = {
        "images": ImageSet("images", tmp_path / "gen", gen),
        "reference": ImageSet("reference", tmp_path / "ref", refs),
    }
    preds = {
        "images": SetPredictions({"a": predictions([(2, 0), (-1, 0), (1, 2)])}),
        "reference": SetPredictions({"a": predictions([(1, 0), (0, 1), (1, 1)])}),
    }
    memo = MEM.measure_memorisation(sets, preds)
    assert set(memo) == {"images", "reference"}
    assert memo["images"]["psnr_db"]["max"] == 100.0 and memo["images"]["psnr_db"]["n"] == 3
    assert memo["images"]["psnr_db"]["median"] == pytest.approx(db(25 / 255), abs=1e-4)
    assert memo["reference"]["psnr_db"]["median"] == pytest.approx(db(0.2), abs=1e-4)
    assert memo["reference"]["psnr_db"]["min"] == pytest.approx(db(0.8), abs=1e-4)
    assert memo["images"]["feature_cosine"]["a"]["max"] == pytest.approx(1.0)
    assert memo["reference"]["feature_cosine"]["a"]["max"] == pytest.approx(R)
    flat_keys = flat_metrics({}, {}, memo)
    assert flat_keys["eval/memorisation_psnr_max"] == 100.0
    assert flat_keys["eval_reference/memorisation_cosine_median/a"] == pytest.approx(R)

    one = {"images": sets["images"], "reference": ImageSet("reference", tmp_path / "ref", refs[:1])}
    preds["reference"] = SetPredictions({"a": predictions([(1, 0)])})
    memo = MEM.measure_memorisation(one, preds)
    assert memo["reference"] == {"psnr_db": None, "feature_cosine": {"a": None}}
    # the copy's reference is gone: the nearest of the copy (0.2) is black
    assert memo["images"]["psnr_db"]["max"] == pytest.approx(db(51 / 255), abs=1e-4)
    assert not any(k.startswith("eval_reference/") for k in flat_metrics({}, {}, memo))
    assert MEM.measure_memorisation({"images": sets["images"]}, preds) == {}


def hand_psnr(red_difference: int) -> float:
    """The hand images (test_evaluate_hand) differ only in red: MSE = (d/255)² / 3."""
    return 10 * math.log10(3 * 255**2 / red_difference**2)


def test_evaluate_writes_the_memorisation_of_every_set(dirs, tmp_path):  # noqa: F811 - the imported fixture
    """test_evaluate_hand's images and lookup classifiers, plus a baseline holding a byte copy of reference id
    21 and generated id 3. Generated id i has red 5i; references 20, 21, 22 have red 100, 105, 110 and
    features (1,0), (0,2), (3,3); generated features give nearest cosines 1 x6, 1/sqrt2 x2 (ids 3, 7) and
    -1/sqrt2 (id 4, (-1,-1))."""
    ref = dirs["si"] / "spurious_imagenet_94_hummingbird_1"
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    shutil.copy(ref / "r1.png", baseline / "b0.png")
    shutil.copy(dirs["generated"] / "a.png", baseline / "b1.png")  # id 3
    cfg = OmegaConf.merge(
        eval_cfg(ref, dirs["val"]), {"baseline_dir": str(baseline), "imagenet_val_dir": None}
    )
    evaluate(cfg, dirs["generated"], tmp_path / "out", K)
    text = (tmp_path / "out" / "metrics.json").read_text()
    m = json.loads(text, parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}"))  # strict JSON
    memo = m["memorisation"]
    assert set(memo) == {"images", "reference", "baseline"}

    gen_psnr = sorted(hand_psnr(100 - ID_STEP * i) for i in range(9))  # nearest is always reference 20
    assert memo["images"]["psnr_db"]["n"] == 9
    assert memo["images"]["psnr_db"]["median"] == pytest.approx(hand_psnr(80), abs=1e-4)
    assert memo["images"]["psnr_db"]["max"] == pytest.approx(hand_psnr(60), abs=1e-4)
    assert memo["images"]["psnr_db"]["mean"] == pytest.approx(np.mean(gen_psnr), abs=1e-4)
    ref_psnr = memo["reference"]["psnr_db"]  # each reference's nearest other is 5 red levels away
    assert ref_psnr["n"] == 3 and ref_psnr["min"] == ref_psnr["max"] == pytest.approx(hand_psnr(5), abs=1e-4)
    assert memo["baseline"]["psnr_db"]["max"] == 100.0
    assert memo["baseline"]["psnr_db"]["min"] == pytest.approx(hand_psnr(100 - ID_STEP * 3), abs=1e-4)

    for c in ("a", "b", "c"):  # the lookup classifiers share their features
        cos = memo["images"]["feature_cosine"][c]
        assert cos["median"] == pytest.approx(1.0) and cos["min"] == pytest.approx(-R)
        assert cos["mean"] == pytest.approx((6 + R) / 9)
        assert memo["reference"]["feature_cosine"][c]["max"] == pytest.approx(R)  # not 1: itself left out
        assert memo["baseline"]["feature_cosine"][c]["min"] == pytest.approx(R)

    with open(tmp_path / "out" / "metrics.csv", newline="") as f:  # the same medians, in metrics.csv
        rows = [r for r in csv.DictReader(f) if r["metric"].startswith("memorisation")]
    psnr = {r["set"]: r for r in rows if r["metric"] == "memorisation_psnr_db"}
    assert set(psnr) == {"images", "reference", "baseline"} and psnr["images"]["classifier"] == "*"
    assert float(psnr["images"]["value"]) == pytest.approx(hand_psnr(80), abs=1e-4)
    assert int(psnr["images"]["n"]) == 9
    cos = [r for r in rows if r["metric"] == "memorisation_cosine" and r["set"] == "images"]
    assert sorted(r["classifier"] for r in cos) == ["a", "b", "c"]
    assert all(float(r["value"]) == pytest.approx(1.0) for r in cos)

    flat_keys = m["metrics"]
    assert flat_keys["eval/memorisation_psnr_median"] == pytest.approx(hand_psnr(80), abs=1e-4)
    assert flat_keys["eval_reference/memorisation_psnr_median"] == pytest.approx(hand_psnr(5), abs=1e-4)
    assert flat_keys["eval_baseline/memorisation_psnr_max"] == 100.0
    assert flat_keys["eval/memorisation_cosine_median/b"] == pytest.approx(1.0)
    assert flat_keys["eval_reference/memorisation_cosine_max/c"] == pytest.approx(R)
    assert flat_keys["eval/spurious_rate/a"] == pytest.approx(5 / 9)  # the existing keys are untouched
