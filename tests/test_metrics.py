"""Evaluation metrics (METHOD.md, 'Evaluation'), checked against hand-computed and brute-force values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spurgen.eval import metrics as M


def test_wilson_known_values():
    lo, hi = M.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = M.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = M.wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    assert all(np.isnan(M.wilson_interval(0, 0)))


def test_bootstrap_is_seeded_and_brackets_the_mean():
    x = np.random.default_rng(1).random(50)
    a = M.bootstrap_mean_interval(x, seed=3)
    assert a == M.bootstrap_mean_interval(x, seed=3)
    assert a != M.bootstrap_mean_interval(x, seed=4)
    assert a[0] < x.mean() < a[1]
    assert M.mean_with_bootstrap(x, 0)["value"] == pytest.approx(x.mean())


def test_consistency_all_and_at_least_half():
    hits = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], bool)
    c = M.consistency(hits)
    assert c["all"]["value"] == 0.25 and c["at_least_half"]["value"] == 0.5  # ceil(3/2) = 2
    assert c["num_classifiers"] == 3
    assert M.consistency(np.array([[1, 0], [0, 0]], bool))["at_least_half"]["value"] == 0.5  # 1 of 2 is half


def _auc_brute(y, s):
    pos, neg = s[y == 1], s[y == 0]
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p, n in itertools.product(pos, neg)]
    return float(np.mean(pairs))


def test_roc_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 30)
        y[:2] = [0, 1]
        s = rng.integers(0, 5, 30).astype(float)  # many ties
        assert M.roc_auc(y, s) == pytest.approx(_auc_brute(y, s))
    assert np.isnan(M.roc_auc(np.ones(3), np.arange(3)))


def _ap_brute(y, s):
    # sklearn's definition: thresholds at each distinct score, highest first
    total, ap, prev_recall = y.sum(), 0.0, 0.0
    for t in sorted(set(s), reverse=True):
        sel = s >= t
        tp = (y[sel] == 1).sum()
        recall, precision = tp / total, tp / sel.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def test_average_precision_matches_sklearn_definition():
    # sklearn's documented example: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.8333...
    assert M.average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.833333, abs=1e-6)
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = rng.integers(0, 2, 25)
        y[0] = 1
        s = rng.integers(0, 6, 25).astype(float)
        assert M.average_precision(y, s) == pytest.approx(_ap_brute(y, s))
    assert M.average_precision([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0


def test_equal_size_ap_is_seeded_and_ratio_free():
    y = np.r_[np.ones(5), np.zeros(50)]
    s = np.r_[np.full(5, 0.9), np.full(50, 0.1)]
    assert M.average_precision_equal_size(y, s, seed=0) == 1.0
    rng = np.random.default_rng(2)
    s = rng.random(55)
    assert M.average_precision_equal_size(y, s, 7) == M.average_precision_equal_size(y, s, 7)


def test_similarity_to_normalised_reference_mean():
    refs = np.array([[2.0, 0.0], [0.0, 5.0]])
    m = M.normalized_mean(refs)
    assert np.allclose(m, [0.5, 0.5])  # each reference normalised before the mean
    cos = M.cosine_to(np.array([[1.0, 1.0], [1.0, 0.0], [-1.0, -1.0]]), m)
    assert np.allclose(cos, [1.0, np.sqrt(0.5), -1.0])
