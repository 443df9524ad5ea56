"""Stage 3: measure images across classifiers (METHOD.md, 'Evaluation') and write the reports."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from spurgen import imagenet
from spurgen.config import CONF_DIR, METHOD_VERSION
from spurgen.errors import SpurgenError
from spurgen.eval import metrics as M
from spurgen.eval import report
from spurgen.eval.imagesets import (
    ImageSet,
    load_folder,
    load_imagenet_val,
    load_reference,
    read_generate_json,
)
from spurgen.eval.predict import pick_device, place, predict_set
from spurgen.eval.summary import flat_metrics, set_numbers, spurious_score
from spurgen.models.extractors import FrozenImageModel
from spurgen.models.loaders import SOURCES, load_classifier

log = logging.getLogger("spurgen")
CONF_EVAL = Path(CONF_DIR) / "eval"


def classifier_specs(eval_cfg: DictConfig) -> list:
    """eval.classifiers, or conf/eval/<eval.classifier_set>.yaml when that list is empty; checked."""
    specs = list(eval_cfg.classifiers or [])
    if not specs:
        path = CONF_EVAL / f"{eval_cfg.classifier_set}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in CONF_EVAL.glob("*.yaml")))
            raise SpurgenError(f"eval.classifier_set={eval_cfg.classifier_set!r}: no {path} (known: {known})")
        specs = list(OmegaConf.load(path).classifiers)
    names = []
    for i, s in enumerate(specs):
        name, source = s.get("name"), s.get("source", "timm")
        if not name:
            raise SpurgenError(f"eval.classifiers.{i}: every classifier needs a name")
        if source not in SOURCES:
            raise SpurgenError(
                f"eval.classifiers.{i} ({name}): unknown classifier source {source!r}; known: {', '.join(SOURCES)}"
            )
        names.append(name)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpurgenError(f"eval.classifiers: duplicate names {', '.join(dupes)}")
    return specs


def check_config(eval_cfg: DictConfig) -> list:
    """Cheap checks of the eval.* keys (also worth calling before training); returns the classifier specs."""
    if eval_cfg.crop not in ("none", "model"):
        raise SpurgenError(f"eval.crop must be none or model, got {eval_cfg.crop!r}")
    for key in ("batch_size", "bootstrap_samples"):
        if int(eval_cfg[key]) <= 0:
            raise SpurgenError(f"eval.{key} must be > 0, got {eval_cfg[key]}")
    return classifier_specs(eval_cfg)


def check_target(index) -> int:
    if index is None or not 0 <= int(index) < imagenet.NUM_CLASSES:
        raise SpurgenError(f"target.index: ImageNet class index must be in 0..999, got {index}")
    return int(index)


def evaluate(
    eval_cfg: DictConfig,
    images_dir: str | Path,
    out_dir: str | Path,
    target_index: int,
    component: int | None = None,
    logger_cfg: DictConfig | None = None,
    run_dir: str | Path | None = None,
    baseline_dir: str | Path | None = None,
    reference_dir: str | Path | None = None,
) -> dict:
    """Evaluate images_dir (plus reference / baseline / ImageNet-val sets when configured); write
    metrics.json, metrics.csv, spurious_rate.png, contact_sheet.html, predictions.jsonl into out_dir."""
    t0 = time.time()
    target = check_target(target_index)
    out_dir = Path(out_dir)
    seed, boot = int(eval_cfg.seed), int(eval_cfg.bootstrap_samples)
    crop = eval_cfg.crop == "model"

    specs = check_config(eval_cfg)
    sets: dict[str, ImageSet] = {"images": load_folder("images", images_dir)}  # cheap checks first
    reference_dir = eval_cfg.reference_dir or reference_dir
    if reference_dir:
        sets["reference"] = load_reference(reference_dir, target, component)
    baseline_dir = eval_cfg.baseline_dir or baseline_dir
    if baseline_dir:
        sets["baseline"] = load_folder("baseline", baseline_dir)
    val = load_imagenet_val(eval_cfg.imagenet_val_dir, target) if eval_cfg.imagenet_val_dir else None
    gen_meta = read_generate_json(Path(images_dir))

    models: list[FrozenImageModel] = [load_classifier(s) for s in specs]
    device = pick_device(eval_cfg.device)
    place(models, device, bool(eval_cfg.channels_last))
    bs, n_thumbs = int(eval_cfg.batch_size), int(eval_cfg.contact_sheet_max)
    preds = {
        name: predict_set(models, s.paths, target, crop, bs, device, n_thumbs if name == "images" else 8)
        for name, s in sets.items()
    }
    val_preds = predict_set(models, val.paths, target, True, bs, device) if val else None

    ref_means = None
    if "reference" in preds:
        ref_means = {c: M.normalized_mean(p.features) for c, p in preds["reference"].per_classifier.items()}
    numbers = {
        name: set_numbers(p.per_classifier, target, sets[name].templates, seed, boot, ref_means)
        for name, p in preds.items()
    }
    scores = {}
    if val_preds:
        for c, vp in val_preds.per_classifier.items():
            scores[c] = spurious_score(vp, {n: p.per_classifier[c] for n, p in preds.items()}, seed)
    flat = flat_metrics(numbers, scores)

    random_classifiers = [m.name for m in models if getattr(m, "is_random", False)]
    tiny = bool(gen_meta.get("model_is_tiny_random")) or bool(random_classifiers)
    result = {
        "method_version": METHOD_VERSION,
        "model_is_tiny_random": tiny,
        "generator_is_tiny_random": gen_meta.get("model_is_tiny_random"),
        "random_classifiers": random_classifiers,
        "target": {"index": target, "name": imagenet.short_name(target), "component": component},
        "images_dir": str(Path(images_dir)),
        "sets": {n: {"folder": str(s.folder), "num_images": len(s.paths)} for n, s in sets.items()},
        "preprocessing": {"crop": eval_cfg.crop, "imagenet_val": "model resize + centre crop"},
        "classifiers": [
            {
                **OmegaConf.to_container(OmegaConf.create(s) if isinstance(s, dict) else s, resolve=True),
                "normalizes_inside": m.normalizes_inside,
                "input_size": m.input_size,
            }
            for s, m in zip(specs, models, strict=True)
        ],
        "results": numbers,
        "spurious_score": scores,
        "metrics": flat,
        "generation": {k: gen_meta.get(k) for k in ("num_images", "black_images", "baseline", "model")}
        if gen_meta
        else None,
        "seconds": round(time.time() - t0, 2),
    }
    _write_outputs(out_dir, result, sets, preds, target, logger_cfg, run_dir)
    if tiny:
        log.warning("tiny random models: these numbers check the plumbing and mean nothing")
    return result


def _write_outputs(out_dir, result, sets, preds, target, logger_cfg, run_dir) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    report.write_json(out_dir / "metrics.json", result)
    rows = report.csv_rows(result["results"], result["spurious_score"])
    report.write_csv(out_dir / "metrics.csv", rows)
    title = f"target {target} ({result['target']['name']})" + (
        " [TINY RANDOM]" if result["model_is_tiny_random"] else ""
    )
    chart = report.bar_chart(out_dir / "spurious_rate.png", result["results"], title)
    names = [imagenet.short_name(i) for i in range(imagenet.NUM_CLASSES)]
    main = sets["images"]
    report.contact_sheet(
        out_dir / "contact_sheet.html",
        main.paths,
        preds["images"].thumbnails,
        main.records,
        preds["images"].per_classifier,
        target,
        names,
        title,
    )
    lines = []
    for i, p in enumerate(main.paths):
        per = {
            c: {
                "top5": pr.top5[i].tolist(),
                "top5_p": np.round(pr.top5_p[i], 6).tolist(),
                "p_target": float(pr.p_target[i]),
            }
            for c, pr in preds["images"].per_classifier.items()
        }
        lines.append(
            json.dumps(
                {
                    "file": p.name,
                    **{k: main.records[i].get(k) for k in ("prompt", "template", "seed")},
                    "classifiers": per,
                }
            )
        )
    report.write_atomic(out_dir / "predictions.jsonl", "\n".join(lines) + "\n")
    if logger_cfg is not None and logger_cfg.kind == "wandb":
        ref = preds["reference"].thumbnails if "reference" in preds else []
        report.log_wandb(
            logger_cfg,
            Path(run_dir or out_dir),
            f"eval-{result['target']['name']}",
            result["metrics"],
            rows,
            chart,
            preds["images"].thumbnails,
            ref,
        )


def run_stage(cfg: DictConfig, run_dir: Path) -> dict:
    """The run's third stage: evaluate run_dir/generated, beside run_dir/baseline when it exists and the
    run's reference folder (data.reference_dir / data.spurious_imagenet_dir / demo) unless eval.reference_dir."""
    from spurgen.config import asset_path
    from spurgen.data.references import reference_folder

    run_dir = Path(run_dir)
    baseline = run_dir / "baseline"
    index, component = int(cfg.target.index), cfg.target.component
    try:
        refs = reference_folder(
            cfg.data.reference_dir,
            cfg.data.spurious_imagenet_dir,
            index,
            component,
            asset_path("demo_references") if cfg.data.demo_references else None,
        )
    except SpurgenError:
        refs = None
    return evaluate(
        cfg.eval,
        run_dir / "generated",
        run_dir / "eval",
        index,
        component,
        cfg.logger,
        run_dir,
        baseline if (baseline / "manifest.jsonl").exists() else None,
        refs,
    )
