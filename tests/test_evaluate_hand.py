"""Every evaluation number against values computed by hand (METHOD.md, 'Evaluation').

The classifiers here answer from a table: each test image is one flat colour whose red channel encodes an
image id, and a lookup classifier (built through eval.classifiers' `_target_`, like any other) returns, for
that id, a probability vector whose target probability q and target rank r the table fixes. So the rates,
intervals, consistency, per-template numbers and spurious scores of the whole pipeline (image files ->
manifest -> preprocessing -> predictions -> numbers -> metrics.json / CSV / flat keys) have known values.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from spurgen.config import EvalConfig
from spurgen.eval import metrics as M
from spurgen.models.extractors import FrozenImageModel
from spurgen.stages.evaluate import evaluate

K = 94  # the target class (hummingbird)
ID_STEP = 5  # red = id * ID_STEP / 255: ids stay apart under resizing and float rounding
SEED, BOOTSTRAP = 3, 300
A, B = "{prompt}", "{prompt} on the beach"  # two prompt templates

# Generated images: id -> (file name, template). File names do not sort in id order, and the manifest is
# written in id order, so a mix-up of files, templates and predictions changes the numbers.
GENERATED = {
    0: ("q.png", A),
    1: ("c.png", B),
    2: ("x.png", A),
    3: ("a.png", B),
    4: ("m.png", B),
    5: ("f.png", A),
    6: ("z.png", B),
    7: ("b.png", A),
    8: ("k.png", B),
}
TEMPLATE_IDS = {A: [0, 2, 5, 7], B: [1, 3, 4, 6, 8]}

# (rank of the target class, p(target)) per classifier, per image id.
# 0-8 generated; 20-22 the reference component (1); 23-24 the class's other component (2); 25 class 565;
# 40-43 ImageNet validation images of class 94.
TABLE: dict[str, dict[int, tuple[int, float]]] = {
    "a": {
        **{0: (1, 0.9), 1: (1, 0.8), 2: (2, 0.3), 3: (1, 0.6), 4: (7, 0.01), 5: (1, 0.7)},
        **{6: (3, 0.2), 7: (1, 0.5), 8: (6, 0.02)},
        **{20: (1, 0.7), 21: (2, 0.3), 22: (1, 0.5), 23: (1, 0.85), 24: (4, 0.15), 25: (1, 0.95)},
        **{40: (1, 0.9), 41: (1, 0.75), 42: (2, 0.4), 43: (1, 0.6)},
    },
    "b": {
        **{0: (1, 0.6), 1: (2, 0.4), 2: (1, 0.8), 3: (1, 0.9), 4: (1, 0.5), 5: (4, 0.1)},
        **{6: (8, 0.05), 7: (1, 0.7), 8: (1, 0.3)},
        **{20: (1, 0.6), 21: (2, 0.35), 22: (3, 0.2), 23: (2, 0.35), 24: (1, 0.45), 25: (1, 0.9)},
        **{40: (1, 0.8), 41: (3, 0.25), 42: (1, 0.65), 43: (1, 0.5)},
    },
    "c": {
        **{0: (1, 0.95), 1: (3, 0.1), 2: (2, 0.2), 3: (1, 0.4), 4: (2, 0.3), 5: (1, 0.6)},
        **{6: (9, 0.01), 7: (2, 0.25), 8: (1, 0.35)},
        **{20: (5, 0.05), 21: (1, 0.65), 22: (6, 0.03), 23: (1, 0.4), 24: (6, 0.02), 25: (1, 0.9)},
        **{40: (1, 0.7), 41: (1, 0.9), 42: (7, 0.02), 43: (1, 0.55)},
    },
}
# phi(x) per id (the same for every classifier): the references' normalised mean points along (1, 1).
FEATURES = {0: (1, 1), 1: (2, 0), 2: (0, 3), 3: (1, -1), 4: (-1, -1), 5: (5, 5), 6: (1, 0), 7: (1, -1)}
FEATURES |= {8: (0, 1), 20: (1, 0), 21: (0, 2), 22: (3, 3)}


def probabilities(rank: int, q: float) -> np.ndarray:
    """A distribution over 1000 classes with p(K) = q at the given rank: rank-1 classes above it share 90%
    of the rest, the others share 10%."""
    p = np.empty(1000)
    above = [(K + j) % 1000 for j in range(1, rank)]
    h = 0.9 * (1 - q) / max(rank - 1, 1)
    rest = (1 - q - h * len(above)) / (1000 - rank)
    assert all(x > q for x in [h] * len(above)) and rest < q  # the rank really is `rank`
    p[:] = rest
    p[above] = h
    p[K] = q
    return p


class LookupNet(nn.Module):
    """id (from the red channel) -> phi = FEATURES[id] -> logits = log TABLE[column][id] (in `head`)."""

    def __init__(self, column: str):
        super().__init__()
        ids = sorted(TABLE[column])
        feats = torch.ones(max(ids) + 1, 2)
        for i, f in FEATURES.items():
            feats[i] = torch.tensor(f, dtype=torch.float32)
        self.register_buffer("feats", feats)
        self.head = Head({i: probabilities(*TABLE[column][i]) for i in ids})

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) in [0, 1], not normalised
        ids = torch.round(x[:, 0].mean(dim=(1, 2)) * 255 / ID_STEP).long()
        return self.head(self.feats[ids], ids)


class Head(nn.Module):
    """The final layer: phi (its input, what FrozenImageModel records) and the id -> log p(class)."""

    def __init__(self, probs: dict[int, np.ndarray]):
        super().__init__()
        logp = torch.full((max(probs) + 1, 1000), -1e4)
        for i, p in probs.items():
            logp[i] = torch.from_numpy(np.log(p))
        self.register_buffer("logp", logp)

    def forward(self, feats: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        return self.logp[ids]


def lookup_classifier(column: str, name: str = "lookup") -> FrozenImageModel:
    """The eval.classifiers builder of these tests: a frozen classifier answering from TABLE[column]."""
    return FrozenImageModel(LookupNet(column), "head", 16, normalizes_inside=True, name=name)


def write_ids(folder: Path, ids: dict[int, str], size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, file in ids.items():
        Image.new("RGB", (size, size), (i * ID_STEP, 128, 77)).save(folder / file)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hand")
    gen = root / "generated"
    write_ids(gen, {i: f for i, (f, _) in GENERATED.items()}, 40)
    lines = [
        json.dumps(
            {"file": f, "template": t, "prompt": t.format(prompt="a photo of a sks flower"), "seed": i}
        )
        for i, (f, t) in GENERATED.items()
    ]
    (gen / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    si = root / "spurious_imagenet" / "images"
    write_ids(si / "spurious_imagenet_94_hummingbird_1", {20: "r0.png", 21: "r1.png", 22: "r2.png"}, 48)
    write_ids(si / "spurious_imagenet_94_hummingbird_2", {23: "s0.png", 24: "s1.png"}, 48)
    write_ids(si / "spurious_imagenet_565_freight_0", {25: "t0.png"}, 48)
    (si / "spurious_imagenet_94_hummingbird_3").mkdir()  # an empty component: nothing to pool, no error
    (si / "timestamp.txt").write_text("2\n")
    write_ids(root / "val", {40: "v0.png", 41: "v1.png", 42: "v2.png", 43: "v3.png"}, 64)
    return {"root": root, "generated": gen, "si": si, "val": root / "val"}


def eval_cfg(reference: Path, val: Path):
    node = {c: {"_target_": f"{__name__}.lookup_classifier", "column": c} for c in TABLE}
    cfg = OmegaConf.structured(EvalConfig(seed=SEED))
    return OmegaConf.merge(
        cfg,
        {
            "classifiers": node,
            "reference_dir": str(reference),
            "imagenet_val_dir": str(val),
            "bootstrap_samples": BOOTSTRAP,
            "device": "cpu",
            "batch_size": 4,  # several batches per set
            "channels_last": False,
        },
    )


@pytest.fixture(scope="module")
def result(dirs, tmp_path_factory) -> tuple[dict, Path]:
    """A run's evaluation: its reference folder is the component folder (what training records)."""
    out = tmp_path_factory.mktemp("hand_out")
    ref = dirs["si"] / "spurious_imagenet_94_hummingbird_1"
    return evaluate(eval_cfg(ref, dirs["val"]), dirs["generated"], out, K), out


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval, by its formula."""
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


def check_proportion(got: dict, k: int, n: int) -> None:
    assert got["count"] == k and got["n"] == n and got["value"] == pytest.approx(k / n, abs=1e-12)
    lo, hi = wilson(k, n)
    assert got["ci"][0] == pytest.approx(lo, abs=1e-9) and got["ci"][1] == pytest.approx(hi, abs=1e-9)


def check_mean(got: dict, values: list[float]) -> None:
    """The mean by hand; its seeded percentile bootstrap interval lies within the values' range, around the
    mean, and is exactly the bootstrap of these values with eval.seed."""
    assert got["n"] == len(values) and got["value"] == pytest.approx(sum(values) / len(values), abs=1e-5)
    lo, hi = got["ci"]
    assert min(values) - 1e-5 <= lo <= got["value"] <= hi <= max(values) + 1e-5 and lo < hi
    assert (lo, hi) == pytest.approx(M.bootstrap_mean_interval(np.array(values), SEED, BOOTSTRAP), abs=1e-5)


# Hand counts. Top-1 hits (rank 1) and top-5 hits (rank <= 5) per classifier, per image id:
#   a: top-1 {0,1,3,5,7}  top-5 {0,1,2,3,5,6,7}
#   b: top-1 {0,2,3,4,7,8}  top-5 all but 6
#   c: top-1 {0,3,5,8}  top-5 all but 6
# Classifiers predicting K per image: 0:3 1:1 2:1 3:3 4:1 5:2 6:0 7:2 8:2 -> all {0,3}, >= 2 of 3 {0,3,5,7,8}.
EXPECTED = {  # set or template -> classifier -> (top-1 hits, top-5 hits, n, p(K) values)
    "images": {
        "a": (5, 7, 9, [0.9, 0.8, 0.3, 0.6, 0.01, 0.7, 0.2, 0.5, 0.02]),
        "b": (6, 8, 9, [0.6, 0.4, 0.8, 0.9, 0.5, 0.1, 0.05, 0.7, 0.3]),
        "c": (4, 8, 9, [0.95, 0.1, 0.2, 0.4, 0.3, 0.6, 0.01, 0.25, 0.35]),
    },
    A: {  # ids 0, 2, 5, 7
        "a": (3, 4, 4, [0.9, 0.3, 0.7, 0.5]),
        "b": (3, 4, 4, [0.6, 0.8, 0.1, 0.7]),
        "c": (2, 4, 4, [0.95, 0.2, 0.6, 0.25]),
    },
    B: {  # ids 1, 3, 4, 6, 8
        "a": (2, 3, 5, [0.8, 0.6, 0.01, 0.2, 0.02]),
        "b": (3, 4, 5, [0.4, 0.9, 0.5, 0.05, 0.3]),
        "c": (2, 4, 5, [0.1, 0.4, 0.3, 0.01, 0.35]),
    },
    "reference": {  # ids 20, 21, 22 (component 1 only)
        "a": (2, 3, 3, [0.7, 0.3, 0.5]),
        "b": (1, 3, 3, [0.6, 0.35, 0.2]),
        "c": (1, 2, 3, [0.05, 0.65, 0.03]),  # rank 5 is inside the top 5, rank 6 is not
    },
}
CONSISTENCY = {"images": (2, 5, 9), A: (1, 3, 4), B: (1, 2, 5), "reference": (0, 1, 3)}  # (all, >= half, n)


IDS = {"images": list(GENERATED), **TEMPLATE_IDS, "reference": [20, 21, 22]}  # the order of EXPECTED's p


def in_file_order(key: str, values: list[float]) -> list[float]:
    """The p(K) values in the order of the files' names (how a set is listed, hence resampled)."""
    names = {**{i: f for i, (f, _) in GENERATED.items()}, 20: "r0.png", 21: "r1.png", 22: "r2.png"}
    by_id = dict(zip(IDS[key], values, strict=True))
    return [by_id[i] for i in sorted(IDS[key], key=names.__getitem__)]


