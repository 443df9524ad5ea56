"""From predictions to METHOD.md's numbers: per classifier, per prompt template, per image set."""

from __future__ import annotations

import math

import numpy as np

from spurgen.eval import metrics as M
from spurgen.eval.distribution import distribution_numbers
from spurgen.eval.imagesets import ReferencePool
from spurgen.eval.plan import EvalPlan
from spurgen.eval.predict import Predictions, SetPredictions


def classifier_numbers(
    pred: Predictions, target: int, idx: np.ndarray, seed: int, bootstrap: int, ref_mean: np.ndarray | None
) -> dict:
    """Spurious rate and top-5 rate (Wilson), mean p(k|x) (bootstrap), similarity cos(phi, m)."""
    out = {
        "spurious_rate": M.proportion(pred.argmax[idx] == target),
        "top5_rate": M.proportion((pred.top5[idx] == target).any(axis=1)),
        "mean_p_target": M.mean_with_bootstrap(pred.p_target[idx], seed, bootstrap),
    }
    if ref_mean is not None and idx.size:
        cos = M.cosine_to(pred.features[idx], ref_mean)
        out["similarity"] = {"value": float(cos.mean()), "std": float(cos.std()), "n": int(idx.size)}
    return out


def set_numbers(
    preds: dict[str, Predictions],
    target: int,
    templates: list[str | None],
    seed: int,
    bootstrap: int,
    ref_means: dict[str, np.ndarray] | None = None,
) -> dict:
    """All numbers for one image set, overall and per prompt template."""
    names = list(preds)
    n = len(next(iter(preds.values())).top5)

    def block(idx: np.ndarray) -> dict:
        hits = np.stack([preds[c].argmax[idx] == target for c in names], axis=1)  # (n, C)
        return {
            "num_images": int(idx.size),
            "per_classifier": {
                c: classifier_numbers(preds[c], target, idx, seed, bootstrap, (ref_means or {}).get(c))
                for c in names
            },
            "consistency": M.consistency(hits),
        }

    result = block(np.arange(n))
    per_template = {}
    for tmpl in dict.fromkeys(t for t in templates if t is not None):
        idx = np.array([i for i, t in enumerate(templates) if t == tmpl])
        per_template[tmpl] = block(idx)
    result["per_template"] = per_template
    result["images_per_s"] = {c: _finite(p.images_per_s) for c, p in preds.items()}
    return result


def add_distribution(
    numbers: dict, preds: dict[str, Predictions], ref_features: dict[str, np.ndarray] | None
) -> None:
    """Over the whole set (not per template), each classifier's diversity and, with ref_features (the
    references' phi; not given for the reference set itself), its KID to the references
    (spurgen.eval.distribution), into numbers["per_classifier"][c]."""
    for c, nums in numbers["per_classifier"].items():
        nums.update(distribution_numbers(preds[c].features, (ref_features or {}).get(c)))


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 2)


def score_block(val: np.ndarray, spurious: np.ndarray, seed: int) -> dict:
    """p_c(k|x) of class-k validation images (label 1) against spurious images (label 0)."""
    labels = np.r_[np.ones(len(val)), np.zeros(len(spurious))]
    scores = np.r_[val, spurious]
    return {
        "roc_auc": M.roc_auc(labels, scores),
        "ap": M.average_precision(labels, scores),
        "ap_equal_size": M.average_precision_equal_size(labels, scores, seed),
        "num_spurious": len(spurious),
    }


def spurious_score(val: Predictions, others: dict[str, Predictions], seed: int) -> dict:
    """Spurious ImageNet's spurious score for one classifier: class-k validation images (label 1) against
    each set of spurious images (label 0), scored by p_c(k|x). ROC-AUC is the side-by-side number; AP and
    AP on equal-size subsamples are reported too. 1 = no reliance on the feature."""
    out: dict = {"num_val": len(val.p_target)}
    for name, pred in others.items():
        out[name] = score_block(val.p_target, pred.p_target, seed)
    return out


def pooled_reference(
    val: Predictions, reference: Predictions, other: Predictions | None, pool: ReferencePool | None
) -> dict:
    """The official spurious score of the reference class: Spurious ImageNet's code scores a class with the
    images of ALL its components (every images/ folder of class k), not only the component a run trained on.
    Keys `*_all_components`, beside the set's own (per-component) `ap` and `roc_auc`. A plain reference
    folder has no components: the pooled numbers are the set's own and `pooled_over_components` is false."""
    spurious = reference.p_target if other is None else np.r_[reference.p_target, other.p_target]
    labels = np.r_[np.ones(len(val.p_target)), np.zeros(len(spurious))]
    scores = np.r_[val.p_target, spurious]
    return {
        "ap_all_components": M.average_precision(labels, scores),  # the official number
        "roc_auc_all_components": M.roc_auc(labels, scores),
        "num_spurious_all_components": len(spurious),
        "pooled_over_components": pool is not None,
        "component": pool.component if pool else None,
        "components": pool.components if pool else None,
    }


