"""Stage 2: generate images from the fine-tuned pipeline (or the base model: generate.baseline=true).

Each image i has its own seed (generate.seed + i) and prompt template (templates[i % T]), so any one can be
regenerated alone. Images are written atomically with their manifest.jsonl record; a rerun skips images whose
file and identical record exist. All-black images are counted and reported.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from spurgen.config import METHOD_VERSION
from spurgen.errors import SpurgenError
from spurgen.eval.imagesets import GENERATE_JSON, MANIFEST, read_manifest
from spurgen.eval.report import write_atomic
from spurgen.pipeline import make_pipeline, read_spurgen_json, sample, save_png_atomic

log = logging.getLogger("spurgen")
SETTING_KEYS = (
    "prompt",
    "template",
    "negative_prompt",
    "seed",
    "sampler",
    "steps",
    "guidance",
    "resolution",
    "model",
)


def is_black(im) -> bool:
    """All pixels (nearly) zero: what an overflowing fp16 VAE or a safety checker produces."""
    return int(np.asarray(im).max()) <= 3


def _prompts(
    gen: DictConfig, meta: dict, target: DictConfig | None, pipeline_dir: Path | None, baseline: bool
) -> dict:
    instance = gen.instance_prompt or meta.get("instance_prompt")
    klass = gen.class_prompt or meta.get("class_prompt")
    if baseline and not klass:
        raise SpurgenError(
            "generate.baseline=true needs the class prompt: set generate.class_prompt='a photo of a flower'"
        )
    if not baseline and not instance:
        raise SpurgenError(
            f"pipeline {pipeline_dir} has no {'spurgen.json with an ' if not meta else ''}instance prompt "
            "(not made by spurgen?): give generate.instance_prompt='a photo of a <identifier> <concept>'"
        )
    if gen.negative_prompt is not None:
        negative = gen.negative_prompt or None  # "" disables it
    elif meta.get("negative_prompt"):
        negative = meta["negative_prompt"]
    elif target is not None and target.get("name"):
        negative = ", ".join(dict.fromkeys([target.name, *(target.synonyms or [])]))
    else:
        negative = None
        log.warning("no negative prompt (no class known): images may show the class object")
    return {
        "base": klass if baseline else instance,
        "negative": negative,
        "instance": instance,
        "class": klass,
    }


def check_config(gen: DictConfig) -> None:
    """Cheap checks of the generate.* keys (also worth calling before training)."""
    for key in ("num_images", "num_inference_steps", "batch_size"):
        if int(gen[key]) <= 0:
            raise SpurgenError(f"generate.{key} must be > 0, got {gen[key]}")
    if not gen.templates:
        raise SpurgenError("generate.templates must hold at least one template")
    for t in gen.templates:
        if "{prompt}" not in t:
            raise SpurgenError(f"generate.templates: {t!r} lacks the placeholder {{prompt}}")
    if gen.dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise SpurgenError(f"generate.dtype must be auto, float32, float16 or bfloat16, got {gen.dtype!r}")


def _pick_device(gen: DictConfig) -> tuple[torch.device, torch.dtype]:
    device = torch.device(
        "cuda"
        if gen.device == "auto" and torch.cuda.is_available()
        else ("cpu" if gen.device == "auto" else gen.device)
    )
    if gen.dtype == "auto":
        return device, torch.float16 if device.type == "cuda" else torch.float32
    return device, getattr(torch, gen.dtype)


def load_generation_pipeline(baseline: bool, pipeline_dir: Path | None, model_cfg) -> tuple:
    """(pipeline, model id, tiny?) from pipeline_dir, or the base model (`model` config) for the baseline."""
    if baseline:
        if model_cfg is None:
            raise SpurgenError(
                "generate.baseline=true needs the base model: pass model=<preset> (e.g. model=sd15)"
            )
        from hydra.utils import instantiate

        parts = instantiate(model_cfg)
        pipe = make_pipeline(
            parts.unet, parts.text_encoder, parts.tokenizer, parts.vae, parts.sample_scheduler
        )
        return pipe, parts.model_id, parts.is_tiny_random
    from diffusers import StableDiffusionPipeline

    from spurgen.models.sd import check_pipeline_folder

    check_pipeline_folder(pipeline_dir)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(pipeline_dir), safety_checker=None, requires_safety_checker=False, feature_extractor=None
        )
    except (OSError, ValueError) as exc:
        raise SpurgenError(
            f"cannot load the pipeline in {pipeline_dir}: {str(exc).splitlines()[0]}"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe, _fingerprint(pipeline_dir), None


def _fingerprint(pipeline_dir: Path) -> str:
    """The folder plus a hash of its spurgen.json (which changes with every training), so a retrained
    pipeline in the same place does not count the old images as complete."""
    import hashlib

    meta = pipeline_dir / "spurgen.json"
    digest = hashlib.sha256(meta.read_bytes()).hexdigest()[:12] if meta.exists() else "foreign"
    return f"{pipeline_dir.resolve()}#{digest}"


def generate(
    gen: DictConfig,
    pipeline_dir: str | Path | None,
    out_dir: str | Path,
    target: DictConfig | None = None,
    model_cfg=None,
    baseline: bool | None = None,
) -> dict:
    """Generate gen.num_images images into out_dir (PNG + manifest.jsonl + generate.json); returns the summary.
    `baseline` overrides gen.baseline (the run generates both)."""
    t0 = time.time()
    baseline = bool(gen.baseline) if baseline is None else baseline
    pipeline_dir = Path(pipeline_dir).expanduser() if pipeline_dir else None
    if pipeline_dir is None and not baseline:
        raise SpurgenError("pipeline_dir is required: pipeline_dir=<a diffusers pipeline folder>")
    if pipeline_dir is not None and not pipeline_dir.is_dir():
        raise SpurgenError(f"pipeline folder {pipeline_dir} does not exist")
    check_config(gen)
    meta = (read_spurgen_json(pipeline_dir) or {}) if pipeline_dir else {}
    prompts = _prompts(gen, meta, target, pipeline_dir, baseline)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    pipe, model_id, tiny = load_generation_pipeline(baseline, pipeline_dir, model_cfg)
    tiny = meta.get("model_is_tiny_random") if tiny is None else tiny
    if gen.sampler:
        import diffusers

        if not hasattr(diffusers, gen.sampler):
            raise SpurgenError(f"generate.sampler={gen.sampler!r} is not a diffusers scheduler class")
        pipe.scheduler = getattr(diffusers, gen.sampler).from_config(pipe.scheduler.config)
    sampler = type(pipe.scheduler).__name__
    resolution = int(
        gen.resolution or meta.get("resolution") or pipe.unet.config.sample_size * pipe.vae_scale_factor
    )
    device, dtype = _pick_device(gen)
    pipe.to(device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)

    plan = []
    for i in range(int(gen.num_images)):
        template = gen.templates[i % len(gen.templates)]
        plan.append(
            {
                "file": f"{i:05d}.png",
                "index": i,
                "prompt": template.replace("{prompt}", prompts["base"]),
                "template": template,
                "negative_prompt": prompts["negative"],
                "seed": int(gen.seed) + i,
                "sampler": sampler,
                "steps": int(gen.num_inference_steps),
                "guidance": float(gen.guidance_scale),
                "resolution": resolution,
                "model": model_id,
                "baseline": baseline,
            }
        )
    records = {f: r for f, r in read_manifest(out_dir).items() if (out_dir / f).exists()}
    todo = [p for p in plan if not _complete(records.get(p["file"]), p)]
    log.info(
        "generate: %d images planned, %d already complete, %d to make",
        len(plan),
        len(plan) - len(todo),
        len(todo),
    )
    bs = int(gen.batch_size)
    for start in range(0, len(todo), bs):
        batch = todo[start : start + bs]
        images = sample(
            pipe,
            [p["prompt"] for p in batch],
            [p["seed"] for p in batch],
            int(gen.num_inference_steps),
            float(gen.guidance_scale),
            resolution,
            prompts["negative"],
            batch_size=bs,
        )
        for p, im in zip(batch, images, strict=True):
            rec = {**p, "black": is_black(im)}
            save_png_atomic(
                im, out_dir / p["file"], {k: rec[k] for k in ("prompt", "seed", "steps", "guidance")}
            )
            records[p["file"]] = rec
        _write_manifest(out_dir, records)  # after every batch: a crash loses at most one batch
    _write_manifest(out_dir, records)
    planned = [records[p["file"]] for p in plan]
    black = sum(bool(r.get("black")) for r in planned)
    if black:
        log.warning("generate: %d of %d images are all black", black, len(planned))
    summary = {
        "method_version": meta.get("method_version", METHOD_VERSION),
        "model_is_tiny_random": tiny,
        "class_index": meta.get(
            "class_index", target.get("index") if target is not None and _has_index(target) else None
        ),
        "model": model_id,
        "pipeline_dir": str(pipeline_dir) if pipeline_dir else None,
        "baseline": baseline,
        "num_images": len(planned),
        "black_images": black,
        "generated_now": len(todo),
        "skipped": len(plan) - len(todo),
        "instance_prompt": prompts["instance"],
        "class_prompt": prompts["class"],
        "negative_prompt": prompts["negative"],
        "templates": list(gen.templates),
        "sampler": sampler,
        "steps": int(gen.num_inference_steps),
        "guidance": float(gen.guidance_scale),
        "resolution": resolution,
        "seconds": round(time.time() - t0, 2),
    }
    write_atomic(out_dir / GENERATE_JSON, json.dumps(summary, indent=2))
    return summary


def _has_index(target) -> bool:
    from omegaconf import OmegaConf

    return not (OmegaConf.is_config(target) and OmegaConf.is_missing(target, "index"))


def _complete(record: dict | None, planned: dict) -> bool:
    return record is not None and all(record.get(k) == planned[k] for k in SETTING_KEYS)


def _write_manifest(out_dir: Path, records: dict[str, dict]) -> None:
    lines = [json.dumps(r) for r in sorted(records.values(), key=lambda r: r["file"])]
    write_atomic(out_dir / MANIFEST, "\n".join(lines) + "\n")


def run_stage(cfg: DictConfig, run_dir: Path) -> dict:
    """The run's second stage: run_dir/pipeline -> run_dir/generated; with generate.baseline=true also the
    base model's images with the class prompt -> run_dir/baseline (the row every gain is measured against)."""
    run_dir = Path(run_dir)
    summary = generate(
        cfg.generate, run_dir / "pipeline", run_dir / "generated", cfg.target, cfg.model, False
    )
    if cfg.generate.baseline:
        summary["baseline_summary"] = generate(
            cfg.generate, run_dir / "pipeline", run_dir / "baseline", cfg.target, cfg.model, True
        )
    return summary
