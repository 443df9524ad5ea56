"""Stage 1: fine-tune SD on the reference images (DreamBooth + prior preservation + SFSL) and save pipeline/.

The stage is a plan of short steps. Cheap checks first (output folder, launcher, optimiser, reference files,
the checkpoint to resume from), then every object is built from its config node (`_target_`): the model parts
(`model`), the objective (`loss`, whose SFSL owns the frozen extractor and the references), the LightningModule
(`module`), the callbacks (`callbacks`), the logger (`logger`) and the Trainer (`trainer`). Then fit, then save.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from spurgen.build import build
from spurgen.checkpointing import AtomicCheckpointIO, GracefulInterrupt, newest_loadable_checkpoint
from spurgen.config import METHOD_VERSION
from spurgen.data.dataset import (
    DreamBoothDataset,
    StepBatchSampler,
    collate,
    load_training_images,
    tokenize,
)
from spurgen.data.prior import PriorSampling, ensure_class_images, training_placement, weights_fingerprint
from spurgen.distributed import RankBatchSampler, module_rank_world
from spurgen.errors import Problems
from spurgen.files import output_folder, write_atomic, write_json
from spurgen.identity import identities, training_key
from spurgen.loggers import RunLabels, finish, scrub_secrets
from spurgen.models.lora import add_lora, merge_lora
from spurgen.models.parts import SDParts
from spurgen.module import SpurgenModule
from spurgen.pipeline import make_pipeline, save_pipeline
from spurgen.prompts import negative_prompt
from spurgen.validation import (
    TRAINING_KEY_FILE,
    check_extractor_pairing,
    check_inputs,
    check_resolution,
    check_same_training,
    check_t_max,
)

log = logging.getLogger("spurgen")

_BANNER_LINES = (
    "TINY RANDOM MODELS: this run uses tiny, randomly initialised SD parts and extractor.",
    "It checks the plumbing; its images, losses and rates mean nothing about real models.",
)


def _frame(lines) -> str:
    """Lines framed in "!!" at 92 characters (each line at most 86)."""
    return "\n".join(["", "!" * 92, *(f"!!  {line:<86}!!" for line in lines), "!" * 92, ""])


TINY_BANNER = _frame(_BANNER_LINES)


@dataclass
class TrainPlan:
    """What the cheap checks settled before any model is built."""

    run_dir: Path
    references: list[Path]
    resume_from: Path | None
    started: float


def announce(parts: SDParts) -> None:
    """The banner of a model whose numbers are not Stable Diffusion results (tiny random, or the preset's own)."""
    if parts.is_tiny_random:
        print(TINY_BANNER, flush=True)
    if parts.banner:
        print(banner(parts.banner), flush=True)


def banner(text: str) -> str:
    """`text` framed like the tiny banner, wrapped at 86 characters."""
    import textwrap

    return _frame(textwrap.wrap(" ".join(text.split()), 86))


def run_metadata(cfg: DictConfig, parts: SDParts | None, **extra) -> dict:
    return {
        "method_version": METHOD_VERSION,
        "method": cfg.method.name,  # conf/method: how the images are made (in the identity too)
        "identity": identities(cfg),  # spurgen/identity.py: which runs are seeds of one experiment
        "class_file": cfg.target.get("file"),
        "model": parts.model_id if parts else None,
        "model_weights": weights_fingerprint(parts) if parts else None,  # by content: the report splits on it
        "model_is_tiny_random": bool(parts.is_tiny_random) if parts else None,
        "model_marks": dict(parts.marks) if parts else {},
        "class_index": int(cfg.target.index),
        "class_name": cfg.target.name,
        "lambda_sfsl": float(cfg.loss.lambda_sfsl),
        "seed": int(cfg.seed),
        "reference_seed": int(cfg.data.reference_seed),
        **extra,
    }


def check_writable(run_dir: Path) -> None:
    """The run folder exists and takes files (it may be a resumed run's, or one Hydra did not make)."""
    output_folder(run_dir, "hydra.run.dir")


def build_dataset(
    cfg: DictConfig, parts: SDParts, ref_images: torch.Tensor, resolution: int
) -> DreamBoothDataset:
    """Instance (reference) examples plus, with prior preservation, class images from the frozen model."""
    with_prior = cfg.loss.lambda_prior > 0 and cfg.data.num_class_images > 0
    if cfg.loss.lambda_prior > 0 and not with_prior:
        log.warning(
            "prior preservation is off: data.num_class_images=0 leaves loss.lambda_prior=%s no class images "
            "(set loss.lambda_prior=0 to say so, or data.num_class_images > 0)",
            cfg.loss.lambda_prior,
        )
    class_paths = []
    if with_prior:
        device, dtype = training_placement(  # the frozen model samples where and how it will train
            cfg.trainer.get("accelerator", "auto"),
            cfg.trainer.get("devices", 1),
            cfg.trainer.get("precision"),
        )
        sampling = PriorSampling(
            int(cfg.data.class_image_steps),
            float(cfg.data.class_image_guidance),
            int(cfg.data.class_image_batch_size),
            device=device,
            dtype=dtype,
        )
        class_paths = ensure_class_images(
            parts,
            cfg.data.class_prompt,
            resolution,
            int(cfg.data.num_class_images),
            cfg.data.class_images_dir,
            sampling,
        )
    return DreamBoothDataset(
        ref_images,
        tokenize(parts.tokenizer, cfg.data.instance_prompt),
        class_paths,
        tokenize(parts.tokenizer, cfg.data.class_prompt) if with_prior else None,
        resolution,
        cfg.data.center_crop,
    )


def plan_training(cfg: DictConfig, run_dir: Path) -> TrainPlan:
    """Cheap checks before anything heavy is loaded (output folder, then spurgen/validation.py's check_inputs:
    reference files, model folder, extractor file, launcher; the checkpoint to resume from); every problem
    found is reported in one message."""
    started = time.time()
    run_dir = Path(run_dir)
    problems = Problems()
    problems.attempt(check_writable, run_dir)
    references = check_inputs(cfg, problems)
    problems.raise_any()
    check_same_training(cfg, run_dir)
    resume_from = newest_loadable_checkpoint(run_dir / "checkpoints") if cfg.resume else None
    if cfg.resume:
        log.info("resuming in %s from %s", run_dir, resume_from or "the start (no loadable checkpoint)")
    return TrainPlan(run_dir, references or [], resume_from, started)


def record_training_key(cfg: DictConfig, run_dir: Path) -> None:
    """run_dir/training_key.json: the settings this run's weights are trained with (what resume= must find
    unchanged). Written when training starts, so a run refused on its inputs leaves no folder behind."""
    path = Path(run_dir) / TRAINING_KEY_FILE
    if not (cfg.resume and path.is_file()):
        write_atomic(path, json.dumps(training_key(cfg), indent=2, sort_keys=True, default=str) + "\n")


def build_extractor(cfg: DictConfig):
    """The frozen feature extractor f, only when lambda_sfsl > 0 (lambda_sfsl = 0 never builds or runs it).
    Built before the SD parts: it is the cheaper load, and a random extractor under a real generator stops the
    run here, before minutes of loading, unless train.allow_random_extractor=true says the pairing is meant."""
    if float(cfg.loss.lambda_sfsl) <= 0:
        return None
    extractor = build(cfg.feature_extractor)
    check_extractor_pairing(cfg, extractor.name, extractor.is_random)
    return extractor


def extractor_identity(cfg: DictConfig, extractor) -> dict:
    """The extractor's identity for run.json, spurgen.json, metrics.json and the W&B config; with
    lambda_sfsl = 0 it was never built: only its configured name is recorded."""
    if extractor is not None:
        return {**extractor.identity(), "used": True}
    return {"name": cfg.feature_extractor.get("name"), "used": False}


def build_objective(cfg: DictConfig, extractor, ref_images: torch.Tensor):
    """L = L_inst + lambda_prior L_prior + lambda_sfsl L_SFSL (spurgen/losses). The SFSL exists only when
    lambda_sfsl > 0; it owns the frozen extractor and computes the reference target m itself."""
    sfsl = None
    if extractor is not None:
        sfsl = build(cfg.loss.sfsl, extractor=extractor)
        sfsl.set_reference_images(ref_images)
    loss = OmegaConf.to_container(cfg.loss, resolve=True)
    loss.pop("sfsl")  # the typed sfsl node cannot hold the built object: pass it in instead
    return build(loss, sfsl=sfsl)


def build_module(
    cfg: DictConfig, parts: SDParts, extractor, ref_images: torch.Tensor, tuning=None
) -> SpurgenModule:
    """The LightningModule from `cfg.module` (settings and optimiser partial), handed the parts, the objective
    and the method's tuning (what the optimiser trains); memory options and LoRA are applied to the parts
    first."""
    if cfg.train.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()
        parts.text_encoder.gradient_checkpointing_enable()
    if cfg.train.lora_rank > 0:  # LoRA adapters instead of full fine-tuning (spurgen/models/lora.py)
        add_lora(
            parts,
            cfg.train.lora_rank,
            cfg.train.lora_alpha,
            cfg.train.lora_dropout,
            cfg.train.train_text_encoder,
        )
    # a partial: Hydra would read the SDParts dataclass passed as a keyword as config, not pass it through
    make_module = build(cfg.module, _partial_=True)
    return make_module(parts, build_objective(cfg, extractor, ref_images), tuning=tuning)


def build_loader(cfg: DictConfig, dataset: DreamBoothDataset, module: SpurgenModule) -> DataLoader:
    """Batch b depends only on (seed, b), and a resumed run starts at the batches its checkpoint had seen;
    under DDP each rank takes its own batches."""
    sampler = StepBatchSampler(
        len(dataset), int(cfg.data.batch_size), int(cfg.seed), lambda: module.batches_seen
    )
    return DataLoader(
        dataset,
        batch_sampler=RankBatchSampler(sampler, module_rank_world(module)),
        collate_fn=collate,
        num_workers=int(cfg.data.num_workers),
    )


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """Every entry of `cfg.callbacks`, in order (the progress bar only when trainer.enable_progress_bar is
    on); the signal handler last, so that it sees a signal sent by any other callback in the same step."""
    callbacks = [build(node) for node in cfg.callbacks.values() if node is not None]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar it was told not to show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return sorted(callbacks, key=lambda c: isinstance(c, GracefulInterrupt))


def run_labels(cfg: DictConfig) -> RunLabels:
    """W&B name, group and tags from the config; a method other than the default sfsl names itself in both."""
    cls = cfg.target.name.replace(" ", "_")
    lam = float(cfg.loss.lambda_sfsl)
    method = cfg.method.name
    other = [] if method == "sfsl" else [method]
    return RunLabels(
        name="-".join([cls, *other, f"lambda{lam:g}", f"seed{cfg.seed}"]),
        group=cls,
        tags=[
            f"class:{cfg.target.index}",
            *(f"method:{m}" for m in other),
            f"lambda_sfsl:{lam:g}",
            f"seed:{cfg.seed}",
        ],
    )


def build_trainer(cfg: DictConfig, run_dir: Path, run_config: dict) -> L.Trainer:
    """The Trainer from `cfg.trainer` (`_target_: lightning.Trainer`, any of its arguments), handed the
    callbacks and the logger built from their own groups."""
    logger = build(cfg.logger)(run_dir, run_config, run_labels(cfg))
    node = OmegaConf.to_container(cfg.trainer, resolve=True)
    plugins = [*(node.pop("plugins", None) or []), AtomicCheckpointIO()]
    make_trainer = build(node, _partial_=True)  # built objects are passed to the call, not through Hydra
    return make_trainer(
        logger=logger,
        callbacks=build_callbacks(cfg),
        default_root_dir=str(run_dir),
        plugins=plugins,
    )


def resolved_config(cfg: DictConfig, parts: SDParts, extractor: dict) -> dict:
    """The resolved config, secrets masked, as stored in checkpoints and the W&B config, with what was built."""
    resolved = scrub_secrets(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    resolved["model_is_tiny_random"] = parts.is_tiny_random
    resolved["model_marks"] = dict(parts.marks)
    resolved["extractor"] = extractor
    return resolved


def fit(trainer: L.Trainer, module: SpurgenModule, loader: DataLoader, plan: TrainPlan) -> float:
    """trainer.fit, then last.ckpt; returns fit's wall time in seconds."""
    if module.parts.is_tiny_random and trainer.logger is not None:
        trainer.logger.log_metrics({"meta/model_is_tiny_random": 1.0}, step=0)
    started = time.perf_counter()
    try:
        trainer.fit(module, loader, ckpt_path=str(plan.resume_from) if plan.resume_from else None)
        trainer.save_checkpoint(str(plan.run_dir / "checkpoints" / "last.ckpt"), weights_only=False)
    finally:
        finish(trainer.logger)
    return round(time.perf_counter() - started, 2)


def fine_tuning_cost(plan: TrainPlan, steps: int, fit_seconds: float, passes: dict[str, int]) -> dict:
    """run.json's cost.fine_tuning: the stage's wall time (loading, prior images, fit, saving), fit's alone,
    the optimiser steps, and the images through the extractor f (forward: the references once, for m, and the
    gated instance samples of each SFSL step; backward: those samples)."""
    return {
        "seconds": round(time.time() - plan.started, 2),
        "fit_seconds": fit_seconds,
        "steps": int(steps),
        "extractor_forward": int(passes["forward"]),
        "extractor_backward": int(passes["backward"]),
    }


def save_outputs(
    cfg: DictConfig, plan: TrainPlan, trainer: L.Trainer, module: SpurgenModule, meta: dict
) -> dict:
    """pipeline/ (a plain diffusers folder, LoRA merged) and run.json, on global rank 0."""
    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    meta.update(
        steps=int(trainer.global_step),
        final_losses=final,
        references=[str(p) for p in plan.references],
        instance_prompt=cfg.data.instance_prompt,
        class_prompt=cfg.data.class_prompt,
        identifier=cfg.data.identifier,
        concept=cfg.target.concept,
        negative_prompt=negative_prompt(cfg.target),
        train_seconds=round(time.time() - plan.started, 2),
    )
    if trainer.is_global_zero:
        module.eval()
        if cfg.train.lora_rank > 0:  # merged, so pipeline/ is a plain diffusers folder
            merge_lora(module.unet)
            merge_lora(module.text_encoder)
        save_pipeline(module.pipeline(), plan.run_dir / "pipeline", meta)
        (plan.run_dir / "run.json").write_text(json.dumps(meta, indent=2))
    return meta


def save_untrained(cfg: DictConfig, plan: TrainPlan, parts: SDParts, resolution: int) -> dict:
    """A method without fine-tuning (method=guidance): pipeline/ is the base model as built, with the spurgen.json
    and run.json a trained run writes (0 steps, no losses, no extractor passes), so generate and evaluate read
    the run folder as they read any other."""
    identity = extractor_identity(cfg, None)
    meta = run_metadata(
        cfg, parts, resolution=resolution, prediction_type=parts.prediction_type, extractor=identity
    )
    meta.update(
        steps=0,
        final_losses={},
        references=[str(p) for p in plan.references],
        instance_prompt=cfg.data.instance_prompt,
        class_prompt=cfg.data.class_prompt,
        identifier=None,  # no token was learnt
        concept=cfg.target.concept,
        negative_prompt=negative_prompt(cfg.target),
        train_seconds=round(time.time() - plan.started, 2),
    )
    meta["cost"] = {"fine_tuning": fine_tuning_cost(plan, 0, 0.0, {"forward": 0, "backward": 0})}
    pipe = make_pipeline(parts.unet, parts.text_encoder, parts.tokenizer, parts.vae, parts.sample_scheduler)
    save_pipeline(pipe, plan.run_dir / "pipeline", meta)
    write_json(plan.run_dir / "run.json", meta)
    log.info("method=%s does not fine-tune: pipeline/ is the base model", cfg.method.name)
    return meta


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Returns the run metadata (also written to run_dir/run.json)."""
    plan = plan_training(cfg, run_dir)
    method = build(cfg.method)  # spurgen/methods: what fine-tuning trains, if anything
    extractor = build_extractor(cfg)
    parts: SDParts = build(cfg.model)
    announce(parts)
    resolution = check_resolution(
        int(cfg.data.resolution or parts.resolution), parts.resolution_multiple, "data.resolution"
    )
    if not method.fine_tunes:
        return save_untrained(cfg, plan, parts, resolution)
    check_t_max(cfg, int(parts.noise_scheduler.config.num_train_timesteps))
    log.info("references (%d): %s", len(plan.references), ", ".join(p.name for p in plan.references))
    ref_images = load_training_images(
        plan.references, resolution, cfg.data.center_crop
    )  # (R, 3, H, W) in [0, 1]
    method.tuning.prepare(parts)  # textual inversion adds its token before the prompts are tokenised
    dataset = build_dataset(cfg, parts, ref_images, resolution)
    module = build_module(cfg, parts, extractor, ref_images, method.tuning)
    identity = extractor_identity(cfg, extractor)
    module.run_config = resolved_config(cfg, parts, identity)
    trainer = build_trainer(cfg, plan.run_dir, module.run_config)
    record_training_key(cfg, plan.run_dir)
    fit_seconds = fit(trainer, module, build_loader(cfg, dataset, module), plan)
    meta = run_metadata(
        cfg, parts, resolution=resolution, prediction_type=parts.prediction_type, extractor=identity
    )
    meta["cost"] = {
        "fine_tuning": fine_tuning_cost(plan, trainer.global_step, fit_seconds, module.extractor_passes())
    }
    meta = save_outputs(cfg, plan, trainer, module, meta)
    if trainer.is_global_zero:
        announce(parts)
    return meta
