"""Stage 3: measure images across classifiers (METHOD.md, 'Evaluation') and write the reports.

spurgen.eval.plan checks every input cheaply and lists the image sets; only then are the classifiers
(eval.classifiers, `_target_` nodes) built, every set predicted, and the numbers written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from spurgen import imagenet
from spurgen.config import METHOD_VERSION
from spurgen.eval import outputs
from spurgen.eval.classifiers import build_classifiers, random_classifiers
from spurgen.eval.distribution import log_distribution
from spurgen.eval.memorisation import log_memorisation, measure_memorisation
from spurgen.eval.plan import EvalPlan, plan_evaluation
from spurgen.eval.predict import SetPredictions, pick_device, predict_set
from spurgen.eval.summary import flat_metrics, measure_sets
from spurgen.files import write_csv, write_json, write_jsonl
from spurgen.identity import metrics_stamp  # the run identity in metrics.json
from spurgen.models.extractors import FrozenImageModel
from spurgen.pipeline import read_spurgen_json
from spurgen.validation import eval_problems

log = logging.getLogger("spurgen")
WANDB_THUMBNAILS = 8  # images per set in the W&B generated-vs-reference grid


def evaluate(
    eval_cfg: DictConfig,
    images_dir: str | Path,
    out_dir: str | Path,
    target_index: int | None,
    component: int | None = None,
    logger_cfg: DictConfig | None = None,
) -> dict:
    """Evaluate images_dir (plus the eval.reference_dir / baseline_dir / imagenet_val_dir sets when given);
    write metrics.json, metrics.csv, spurious_rate.png, contact_sheet.html, predictions.jsonl into out_dir.
    target_index None (no class known) is reported together with any other input problem."""
    plan = plan_evaluation(eval_cfg, images_dir, target_index, component, problems=eval_problems(eval_cfg))
    return run_plan(plan, eval_cfg, Path(out_dir), logger_cfg)


def run_plan(
    plan: EvalPlan,
    ev: DictConfig,
    out_dir: Path,
    logger_cfg: DictConfig | None = None,
    run_dir: Path | None = None,
    stamp: dict | None = None,
) -> dict:
    """Build the classifiers, predict every set, measure, write; run_dir holds the W&B run to resume; stamp
    (the run's identity, identity.metrics_stamp) joins the result before metrics.json is written, once."""
    t0 = time.time()
    models = build_classifiers(plan.classifiers, pick_device(ev.device), bool(ev.channels_last))
    preds, val, others = predict_plan(plan, models, ev)
    numbers, scores = measure_sets(plan, preds, val, int(ev.seed), int(ev.bootstrap_samples), others)
    memo = measure_memorisation(plan.sets, preds)
    result = describe(plan, ev, models, numbers, scores, memo)
    log_scores(scores)
    log_memorisation(memo)
    log_distribution(numbers)
    result["seconds"] = round(time.time() - t0, 2)
    result.update(stamp or {})
    rows, chart = write_outputs(out_dir, result, plan, preds)
    if logger_cfg is not None and logger_cfg.kind == "wandb":
        reference = preds["reference"].thumbnails if "reference" in preds else []
        outputs.log_wandb(
            logger_cfg, run_dir or out_dir, result, rows, chart, (preds["images"].thumbnails, reference)
        )
    if result["model_is_tiny_random"]:
        log.warning("tiny random models: these numbers check the plumbing and mean nothing")
    return result


def predict_plan(
    plan: EvalPlan, models: list[FrozenImageModel], ev: DictConfig
) -> tuple[dict[str, SetPredictions], SetPredictions | None, SetPredictions | None]:
    """Every image set (resized without crop, or with the model's crop if eval.crop=model), the ImageNet
    validation images (always the model's own resize and centre crop, METHOD.md) and the reference class's
    other Spurious ImageNet components (preprocessed as the reference set; for the pooled spurious score)."""
    crop, bs = ev.crop == "model", int(ev.batch_size)
    preds = {
        name: predict_set(
            models,
            s.paths,
            plan.target,
            crop,
            bs,
            int(ev.contact_sheet_max) if name == "images" else WANDB_THUMBNAILS,
        )
        for name, s in plan.sets.items()
    }
    val = predict_set(models, plan.val.paths, plan.target, True, bs) if plan.val else None
    pool = plan.reference_pool
    others = predict_set(models, pool.others.paths, plan.target, crop, bs) if pool and pool.others else None
    return preds, val, others


def log_scores(scores: dict) -> None:
    """One line per classifier: the reference's official spurious score (AP pooled over the class's
    components) beside the reference component's own AP, and ROC-AUC per set."""
    for c, s in scores.items():
        parts = [f"{n} ROC-AUC {v['roc_auc']:.3f}" for n, v in s.items() if isinstance(v, dict)]
        ref = s.get("reference")
        if ref and ref["pooled_over_components"]:
            parts.append(
                f"reference AP {ref['ap_all_components']:.3f} (official: components {ref['components']} "
                f"pooled), component {ref['component']} alone {ref['ap']:.3f}"
            )
        elif ref:
            parts.append(f"reference AP {ref['ap']:.3f} (a plain folder: no components to pool)")
        log.info("spurious score %s: %s", c, "; ".join(parts))


def describe(
    plan: EvalPlan,
    ev: DictConfig,
    models: list[FrozenImageModel],
    numbers: dict,
    scores: dict,
    memorisation: dict | None = None,
) -> dict:
    """metrics.json: what was measured, with what, and the numbers; memorisation: the nearest-reference
    distributions per set (spurgen.eval.memorisation; {} without a reference set)."""
    gen = plan.generation
    random = random_classifiers(models)
    return {
        "method_version": METHOD_VERSION,
        "model_is_tiny_random": bool(gen.get("model_is_tiny_random")) or bool(random),
        "generator_is_tiny_random": gen.get("model_is_tiny_random"),
        "model_marks": gen.get("model_marks") or {},  # what the generator's preset declares (model_is_mini)
        "random_classifiers": random,
        "target": {
            "index": plan.target,
            "name": imagenet.short_name(plan.target),
            "component": plan.component,
        },
        "images_dir": str(plan.images.folder),
        "sets": {n: {"folder": str(s.folder), "num_images": len(s.paths)} for n, s in plan.sets.items()},
        "preprocessing": {"crop": ev.crop, "imagenet_val": "model resize + centre crop"},
        "classifiers": [
            {
                "name": m.name,
                **_plain(plan.classifiers[m.name]),
                "normalizes_inside": m.normalizes_inside,
                "input_size": m.input_size,
            }
            for m in models
        ],
        "results": numbers,
        "spurious_score": scores,
        "memorisation": memorisation or {},
        "metrics": flat_metrics(numbers, scores, memorisation),
        "generation": {k: gen.get(k) for k in ("num_images", "black_images", "baseline", "model")}
        if gen
        else None,
    }


def _plain(node: Any) -> dict:
    """A classifier node as recorded in metrics.json (resolved in place: interpolations keep their root)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


def write_outputs(
    out_dir: Path, result: dict, plan: EvalPlan, preds: dict[str, SetPredictions]
) -> tuple[list[dict], Path]:
    """metrics.json, metrics.csv, spurious_rate.png, contact_sheet.html, predictions.jsonl; returns the CSV
    rows and the chart's path (for W&B)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", result)
    rows = outputs.csv_rows(result["results"], result["spurious_score"], result.get("memorisation"))
    write_csv(out_dir / "metrics.csv", rows, outputs.CSV_FIELDS)
    tiny = " [TINY RANDOM]" if result["model_is_tiny_random"] else ""
    title = f"target {plan.target} ({result['target']['name']}){tiny}"
    chart = outputs.bar_chart(out_dir / "spurious_rate.png", result["results"], title)
    outputs.contact_sheet(out_dir / "contact_sheet.html", plan.images, preds["images"], plan.target, title)
    records = outputs.prediction_records(
        plan.images.paths, plan.images.records, preds["images"].per_classifier
    )
    write_jsonl(out_dir / "predictions.jsonl", records)
    return rows, chart


def run_stage(cfg: DictConfig, run_dir: Path) -> dict:
    """The run's third stage: evaluate run_dir/generated, beside run_dir/baseline when it exists and the
    folder the run's references came from (recorded by training in pipeline/spurgen.json) unless
    eval.reference_dir is set."""
    run_dir = Path(run_dir)
    baseline = run_dir / "baseline"
    trained = read_spurgen_json(run_dir / "pipeline") or {}
    references = trained.get("references") or []
    extra = {
        "reference": Path(references[0]).parent if references else None,
        "baseline": baseline if (baseline / "manifest.jsonl").exists() else None,
    }
    plan = plan_evaluation(
        cfg.eval,
        run_dir / "generated",
        int(cfg.target.index),
        cfg.target.component,
        extra,
        problems=eval_problems(cfg.eval),
    )
    return run_plan(plan, cfg.eval, run_dir / "eval", cfg.logger, run_dir, metrics_stamp(cfg, run_dir))