def check_block(block: dict, key: str) -> None:
    for c, (top1, top5, n, p) in EXPECTED[key].items():
        nums = block["per_classifier"][c]
        check_proportion(nums["spurious_rate"], top1, n)
        check_proportion(nums["top5_rate"], top5, n)
        check_mean(nums["mean_p_target"], in_file_order(key, p))
    every, half, n = CONSISTENCY[key]
    assert block["num_images"] == n and block["consistency"]["num_classifiers"] == 3
    check_proportion(block["consistency"]["all"], every, n)
    check_proportion(block["consistency"]["at_least_half"], half, n)


def test_rates_intervals_and_consistency_per_set_and_template(result):
    m, _ = result
    images = m["results"]["images"]
    check_block(images, "images")
    assert set(images["per_template"]) == {A, B}
    check_block(images["per_template"][A], A)
    check_block(images["per_template"][B], B)
    check_block(m["results"]["reference"], "reference")
    assert m["results"]["reference"]["per_template"] == {}  # no manifest, no templates


def test_bootstrap_interval_is_the_seeded_percentile_bootstrap(result):
    """The mean p(K) interval of classifier a on the images, resampled here step by step."""
    got = result[0]["results"]["images"]["per_classifier"]["a"]["mean_p_target"]["ci"]
    values = np.array(in_file_order("images", EXPECTED["images"]["a"][3]))
    rng = np.random.default_rng(SEED)
    means = values[rng.integers(0, 9, size=(BOOTSTRAP, 9))].mean(axis=1)  # B resamples of the 9 values
    assert got == pytest.approx([np.quantile(means, 0.025), np.quantile(means, 0.975)], abs=1e-5)
    other = M.bootstrap_mean_interval(values, SEED + 1, BOOTSTRAP)
    assert tuple(got) != pytest.approx(other, abs=1e-9)  # the seed matters


