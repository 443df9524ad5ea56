"""Export: copy the images predicted as the target by at least m classifiers into a dataset folder, with
manifest.jsonl (prompt, seed, per-classifier prediction and probability) and dataset.json."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig

from spurgen import imagenet
from spurgen.config import METHOD_VERSION
from spurgen.errors import SpurgenError
from spurgen.eval.imagesets import load_folder, read_generate_json
from spurgen.eval.predict import pick_device, place, predict_set
from spurgen.eval.report import write_atomic
from spurgen.models.loaders import load_classifier
from spurgen.stages.evaluate import check_config, check_target


def export(
    eval_cfg: DictConfig, images_dir: str | Path, out_dir: str | Path, target: int, min_classifiers: int
) -> dict:
    target = check_target(target)
    images = load_folder("images", images_dir)
    specs = check_config(eval_cfg)
    if not 1 <= min_classifiers <= len(specs):
        raise SpurgenError(
            f"min_classifiers must be in 1..{len(specs)} (the number of classifiers), got {min_classifiers}"
        )
    models = [load_classifier(s) for s in specs]
    device = pick_device(eval_cfg.device)
    place(models, device, bool(eval_cfg.channels_last))
    preds = predict_set(
        models, images.paths, target, eval_cfg.crop == "model", int(eval_cfg.batch_size), device
    )
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    lines, kept = [], 0
    for i, path in enumerate(images.paths):
        per = {
            c: {
                "prediction": int(p.argmax[i]),
                "prediction_name": imagenet.short_name(int(p.argmax[i])),
                "p_prediction": float(p.top5_p[i, 0]),
                "p_target": float(p.p_target[i]),
            }
            for c, p in preds.per_classifier.items()
        }
        votes = sum(v["prediction"] == target for v in per.values())
        if votes < min_classifiers:
            continue
        dest = out_dir / "images" / path.name
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
        rec = images.records[i]
        lines.append(
            json.dumps(
                {
                    "file": f"images/{path.name}",
                    "source": str(path),
                    "prompt": rec.get("prompt"),
                    "template": rec.get("template"),
                    "seed": rec.get("seed"),
                    "votes": votes,
                    "classifiers": per,
                }
            )
        )
        kept += 1
    write_atomic(out_dir / "manifest.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    gen = read_generate_json(Path(images_dir))
    random = [m.name for m in models if getattr(m, "is_random", False)]
    summary = {
        "method_version": METHOD_VERSION,
        "model_is_tiny_random": bool(gen.get("model_is_tiny_random")) or bool(random),
        "target": {"index": target, "name": imagenet.short_name(target)},
        "images_dir": str(images_dir),
        "min_classifiers": min_classifiers,
        "classifiers": [m.name for m in models],
        "num_images": len(images.paths),
        "num_exported": kept,
    }
    write_atomic(out_dir / "dataset.json", json.dumps(summary, indent=2))
    return summary
