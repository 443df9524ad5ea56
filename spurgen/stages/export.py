"""Export: copy the images predicted as the target by at least m classifiers into a dataset folder, with
manifest.jsonl (prompt, seed, per-classifier prediction and probability) and dataset.json."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from spurgen import imagenet
from spurgen.config import METHOD_VERSION
from spurgen.errors import SpurgenError
from spurgen.eval.classifiers import build_classifiers, random_classifiers
from spurgen.eval.plan import EvalPlan, plan_evaluation
from spurgen.eval.predict import SetPredictions, pick_device, predict_set
from spurgen.files import copy_atomic, manifest_files, remove_unlisted, write_json, write_jsonl
from spurgen.validation import eval_problems


def export(
    eval_cfg: DictConfig,
    images_dir: str | Path,
    out_dir: str | Path,
    target: int | None,
    min_classifiers: int,
) -> dict:
    """Copy into out_dir/images the images at least `min_classifiers` classifiers predict as `target`;
    write out_dir/manifest.jsonl and out_dir/dataset.json. Inputs are checked before any model is built."""
    plan = plan_evaluation(eval_cfg, images_dir, target, problems=eval_problems(eval_cfg))
    if not 1 <= min_classifiers <= len(plan.classifiers):
        raise SpurgenError(
            f"min_classifiers must be in 1..{len(plan.classifiers)} (the number of classifiers), "
            f"got {min_classifiers}"
        )
    models = build_classifiers(plan.classifiers, pick_device(eval_cfg.device), bool(eval_cfg.channels_last))
    preds = predict_set(
        models, plan.images.paths, plan.target, eval_cfg.crop == "model", int(eval_cfg.batch_size)
    )
    records = voted_records(plan, preds, min_classifiers)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    earlier = manifest_files(out_dir)  # a previous export here: its images not chosen now must go
    for rec in records:
        copy_atomic(Path(rec["source"]), out_dir / rec["file"])
    write_jsonl(out_dir / "manifest.jsonl", records)
    summary = {
        "method_version": METHOD_VERSION,
        "model_is_tiny_random": bool(plan.generation.get("model_is_tiny_random"))
        or bool(random_classifiers(models)),
        "model_marks": plan.generation.get("model_marks") or {},  # what the generator's preset declares
        "target": {"index": plan.target, "name": imagenet.short_name(plan.target)},
        "images_dir": str(images_dir),
        "min_classifiers": min_classifiers,
        "classifiers": [m.name for m in models],
        "num_images": len(plan.images.paths),
        "num_exported": len(records),
    }
    write_json(out_dir / "dataset.json", summary)
    remove_unlisted(out_dir, earlier, {rec["file"] for rec in records})
    return summary


def voted_records(plan: EvalPlan, preds: SetPredictions, min_classifiers: int) -> list[dict]:
    """Manifest records of the images predicted as the target by at least min_classifiers classifiers."""
    out = []
    for i, path in enumerate(plan.images.paths):
        per = {
            c: {
                "prediction": int(p.argmax[i]),
                "prediction_name": imagenet.short_name(int(p.argmax[i])),
                "p_prediction": float(p.top5_p[i, 0]),
                "p_target": float(p.p_target[i]),
            }
            for c, p in preds.per_classifier.items()
        }
        votes = sum(v["prediction"] == plan.target for v in per.values())
        if votes >= min_classifiers:
            rec = plan.images.records[i]
            out.append(
                {
                    "file": f"images/{path.name}",
                    "source": str(path),
                    **{k: rec.get(k) for k in ("prompt", "template", "seed")},
                    "votes": votes,
                    "classifiers": per,
                }
            )
    return out
