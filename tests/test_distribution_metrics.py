"""KID and diversity (spurgen/eval/distribution.py): against hand computations and torchmetrics, and where
they land in metrics.json and its flat logger keys."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from spurgen.eval import distribution as D


def _k(a, b, d: int = 2) -> float:
    """KID's kernel written out: (a·b / d + 1)^3."""
    return (sum(x * y for x, y in zip(a, b, strict=True)) / d + 1) ** 3


def test_kid_by_hand_on_two_and_three_points_in_2d():
    """X = {(1,0), (0,1)}, Y = {(1,1), (0,0), (2,0)}, d = 2, k(a,b) = (a·b/2 + 1)^3.
    XX (i != j): x1·x2 = 0 -> k = 1, twice: 2 / (2·1) = 1.
    YY (i != j): y1·y2 = 0 -> 1; y1·y3 = 2 -> 8; y2·y3 = 0 -> 1; each twice: 20 / (3·2) = 10/3.
    XY: x1·(y1,y2,y3) = 1, 0, 2 -> 3.375, 1, 8; x2·(y1,y2,y3) = 1, 0, 0 -> 3.375, 1, 1; sum 17.75, / 6.
    KID = 1 + 10/3 - 2·17.75/6."""
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([[1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    expected = 1 + 10 / 3 - 2 * 17.75 / 6
    assert D.kid(x, y) == pytest.approx(expected, abs=1e-12)
    # the same sums from the kernel itself, every pair listed
    xx = sum(_k(a, b) for a, b in itertools.permutations(x.tolist(), 2)) / 2
    yy = sum(_k(a, b) for a, b in itertools.permutations(y.tolist(), 2)) / 6
    xy = sum(_k(a, b) for a in x.tolist() for b in y.tolist()) / 6
    assert expected == pytest.approx(xx + yy - 2 * xy, abs=1e-12)


def test_kid_is_symmetric_and_near_zero_for_one_distribution():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 8)), rng.normal(size=(30, 8))
    assert D.kid(x, y) == pytest.approx(D.kid(y, x), abs=1e-12)
    far = rng.normal(loc=3.0, size=(30, 8))
    assert abs(D.kid(x, y)) < 0.5 * D.kid(x, far)


def _torchmetrics_kid(x: np.ndarray, y: np.ndarray, subset_size: int, subsets: int) -> float:
    from torchmetrics.image.kid import KernelInceptionDistance

    metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=subsets, subset_size=subset_size)
    metric.update(torch.from_numpy(y), real=True)  # the references
    metric.update(torch.from_numpy(x), real=False)
    mean, _ = metric.compute()
    return float(mean)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_matches_torchmetrics_on_equal_sizes():
    """One subset of the whole set: torchmetrics' estimate is then exactly spurgen's (a permutation of the
    rows changes nothing)."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 16)), rng.normal(loc=0.3, size=(12, 16))
    assert D.kid(x, y) == pytest.approx(_torchmetrics_kid(x, y, 12, 1), rel=1e-9, abs=1e-12)


def test_kid_on_unequal_sizes_is_torchmetrics_averaged_over_every_subset():
    """5 references, 9 images: spurgen's all-sample estimate equals torchmetrics' poly_mmd on 5 images of
    each set, averaged over all C(9, 5) = 126 subsets of the images."""
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(9, 6)), rng.normal(loc=0.5, size=(5, 6))
    ty = torch.from_numpy(y)
    values = [
        float(poly_mmd(ty, torch.from_numpy(x[list(rows)])))
        for rows in itertools.combinations(range(len(x)), len(y))
    ]
    assert D.kid(x, y) == pytest.approx(sum(values) / len(values), rel=1e-9, abs=1e-12)


def test_kid_chunks_give_the_same_sum(monkeypatch):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(23, 5)), rng.normal(size=(7, 5))
    whole = D.kid(x, y)
    monkeypatch.setattr(D, "CHUNK", 4)
    assert D.kid(x, y) == pytest.approx(whole, rel=1e-12, abs=1e-12)


def test_kid_needs_two_of_each_and_one_dimension():
    one, two = np.ones((1, 3)), np.ones((2, 3))
    assert D.kid(one, two) is None and D.kid(two, one) is None
    with pytest.raises(ValueError, match="dimensions differ"):
        D.kid(two, np.ones((2, 4)))


def test_diversity_by_hand():
    """(1,0), (0,1), (1,1): cosines 0, 1/sqrt2, 1/sqrt2 -> distances 1, 1 - 1/sqrt2, 1 - 1/sqrt2;
    mean (3 - sqrt2) / 3. Scaling a row changes nothing."""
    f = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    expected = (3 - math.sqrt(2)) / 3
    assert D.diversity(f) == pytest.approx(expected, abs=1e-12)
    assert D.diversity(f * np.array([[5.0], [0.1], [3.0]])) == pytest.approx(expected, abs=1e-12)
    pairs = [1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in itertools.combinations(f, 2)]
    assert expected == pytest.approx(np.mean(pairs), abs=1e-12)


def test_diversity_edges():
    assert D.diversity(np.ones((4, 3))) == pytest.approx(0.0, abs=1e-12)  # one direction
    assert D.diversity(np.eye(3)) == pytest.approx(1.0)  # orthogonal
    assert D.diversity(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)  # opposite
    assert D.diversity(np.array([[1.0, 0.0], [0.0, 0.0]])) == pytest.approx(1.0)  # a zero row: cosine 0
    assert D.diversity(np.ones((1, 3))) is None


def test_distribution_numbers_and_flat_keys():
    """KID for a set with reference features, diversity for every set; both reach metrics.json's per-classifier
    block and the flat logger keys, and the reference set has no KID to itself."""
    from spurgen.eval.predict import Predictions
    from spurgen.eval.summary import add_distribution, flat_metrics, set_numbers

    rng = np.random.default_rng(4)

    def pred(n: int) -> Predictions:
        top5 = np.tile(np.arange(5), (n, 1))
        return Predictions(top5, np.full((n, 5), 0.2), np.full(n, 0.2), rng.normal(size=(n, 8)))

    images, refs = pred(6), pred(3)
    feats = {"c": refs.features}
    got = set_numbers({"c": images}, 0, ["t"] * 6, 0, 10)
    add_distribution(got, {"c": images}, feats)
    nums = got["per_classifier"]["c"]
    assert nums["kid"] == {
        "value": pytest.approx(D.kid(images.features, refs.features)),
        "n": 6,
        "n_reference": 3,
    }
    assert nums["diversity"] == {"value": pytest.approx(D.diversity(images.features)), "n": 6}
    assert "kid" not in got["per_template"]["t"]["per_classifier"]["c"]  # whole set only
    own = set_numbers({"c": refs}, 0, [None] * 3, 0, 10)
    add_distribution(own, {"c": refs}, None)
    assert "kid" not in own["per_classifier"]["c"] and "diversity" in own["per_classifier"]["c"]
    flat = flat_metrics({"images": got, "reference": own}, {})
    assert flat["eval/kid/c"] == nums["kid"]["value"]
    assert flat["eval/diversity/c"] == nums["diversity"]["value"]
    assert "eval_reference/diversity/c" in flat and "eval_reference/kid/c" not in flat