def measure_sets(
    plan: EvalPlan,
    preds: dict[str, SetPredictions],
    val: SetPredictions | None,
    seed: int,
    bootstrap: int,
    other_components: SetPredictions | None = None,
) -> tuple[dict, dict]:
    """(numbers per image set, spurious score per classifier). Similarity is to each classifier's normalised
    mean reference feature m, and KID is to the reference features, when a reference set was predicted;
    diversity is measured on every set. other_components: predictions on the images of the reference class's
    other Spurious ImageNet components (plan.reference_pool.others)."""
    ref_means, ref_features = None, None
    if "reference" in preds:
        ref_features = {c: p.features for c, p in preds["reference"].per_classifier.items()}
        ref_means = {c: M.normalized_mean(f) for c, f in ref_features.items()}
    numbers = {
        name: set_numbers(
            p.per_classifier, plan.target, plan.sets[name].templates, seed, bootstrap, ref_means
        )
        for name, p in preds.items()
    }
    for name, p in preds.items():
        add_distribution(numbers[name], p.per_classifier, None if name == "reference" else ref_features)
    scores = {}
    if val is not None:
        for c, vp in val.per_classifier.items():
            scores[c] = spurious_score(vp, {n: p.per_classifier[c] for n, p in preds.items()}, seed)
            if "reference" in preds:
                other = other_components.per_classifier[c] if other_components else None
                scores[c]["reference"].update(
                    pooled_reference(vp, preds["reference"].per_classifier[c], other, plan.reference_pool)
                )
    return numbers, scores


SET_PREFIX = {"images": "eval", "reference": "eval_reference", "baseline": "eval_baseline"}


def memorisation_metrics(memo: dict[str, dict]) -> dict[str, float]:
    """Flat keys of the memorisation check (spurgen.eval.memorisation): <split>/memorisation_psnr_{median,max}
    and <split>/memorisation_cosine_{median,max}/<classifier>; a set without numbers (a single reference)
    has none."""
    flat: dict[str, float] = {}
    for set_name, m in memo.items():
        pre = SET_PREFIX.get(set_name, f"eval_{set_name}")
        for stat in ("median", "max"):
            if m["psnr_db"] is not None:
                flat[f"{pre}/memorisation_psnr_{stat}"] = m["psnr_db"][stat]
            for c, d in m["feature_cosine"].items():
                if d is not None:
                    flat[f"{pre}/memorisation_cosine_{stat}/{c}"] = d[stat]
    return flat


def flat_metrics(
    sets: dict[str, dict], scores: dict[str, dict], memorisation: dict[str, dict] | None = None
) -> dict[str, float]:
    """`split/name/<classifier>` keys for loggers: eval/... for the evaluated images, eval_reference/...,
    eval_baseline/... (name: spurious_rate, top5_rate, mean_p_target, similarity, kid, diversity; kid not for
    the reference set); eval_reference/spurious_score_{ap,auc}_all_components/<c> is the official score (all the
    class's components) beside eval_reference/spurious_score_{ap,auc}/<c> (the reference set's component);
    with a memorisation check, its keys (memorisation_metrics)."""
    flat: dict[str, float] = {}
    for set_name, numbers in sets.items():
        pre = SET_PREFIX.get(set_name, f"eval_{set_name}")
        for c, nums in numbers["per_classifier"].items():
            for key in ("spurious_rate", "top5_rate", "mean_p_target", "similarity", "kid", "diversity"):
                if key in nums:
                    flat[f"{pre}/{key}/{c}"] = nums[key]["value"]
        flat[f"{pre}/consistency_all"] = numbers["consistency"]["all"]["value"]
        flat[f"{pre}/consistency_at_least_half"] = numbers["consistency"]["at_least_half"]["value"]
    for c, s in scores.items():
        for set_name in SET_PREFIX:
            if set_name in s:
                pre = SET_PREFIX[set_name]
                flat[f"{pre}/spurious_score_auc/{c}"] = s[set_name]["roc_auc"]
                flat[f"{pre}/spurious_score_ap/{c}"] = s[set_name]["ap"]
        if "reference" in s:  # the official number: AP pooled over all the class's components
            flat[f"eval_reference/spurious_score_ap_all_components/{c}"] = s["reference"]["ap_all_components"]
            flat[f"eval_reference/spurious_score_auc_all_components/{c}"] = s["reference"][
                "roc_auc_all_components"
            ]
    flat.update(memorisation_metrics(memorisation or {}))
    return flat