def test_similarity_to_the_reference_mean(result):
    """m = mean of (1,0), (0,1), (1,1)/sqrt2 points along (1, 1): cos is 1, sqrt(1/2), 0 or -1 by hand."""
    sim = result[0]["results"]["images"]["per_classifier"]["b"]["similarity"]
    r = math.sqrt(0.5)
    cos = [1, r, r, 0, -1, 1, r, 0, r]  # ids 0..8
    assert sim["value"] == pytest.approx(np.mean(cos), abs=1e-5) and sim["n"] == 9
    assert sim["std"] == pytest.approx(np.std(cos), abs=1e-5)
    ref = result[0]["results"]["reference"]["per_classifier"]["a"]["similarity"]
    assert ref["value"] == pytest.approx((r + r + 1) / 3, abs=1e-5)


def test_spurious_score_by_hand(result):
    """Classifier a: validation p(K) = 0.9, 0.75, 0.4, 0.6 (label 1) against each set (label 0)."""
    score = result[0]["spurious_score"]["a"]
    assert score["num_val"] == 4
    ref = score["reference"]
    # component 1: 0.9P 0.75P 0.7N 0.6P 0.5N 0.4P 0.3N. AP = (1 + 1 + 3/4 + 4/6) / 4; AUC = (3+3+2+1)/12
    assert ref["ap"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4) and ref["roc_auc"] == pytest.approx(9 / 12)
    assert ref["num_spurious"] == 3
    # pooled with component 2 (0.85, 0.15), never class 565's 0.95:
    # 0.9P 0.85N 0.75P 0.7N 0.6P 0.5N 0.4P 0.3N 0.15N. AP = (1 + 2/3 + 3/5 + 4/7) / 4; AUC = (5+4+3+2)/20
    assert ref["ap_all_components"] == pytest.approx((1 + 2 / 3 + 3 / 5 + 4 / 7) / 4)
    assert ref["roc_auc_all_components"] == pytest.approx(14 / 20)
    assert ref["num_spurious_all_components"] == 5 and ref["components"] == [1, 2] and ref["component"] == 1
    assert ref["pooled_over_components"] is True
    # generated, with ties at 0.9 and 0.6 (a tie counts 1/2 in the AUC; one threshold per distinct score in AP):
    # AUC = (8.5 + 7 + 5.5 + 4) / 36. AP thresholds 0.9 (tp 1, fp 1), 0.75 (2, 2), 0.6 (3, 4), 0.4 (4, 5).
    gen = score["images"]
    assert gen["roc_auc"] == pytest.approx(25 / 36) and gen["num_spurious"] == 9
    assert gen["ap"] == pytest.approx((1 / 2 + 2 / 4 + 3 / 7 + 4 / 9) / 4)
    labels = np.r_[np.ones(4), np.zeros(9)]
    scores = np.r_[[0.9, 0.75, 0.4, 0.6], in_file_order("images", EXPECTED["images"]["a"][3])]
    assert gen["ap_equal_size"] == pytest.approx(
        M.average_precision_equal_size(labels, scores, SEED), abs=1e-5
    )


