"""Stage 2: generate images from the fine-tuned pipeline (or the base model: generate.baseline=true).

A GenerationPlan lists every image before any model is loaded: its file, prompt template (templates[i % T])
and seed. Image i of training seed s is drawn with spurgen.seeds.generation_seed(s, i), so the seeds of two
training seeds never overlap and the baseline's image i shares its seed with the fine-tuned image i (paired
comparisons); any one image can be regenerated alone from its record. Images are written atomically with
their manifest.jsonl record; a rerun skips images whose file and identical record exist. All-black images are
counted and reported.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from spurgen.config import METHOD_VERSION
from spurgen.errors import SpurgenError
from spurgen.eval.imagesets import GENERATE_JSON, MANIFEST, read_manifest
from spurgen.files import save_png_atomic, write_atomic, write_json
from spurgen.models.parts import resolution_multiple
from spurgen.pipeline import SampleSettings, make_pipeline, read_spurgen_json, sample
from spurgen.prompts import apply_template, negative_prompt
from spurgen.seeds import generation_seed
from spurgen.validation import check_generate, check_resolution

log = logging.getLogger("spurgen")
# A manifest record whose values for these keys match the plan's is complete: the rerun skips its image.
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
    "sfsl_guidance",  # the guidance's settings (method.guidance), or None: the plain sampler
)


@dataclass(frozen=True)
class Prompts:
    base: str  # the prompt the templates wrap: the instance prompt, or the class prompt for the baseline
    negative: str | None
    instance: str | None
    klass: str | None


@dataclass(frozen=True)
class PlannedImage:
    file: str
    index: int
    prompt: str
    template: str
    seed: int


@dataclass
class GenerationPlan:
    """Everything decided before a model is loaded."""

    out_dir: Path
    pipeline_dir: Path | None
    baseline: bool
    prompts: Prompts
    images: list[PlannedImage]
    meta: dict = field(default_factory=dict)  # the pipeline's spurgen.json ({} when none)
    class_index: int | None = None


@dataclass
class Generator:
    """The loaded pipeline and the settings it fixes."""

    pipe: Any
    model_id: str
    tiny: bool | None
    sampler: str
    resolution: int
    marks: dict = field(default_factory=dict)  # SDParts.marks of the model that made the images
    guidance: Any = None  # a bound spurgen.methods.GuidedSampling, or None: the plain sampler
    sampling_seconds: float = 0.0  # wall time inside the sampler (the per-image cost, without loading)

    def record(self, image: PlannedImage, plan: GenerationPlan, gen: DictConfig) -> dict:
        """The manifest record of one planned image (without its `black` flag)."""
        return {
            **asdict(image),
            "negative_prompt": plan.prompts.negative,
            "sampler": self.sampler,
            "steps": int(gen.num_inference_steps),
            "guidance": float(gen.guidance_scale),
            "resolution": self.resolution,
            "model": self.model_id,
            "baseline": plan.baseline,
            "sfsl_guidance": self.guidance.guidance.describe() if self.guidance else None,
        }

    def sampling(self):
        """The guidance wrapped around the sampler while it samples (nothing for the plain sampler)."""
        return self.guidance.attached(self.pipe.scheduler) if self.guidance else nullcontext()


def is_black(im) -> bool:
    """All pixels (nearly) zero: what an overflowing fp16 VAE or a safety checker produces."""
    return int(np.asarray(im).max()) <= 3


def generate(  # noqa: PLR0913 - the stage's inputs; the run passes all, `spurgen generate` the first five
    gen: DictConfig,
    pipeline_dir: str | Path | None,
    out_dir: str | Path,
    target: DictConfig | None = None,
    model_cfg: DictConfig | None = None,
    baseline: bool | None = None,
    guidance: Any = None,
) -> dict:
    """Generate gen.num_images images into out_dir (PNG + manifest.jsonl + generate.json); returns the summary.
    `baseline` overrides gen.baseline (the run generates both). `guidance`: a spurgen.methods.GuidedSampling
    (its SFSL's references set) that steers the sampler, or None."""
    t0 = time.time()
    baseline = bool(gen.baseline) if baseline is None else baseline
    plan = plan_generation(gen, pipeline_dir, Path(out_dir), target, baseline)
    generator = load_generator(plan, gen, model_cfg, guided=guidance is not None)
    if guidance is not None:
        generator.guidance = guidance.bind(generator.pipe)
    records, made = make_images(plan, generator, gen)
    black = sum(bool(r.get("black")) for r in records)
    if black:
        log.warning("generate: %d of %d images are all black", black, len(records))
    summary = describe(plan, generator, gen, black, made)
    summary["seconds"] = round(time.time() - t0, 2)
    write_json(plan.out_dir / GENERATE_JSON, summary)
    return summary


def plan_generation(
    gen: DictConfig, pipeline_dir: str | Path | None, out_dir: Path, target: DictConfig | None, baseline: bool
) -> GenerationPlan:
    """Check the inputs and list every image; loads nothing."""
    pipeline_dir = Path(pipeline_dir).expanduser() if pipeline_dir else None
    if pipeline_dir is None and not baseline:
        raise SpurgenError("pipeline_dir is required: pipeline_dir=<a diffusers pipeline folder>")
    if pipeline_dir is not None and not pipeline_dir.is_dir():
        raise SpurgenError(f"pipeline folder {pipeline_dir} does not exist")
    check_generate(gen)
    meta = (read_spurgen_json(pipeline_dir) or {}) if pipeline_dir else {}
    if "seed" in meta and int(meta["seed"]) != int(gen.seed):
        log.warning(
            "generate.seed=%s but the pipeline was trained with seed %s: these images are not paired with that "
            "run's generated/baseline images (give seed=%s)",
            gen.seed,
            meta["seed"],
            meta["seed"],
        )
    prompts = resolve_prompts(gen, meta, target, pipeline_dir, baseline)
    images = [
        PlannedImage(f"{i:05d}.png", i, apply_template(t, prompts.base), t, generation_seed(int(gen.seed), i))
        for i, t in ((i, gen.templates[i % len(gen.templates)]) for i in range(int(gen.num_images)))
    ]
    class_index = meta.get("class_index", _target_index(target))
    return GenerationPlan(out_dir, pipeline_dir, baseline, prompts, images, meta, class_index)


def resolve_prompts(
    gen: DictConfig, meta: dict, target: DictConfig | None, pipeline_dir: Path | None, baseline: bool
) -> Prompts:
    """generate.* prompts first, then the pipeline's spurgen.json; the negative prompt falls back to the
    class name and synonyms (spurgen.prompts.negative_prompt)."""
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
    else:
        negative = meta.get("negative_prompt") or negative_prompt(target)
    if negative is None:
        log.warning("no negative prompt (no class known): images may show the class object")
    return Prompts(klass if baseline else instance, negative, instance, klass)


def _target_index(target: DictConfig | None) -> int | None:
    if target is None or (OmegaConf.is_config(target) and OmegaConf.is_missing(target, "index")):
        return None
    return target.get("index")


def load_generator(
    plan: GenerationPlan, gen: DictConfig, model_cfg: DictConfig | None, guided: bool = False
) -> Generator:
    """The pipeline (fine-tuned, or the base model for the baseline) with generate.sampler / device / dtype
    (guided: float32 for generate.dtype=auto, since the guidance decodes with gradients)."""
    pipe, model_id, tiny, marks = load_generation_pipeline(plan.baseline, plan.pipeline_dir, model_cfg)
    tiny = plan.meta.get("model_is_tiny_random") if tiny is None else tiny
    marks = plan.meta.get("model_marks") or {} if marks is None else marks
    if gen.sampler:
        import diffusers

        if not hasattr(diffusers, gen.sampler):
            raise SpurgenError(f"generate.sampler={gen.sampler!r} is not a diffusers scheduler class")
        pipe.scheduler = getattr(diffusers, gen.sampler).from_config(pipe.scheduler.config)
    resolution = int(
        gen.resolution or plan.meta.get("resolution") or pipe.unet.config.sample_size * pipe.vae_scale_factor
    )
    check_resolution(resolution, resolution_multiple(pipe.vae, pipe.unet), "generate.resolution")
    device, dtype = _pick_device(gen, guided)
    pipe.to(device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    return Generator(pipe, model_id, tiny, type(pipe.scheduler).__name__, resolution, dict(marks))


def _pick_device(gen: DictConfig, guided: bool = False) -> tuple[torch.device, torch.dtype]:
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if gen.device == "auto" else gen.device)
    if gen.dtype == "auto":
        return device, torch.float16 if device.type == "cuda" and not guided else torch.float32
    return device, getattr(torch, gen.dtype)


def load_generation_pipeline(baseline: bool, pipeline_dir: Path | None, model_cfg) -> tuple:
    """(pipeline, model id, tiny?, marks) from pipeline_dir, or the base model (`model` config) for the
    baseline; tiny and marks are None for a pipeline folder (its spurgen.json says)."""
    if baseline:
        if model_cfg is None:
            raise SpurgenError(
                "generate.baseline=true needs the base model: pass model=<preset> (e.g. model=sd15)"
            )
        from spurgen.build import build

        parts = build(model_cfg)
        pipe = make_pipeline(
            parts.unet, parts.text_encoder, parts.tokenizer, parts.vae, parts.sample_scheduler
        )
        return pipe, parts.model_id, parts.is_tiny_random, parts.marks
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
    return pipe, _fingerprint(pipeline_dir), None, None


def _fingerprint(pipeline_dir: Path) -> str:
    """The folder plus a hash of its spurgen.json (which changes with every training), so a retrained
    pipeline in the same place does not count the old images as complete."""
    import hashlib

    meta = pipeline_dir / "spurgen.json"
    digest = hashlib.sha256(meta.read_bytes()).hexdigest()[:12] if meta.exists() else "foreign"
    return f"{pipeline_dir.resolve()}#{digest}"


def make_images(plan: GenerationPlan, generator: Generator, gen: DictConfig) -> tuple[list[dict], int]:
    """Sample the planned images not already complete in plan.out_dir, a batch at a time; returns the
    records of all planned images and how many were made now."""
    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    done = {f: r for f, r in read_manifest(out).items() if (out / f).exists()}
    planned = [generator.record(image, plan, gen) for image in plan.images]
    todo = [p for p in planned if not _complete(done.get(p["file"]), p)]
    log.info(
        "generate: %d images planned, %d already complete, %d to make",
        len(planned),
        len(planned) - len(todo),
        len(todo),
    )
    bs = int(gen.batch_size)
    settings = SampleSettings(
        int(gen.num_inference_steps),
        float(gen.guidance_scale),
        generator.resolution,
        plan.prompts.negative,
        bs,
    )
    for start in range(0, len(todo), bs):
        batch = todo[start : start + bs]
        started = time.perf_counter()
        with generator.sampling():
            images = sample(
                generator.pipe, [p["prompt"] for p in batch], [p["seed"] for p in batch], settings
            )
        generator.sampling_seconds += time.perf_counter() - started
        for p, im in zip(batch, images, strict=True):
            done[p["file"]] = {**p, "black": is_black(im)}
            save_png_atomic(im, out / p["file"], {k: p[k] for k in ("prompt", "seed", "steps", "guidance")})
        _write_manifest(out, done)  # after every batch: a crash loses at most one batch
    _write_manifest(out, done)
    return [done[p["file"]] for p in planned], len(todo)


def _complete(record: dict | None, planned: dict) -> bool:
    return record is not None and all(record.get(k) == planned[k] for k in SETTING_KEYS)


def _write_manifest(out_dir: Path, records: dict[str, dict]) -> None:
    lines = [json.dumps(r) for r in sorted(records.values(), key=lambda r: r["file"])]
    write_atomic(out_dir / MANIFEST, "\n".join(lines) + "\n")


def describe(plan: GenerationPlan, generator: Generator, gen: DictConfig, black: int, made: int) -> dict:
    """generate.json: how the images were made."""
    return {
        "method_version": plan.meta.get("method_version", METHOD_VERSION),
        "model_is_tiny_random": generator.tiny,
        "model_marks": generator.marks,
        "class_index": plan.class_index,
        "model": generator.model_id,
        "pipeline_dir": str(plan.pipeline_dir) if plan.pipeline_dir else None,
        "baseline": plan.baseline,
        "num_images": len(plan.images),
        "black_images": black,
        "generated_now": made,
        "skipped": len(plan.images) - made,
        "instance_prompt": plan.prompts.instance,
        "class_prompt": plan.prompts.klass,
        "negative_prompt": plan.prompts.negative,
        "templates": list(gen.templates),
        "seed_rule": "spurgen.seeds.generation_seed(generate.seed, image index)",
        "sampler": generator.sampler,
        "steps": int(gen.num_inference_steps),
        "guidance": float(gen.guidance_scale),
        "resolution": generator.resolution,
        "sfsl_guidance": generator.guidance.guidance.describe() if generator.guidance else None,
        "sampling_seconds": round(generator.sampling_seconds, 2),
        "extractor_passes": generator.guidance.sfsl.passes.as_dict() if generator.guidance else None,
    }


def build_guidance(cfg: DictConfig, pipeline_dir: Path):
    """The method's sampler guidance (`method.guidance`), or None: a fresh L_SFSL from training's nodes (the
    extractor, `loss.sfsl`) with the references the run trained on (pipeline/spurgen.json), through the training
    transform at the run's resolution, exactly as the train stage prepares them."""
    if cfg.method.guidance is None:
        return None
    from spurgen.build import build
    from spurgen.data.dataset import load_training_images
    from spurgen.methods import GuidedSampling
    from spurgen.validation import check_extractor_pairing, resolve_references

    meta = read_spurgen_json(pipeline_dir) or {}
    resolution = meta.get("resolution") or cfg.data.resolution
    if not resolution:
        raise SpurgenError(
            f"{pipeline_dir} has no spurgen.json resolution: set data.resolution for the guidance"
        )
    references = [Path(p) for p in meta.get("references") or resolve_references(cfg)]
    extractor = build(cfg.feature_extractor)
    check_extractor_pairing(cfg, extractor.name, extractor.is_random)
    sfsl = build(cfg.loss.sfsl, extractor=extractor)
    sfsl.set_reference_images(load_training_images(references, int(resolution), cfg.data.center_crop))
    return GuidedSampling(build(cfg.method.guidance), sfsl)


def generation_cost(summary: dict, guided) -> dict:
    """run.json's cost.generation: this call's images, wall time (all of it, and inside the sampler), and
    images through the extractor (forward: the references once, for m, then each image at each guided step;
    backward: each image at each guided step); per image: the sampler's time and the passes less the
    references'."""
    made = int(summary["generated_now"])
    passes = summary.get("extractor_passes") or {"forward": 0, "backward": 0}
    refs = int(guided.sfsl.reference_images.shape[0]) if guided is not None else 0
    return {
        "images": made,
        "seconds": summary["seconds"],
        "sampling_seconds": summary["sampling_seconds"],
        "extractor_forward": int(passes["forward"]),
        "extractor_backward": int(passes["backward"]),
        "reference_forward": refs,
        "per_image": {
            "seconds": summary["sampling_seconds"] / made,
            "extractor_forward": (int(passes["forward"]) - refs) / made,
            "extractor_backward": int(passes["backward"]) / made,
        },
    }


def record_cost(run_dir: Path, summary: dict, guided) -> None:
    """Add cost.generation to run.json (written by training); a rerun that made no image keeps the last. A
    guided run without the SFSL in training records the extractor that guided (run.json's `extractor`, which
    metrics.json and the report read)."""
    path = run_dir / "run.json"
    if not path.is_file() or int(summary["generated_now"]) == 0:
        return
    meta = json.loads(path.read_text())
    meta["cost"] = {**meta.get("cost", {}), "generation": generation_cost(summary, guided)}
    if guided is not None and not (meta.get("extractor") or {}).get("used"):
        meta["extractor"] = {**guided.sfsl.extractor.identity(), "used": True}
    write_json(path, meta)


def run_stage(cfg: DictConfig, run_dir: Path) -> dict:
    """The run's second stage: run_dir/pipeline -> run_dir/generated, guided when the method says so; with
    generate.baseline=true also the base model's images with the class prompt -> run_dir/baseline (the row
    every gain is measured against, never guided), drawn with the same seeds (paired). run.json gets the
    generated images' cost."""
    run_dir = Path(run_dir)
    pipeline = run_dir / "pipeline"
    guided = build_guidance(cfg, pipeline)
    summary = generate(
        cfg.generate, pipeline, run_dir / "generated", cfg.target, cfg.model, False, guidance=guided
    )
    record_cost(run_dir, summary, guided)
    if cfg.generate.baseline:
        baseline = generate(cfg.generate, pipeline, run_dir / "baseline", cfg.target, cfg.model, True)
        summary["baseline_summary"] = baseline
    return summary
