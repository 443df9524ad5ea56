"""The numbers of METHOD.md's 'Evaluation' section, in numpy (no sklearn).

- spurious rate / top-5 rate / consistency are proportions: 95% Wilson score interval.
- mean p_c(k|x) is not a proportion: seeded percentile bootstrap interval.
- spurious score: ROC-AUC (side-by-side number) and average precision (the official number; same
  definition as sklearn.metrics.average_precision_score, which Spurious ImageNet's code calls "AUC").
- similarity: cos(phi(x), m), m = mean over references of phi(x_ref)/||phi(x_ref)||.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # standard normal quantile 0.975


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for a proportion: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def bootstrap_mean_interval(
    values: np.ndarray, seed: int = 0, num_samples: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, reproducible from `seed`."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(num_samples, values.size))
    means = values[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def proportion(hits: np.ndarray) -> dict:
    """{value, ci: [lo, hi], n} for a boolean array."""
    hits = np.asarray(hits, dtype=bool)
    n, k = int(hits.size), int(hits.sum())
    lo, hi = wilson_interval(k, n)
    return {"value": k / n if n else float("nan"), "ci": [lo, hi], "n": n, "count": k}


def mean_with_bootstrap(values: np.ndarray, seed: int, num_samples: int = 1000) -> dict:
    values = np.asarray(values, dtype=np.float64)
    lo, hi = bootstrap_mean_interval(values, seed, num_samples)
    return {
        "value": float(values.mean()) if values.size else float("nan"),
        "ci": [lo, hi],
        "n": int(values.size),
    }


def consistency(predicted_target: np.ndarray) -> dict:
    """predicted_target: (N images, C classifiers) bool, argmax == k. Fraction predicted as k by all
    classifiers and by at least half of them (ceil(C/2)), with Wilson intervals."""
    hits = np.asarray(predicted_target, dtype=bool)
    if hits.ndim != 2:
        raise ValueError(f"expected (images, classifiers), got shape {hits.shape}")
    counts = hits.sum(axis=1)
    c = hits.shape[1]
    return {
        "all": proportion(counts == c),
        "at_least_half": proportion(counts >= math.ceil(c / 2)),
        "num_classifiers": c,
    }


def _rank_average(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    start = 0
    while start < x.size:
        end = start
        while end + 1 < x.size and sorted_x[end + 1] == sorted_x[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties count 1/2
    (Mann-Whitney U / (P·N)). NaN unless both classes are present."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = _rank_average(scores)
    u = ranks[labels].sum() - pos * (pos + 1) / 2.0
    return float(u / (pos * neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over distinct score thresholds, highest first (sklearn's
    average_precision_score, which Spurious ImageNet reports as its spurious score)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    total_pos = int(labels.sum())
    if total_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_threshold = np.r_[np.where(np.diff(s) != 0)[0], s.size - 1]
    tps = np.cumsum(y)[last_of_threshold]
    fps = (last_of_threshold + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / total_pos
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


def average_precision_equal_size(
    labels: np.ndarray, scores: np.ndarray, seed: int = 0, draws: int = 20
) -> float:
    """AP on subsamples with as many negatives as positives (or vice versa), averaged over seeded draws:
    AP depends on the class ratio, so this is the version comparable across image sets."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = np.where(labels)[0], np.where(~labels)[0]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    m = min(pos.size, neg.size)
    rng = np.random.default_rng(seed)
    aps = []
    for _ in range(draws):
        idx = np.r_[rng.choice(pos, m, replace=False), rng.choice(neg, m, replace=False)]
        aps.append(average_precision(labels[idx], scores[idx]))
    return float(np.mean(aps))


def normalized_mean(features: np.ndarray) -> np.ndarray:
    """m = mean_r phi(x_r) / ||phi(x_r)||  (METHOD.md, the SFSL target and the similarity reference)."""
    f = np.asarray(features, dtype=np.float64)
    return (f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)).mean(axis=0)


def cosine_to(features: np.ndarray, m: np.ndarray) -> np.ndarray:
    """cos(phi(x), m) for each row."""
    f = np.asarray(features, dtype=np.float64)
    num = f @ m
    den = np.maximum(np.linalg.norm(f, axis=1) * np.linalg.norm(m), 1e-12)
    return num / den
