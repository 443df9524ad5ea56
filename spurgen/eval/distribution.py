"""Distribution measures of an image set against the references, on each classifier's features phi(x)
(Predictions.features; METHOD.md, 'Evaluation': "distribution metrics").

- KID (Kernel Inception Distance, Binkowski et al. 2018) of a set X (m images) to the references Y (n
  images), on one classifier's features (d dimensions): the unbiased estimate of the squared maximum mean
  discrepancy with the polynomial kernel k(a, b) = (a·b / d + 1)^3,

      KID = 1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j) - 2/(mn) sum_{i,j} k(x_i, y_j)

  torchmetrics' KernelInceptionDistance computes the same estimate on random subsets of equal size from both
  sets and averages over subsets. A run has few references (5 in the mini world) beside tens of images, so a
  subset could hold at most 5 images of each set. spurgen uses every sample of both sets, once, with no subsets
  and no randomness. With m != n this is the average of torchmetrics' equal-size estimate over all subsets
  of the larger set (tests/test_distribution_metrics.py checks both). The kernel sums are taken CHUNK rows
  at a time, so memory stays bounded and no set is ever too large for subsets to be needed. The estimate is
  unbiased and can be slightly negative; values near 0 mean that the classifier's features do not tell the
  set from the references. It needs at least 2 images in each set (else None).
- Diversity of a set X (m images) on one classifier's features: the mean pairwise cosine distance,

      diversity = 2/(m(m-1)) sum_{i<j} (1 - cos(phi(x_i), phi(x_j)))

  0 when all the images have the same feature direction; 1 when they are orthogonal on average. A zero
  feature vector counts as orthogonal to every other. The references' own diversity is the yardstick: a set
  far below it has collapsed onto fewer looks than the references show. It needs at least 2 images (else None).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("spurgen")

CHUNK = 512  # rows per block of a kernel matrix (bounds memory: CHUNK x n float64 per block)
KID_DEGREE = 3  # KID's polynomial kernel: (a·b / d + 1)^3


def poly_kernel_sum(a: np.ndarray, b: np.ndarray, degree: int = KID_DEGREE) -> float:
    """sum_{i,j} (a_i·b_j / d + 1)^degree over every pair of rows (d = the feature dimension), CHUNK rows of
    `a` at a time."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = a.shape[1]
    total = 0.0
    for start in range(0, len(a), CHUNK):
        block = (a[start : start + CHUNK] @ b.T) / d + 1.0  # (chunk, n)
        total += float((block**degree).sum())
    return total


def _within_mean(x: np.ndarray, degree: int) -> float:
    """1/(m(m-1)) sum_{i!=j} k(x_i, x_j): the kernel over all pairs less its diagonal k(x_i, x_i)."""
    m, d = x.shape
    diagonal = float(((np.einsum("ij,ij->i", x, x) / d + 1.0) ** degree).sum())
    return (poly_kernel_sum(x, x, degree) - diagonal) / (m * (m - 1))


def kid(features: np.ndarray, ref_features: np.ndarray, degree: int = KID_DEGREE) -> float | None:
    """The unbiased MMD² between two feature sets (N, D) and (R, D) with KID's polynomial kernel, on all
    samples (module docstring); None when either set has fewer than 2 rows."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(ref_features, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return None
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"kid: feature dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    cross = poly_kernel_sum(x, y, degree) / (len(x) * len(y))
    return _within_mean(x, degree) + _within_mean(y, degree) - 2.0 * cross


def diversity(features: np.ndarray) -> float | None:
    """Mean over pairs i < j of 1 - cos(phi(x_i), phi(x_j)) (module docstring); None under 2 rows. The sum of
    the pairwise cosines is (||sum_i u_i||² - sum_i ||u_i||²) / 2 with u_i the unit rows, so no N x N matrix
    is formed."""
    f = np.asarray(features, dtype=np.float64)
    m = len(f)
    if m < 2:
        return None
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    u = np.divide(f, norms, out=np.zeros_like(f), where=norms > 0)  # a zero row stays zero: cosine 0
    total = u.sum(axis=0)
    pair_cos = (float(total @ total) - float((u * u).sum())) / 2.0
    return 1.0 - pair_cos / (m * (m - 1) / 2)


def distribution_numbers(features: np.ndarray, ref_features: np.ndarray | None) -> dict:
    """One set's numbers on one classifier, as stored in metrics.json per classifier: `diversity`
    {value, n} and, with reference features (the reference set itself gets none), `kid` {value, n,
    n_reference}. A measure with too few images is left out."""
    out: dict = {}
    div = diversity(features)
    if div is not None:
        out["diversity"] = {"value": div, "n": int(len(features))}
    if ref_features is not None:
        value = kid(features, ref_features)
        if value is not None:
            out["kid"] = {"value": value, "n": int(len(features)), "n_reference": int(len(ref_features))}
    return out


def log_distribution(numbers: dict[str, dict]) -> None:
    """One line per image set: each classifier's KID to the references and diversity (where measured)."""
    for set_name, block in numbers.items():
        parts = []
        for c, nums in block["per_classifier"].items():
            kid_text = f"KID {nums['kid']['value']:.4f}, " if "kid" in nums else ""
            if "diversity" in nums:
                parts.append(f"{c} {kid_text}diversity {nums['diversity']['value']:.3f}")
        if parts:
            log.info("distribution %s (n=%d): %s", set_name, block["num_images"], "; ".join(parts))