def test_spurious_score_of_the_other_classifiers(result):
    """b and c against the metric functions (checked by hand and brute force in test_metrics.py), fed the
    p(K) values of this file's table: the right images reach the right side of each score."""
    val = {"b": [0.8, 0.25, 0.65, 0.5], "c": [0.7, 0.9, 0.02, 0.55]}
    pool = {"b": [0.35, 0.45], "c": [0.4, 0.02]}  # component 2
    for c in ("b", "c"):
        score = result[0]["spurious_score"][c]
        for name, negatives in (
            ("images", EXPECTED["images"][c][3]),
            ("reference", EXPECTED["reference"][c][3]),
        ):
            y, s = np.r_[np.ones(4), np.zeros(len(negatives))], np.r_[val[c], negatives]
            assert score[name]["roc_auc"] == pytest.approx(M.roc_auc(y, s), abs=1e-5)
            assert score[name]["ap"] == pytest.approx(M.average_precision(y, s), abs=1e-5)
        y = np.r_[np.ones(4), np.zeros(5)]
        s = np.r_[val[c], EXPECTED["reference"][c][3], pool[c]]
        assert score["reference"]["ap_all_components"] == pytest.approx(M.average_precision(y, s), abs=1e-5)


def test_flat_keys_csv_and_predictions_carry_the_same_numbers(result):
    m, out = result
    flat = m["metrics"]
    assert flat["eval/spurious_rate/a"] == pytest.approx(5 / 9) and flat["eval/top5_rate/c"] == pytest.approx(
        8 / 9
    )
    assert flat["eval/mean_p_target/b"] == pytest.approx(4.35 / 9, abs=1e-5)
    assert flat["eval/consistency_all"] == pytest.approx(2 / 9)
    assert flat["eval/consistency_at_least_half"] == pytest.approx(5 / 9)
    assert flat["eval_reference/spurious_rate/b"] == pytest.approx(1 / 3)
    official = (1 + 2 / 3 + 3 / 5 + 4 / 7) / 4
    assert flat["eval_reference/spurious_score_ap_all_components/a"] == pytest.approx(official)
    assert flat["eval_reference/spurious_score_ap/a"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    rows = list(csv.DictReader((out / "metrics.csv").open()))

    def row(set_name: str, template: str, classifier: str, metric: str) -> dict:
        (r,) = [
            r
            for r in rows
            if (r["set"], r["template"], r["classifier"], r["metric"])
            == (set_name, template, classifier, metric)
        ]
        return r

    r = row("images", B, "b", "spurious_rate")
    assert float(r["value"]) == pytest.approx(3 / 5) and r["n"] == "5"
    assert float(r["ci_low"]) == pytest.approx(wilson(3, 5)[0], abs=1e-9)
    assert float(row("images", A, "*", "consistency_at_least_half")["value"]) == pytest.approx(3 / 4)
    r = row("reference", "all", "a", "spurious_score_ap_all_components")
    assert float(r["value"]) == pytest.approx(official) and r["n"] == "5"
    records = {json.loads(line)["file"]: json.loads(line) for line in (out / "predictions.jsonl").open()}
    for i, (file, template) in GENERATED.items():
        rec = records[file]
        assert rec["template"] == template and rec["seed"] == i
        for c in TABLE:
            assert rec["classifiers"][c]["p_target"] == pytest.approx(TABLE[c][i][1], abs=1e-5)
            assert (rec["classifiers"][c]["top5"][0] == K) == (TABLE[c][i][0] == 1)


def test_plain_reference_folder_has_no_components_to_pool(dirs, tmp_path):
    """The same images in a folder whose name is not a Spurious ImageNet pair: the pooled number is the
    set's own, and says so. Given the images/ root with target.component, the pool is the same as above."""
    plain = tmp_path / "my_refs"
    shutil.copytree(dirs["si"] / "spurious_imagenet_94_hummingbird_1", plain)
    m = evaluate(eval_cfg(plain, dirs["val"]), dirs["generated"], tmp_path / "o1", K)
    ref = m["spurious_score"]["a"]["reference"]
    assert ref["pooled_over_components"] is False and ref["components"] is None
    assert ref["ap_all_components"] == ref["ap"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    assert ref["num_spurious_all_components"] == ref["num_spurious"] == 3
    m = evaluate(eval_cfg(dirs["si"], dirs["val"]), dirs["generated"], tmp_path / "o2", K, component=2)
    ref = m["spurious_score"]["a"]["reference"]
    assert ref["component"] == 2 and ref["components"] == [1, 2] and ref["num_spurious"] == 2
    assert ref["ap_all_components"] == pytest.approx((1 + 2 / 3 + 3 / 5 + 4 / 7) / 4)
