"""Memorisation check: how close each image comes to its nearest reference image.

Two distances per image, each reported as a distribution over the set (n, mean, median, p05, p95, min, max):

- nearest-reference PSNR (dB): both images decoded as RGB (spurgen.data.images.load_rgb), resized without
  crop (PIL bicubic, antialiased) to COMPARE_SIZE x COMPARE_SIZE, values in [0, 1], peak 1:
  PSNR = 10 log10(1 / MSE), MSE over every pixel and channel; the nearest reference is the one with the
  highest PSNR (lowest MSE). An exact copy (MSE 0) and anything closer than PSNR_CAP_DB report PSNR_CAP_DB,
  so metrics.json stays finite, strict JSON.
- nearest-reference feature cosine, per classifier: max over references of cos(phi(x), phi(x_ref)), with phi
  the features the evaluation already computed (Predictions.features).

Generated and baseline images are compared with every reference; the reference set is compared with itself
leaving each image out (its nearest *other* reference), which is the yardstick: a generated image far closer
to a reference than the references are to each other suggests copying. A single reference has no other
reference: its numbers are None.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from spurgen.data.images import load_rgb
from spurgen.eval.imagesets import ImageSet
from spurgen.eval.predict import SetPredictions

log = logging.getLogger("spurgen")

COMPARE_SIZE = 64  # pixels per side for PSNR: fixed, so a set's numbers do not depend on other sets' sizes
PSNR_CAP_DB = 100.0  # an exact copy (infinite PSNR) reports this; differing 8-bit images stay below
CHUNK = 256  # images per block (bounds memory: CHUNK x COMPARE_SIZE² x 3 float32 per block)
REFERENCE = "reference"


def load_small(path: str | Path, size: int = COMPARE_SIZE) -> np.ndarray:
    """One image as a flat float32 vector (size * size * 3) in [0, 1]: RGB, resized without crop."""
    im = load_rgb(path)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return (np.asarray(im, dtype=np.float32) / 255.0).reshape(-1)


def load_pixels(paths: Sequence[str | Path], size: int = COMPARE_SIZE) -> np.ndarray:
    """(N, size * size * 3) float32: load_small of every path."""
    if not paths:
        return np.zeros((0, size * size * 3), dtype=np.float32)
    return np.stack([load_small(p, size) for p in paths])


def psnr_db(mse: np.ndarray) -> np.ndarray:
    """PSNR in dB for images in [0, 1] (peak 1): 10 log10(1 / MSE), capped at PSNR_CAP_DB (MSE 0 included)."""
    mse = np.asarray(mse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        db = -10.0 * np.log10(mse)
    return np.minimum(db, PSNR_CAP_DB)


def nearest_mse(images: np.ndarray, refs: np.ndarray, self_index: np.ndarray | None = None) -> np.ndarray:
    """(N,) min over references of the mean squared difference. self_index[i] is a reference row that image i
    must skip (leave-one-out: the image itself) or -1; an image with no reference left gets +inf."""
    if len(refs) == 0:
        return np.full(len(images), np.inf)
    mse = np.stack([((images - r) ** 2).mean(axis=1, dtype=np.float64) for r in refs], axis=1)  # (N, R)
    if self_index is not None:
        rows = np.flatnonzero(self_index >= 0)
        mse[rows, self_index[rows]] = np.inf
    return mse.min(axis=1)


def nearest_psnr(paths: Sequence[str | Path], refs: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
    """(N,) nearest-reference PSNR (dB) of the images at `paths` against refs (load_pixels), read CHUNK images
    at a time. leave_one_out: `paths` are the references themselves, in refs' order; each skips itself."""
    out = []
    for start in range(0, len(paths), CHUNK):
        chunk = paths[start : start + CHUNK]
        own = np.arange(start, start + len(chunk)) if leave_one_out else None
        pixels = refs[start : start + len(chunk)] if leave_one_out else load_pixels(chunk)
        out.append(psnr_db(nearest_mse(pixels, refs, own)))
    return np.concatenate(out) if out else np.zeros(0)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    f = np.asarray(x, dtype=np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def nearest_cosine(features: np.ndarray, ref_features: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
    """(N,) max over references of cos(phi(x), phi(x_ref)). leave_one_out: `features` are the references'
    own (same rows as ref_features); row i skips reference i. No reference left: -inf."""
    f, r = _unit_rows(features), _unit_rows(ref_features)
    out = []
    for start in range(0, len(f), CHUNK):
        cos = f[start : start + CHUNK] @ r.T  # (chunk, R)
        if leave_one_out:
            rows = np.arange(cos.shape[0])
            cos[rows, rows + start] = -np.inf
        out.append(cos.max(axis=1) if cos.shape[1] else np.full(cos.shape[0], -np.inf))
    return np.concatenate(out) if out else np.zeros(0)


def distribution(values: np.ndarray) -> dict | None:
    """{n, mean, median, p05, p95, min, max} of the values (percentiles with linear interpolation); None
    when there are none."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return None
    p05, median, p95 = np.percentile(v, [5, 50, 95])
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "median": float(median),
        "p05": float(p05),
        "p95": float(p95),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def measure_memorisation(sets: Mapping[str, ImageSet], preds: Mapping[str, SetPredictions]) -> dict:
    """{set: {"psnr_db": distribution, "feature_cosine": {classifier: distribution}}} for every set (the
    references against each other, leave-one-out), or {} without a reference set. With a single reference
    the reference set's distributions are None."""
    if REFERENCE not in sets:
        return {}
    ref_paths = sets[REFERENCE].paths
    refs = load_pixels(ref_paths)
    ref_feats = {c: p.features for c, p in preds[REFERENCE].per_classifier.items()}
    out = {}
    for name, s in sets.items():
        own = name == REFERENCE
        if own and len(ref_paths) < 2:
            out[name] = {"psnr_db": None, "feature_cosine": dict.fromkeys(ref_feats)}
            continue
        psnr = nearest_psnr(ref_paths if own else s.paths, refs, own)
        cos = {
            c: distribution(nearest_cosine(p.features, ref_feats[c], own))
            for c, p in preds[name].per_classifier.items()
        }
        out[name] = {"psnr_db": distribution(psnr), "feature_cosine": cos}
    return out


def log_memorisation(memo: dict) -> None:
    """One line per set: nearest-reference PSNR (median, p95, max) and each classifier's median cosine."""
    for name, m in memo.items():
        psnr = m["psnr_db"]
        if psnr is None:
            log.info("memorisation %s: a single reference, nothing to compare it with", name)
            continue
        cos = ", ".join(f"{c} {d['median']:.3f}" for c, d in m["feature_cosine"].items() if d)
        log.info(
            "memorisation %s (n=%d): nearest-reference PSNR median %.2f dB (p95 %.2f, max %.2f); "
            "nearest-reference cosine median %s",
            name,
            psnr["n"],
            psnr["median"],
            psnr["p95"],
            psnr["max"],
            cos or "-",
        )
