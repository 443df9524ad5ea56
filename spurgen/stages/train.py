"""Stage 1: fine-tune SD on the reference images (DreamBooth + prior preservation + SFSL) and save pipeline/."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from spurgen.build import build
from spurgen.callbacks import SampleImages
from spurgen.checkpointing import (
    AtomicCheckpointIO,
    FaultInjection,
    GracefulInterrupt,
    newest_loadable_checkpoint,
)
from spurgen.config import METHOD_VERSION, asset_path
from spurgen.data.dataset import (
    DreamBoothDataset,
    StepBatchSampler,
    collate,
    load_training_images,
    tokenize,
)
from spurgen.data.prior import PriorSampling, ensure_class_images, training_placement
from spurgen.data.references import reference_folder, select_references
from spurgen.distributed import RankBatchSampler, check_launch, module_rank_world
from spurgen.errors import SpurgenError
from spurgen.identity import identities
from spurgen.loggers import build_logger, scrub_secrets
from spurgen.models.lora import add_lora, merge_lora
from spurgen.models.parts import SDParts
from spurgen.module import OptimSettings, SpurgenModule
from spurgen.optim import check_optimizer
from spurgen.pipeline import save_pipeline

log = logging.getLogger("spurgen")

_BANNER_LINES = (
    "TINY RANDOM MODELS: this run uses tiny, randomly initialised SD parts and extractor.",
    "It checks the plumbing; its images, losses and rates mean nothing about real models.",
)
TINY_BANNER = "\n".join(["", "!" * 92, *(f"!!  {line:<86}!!" for line in _BANNER_LINES), "!" * 92, ""])


def run_metadata(cfg: DictConfig, parts: SDParts | None, **extra) -> dict:
    return {
        "method_version": METHOD_VERSION,
        "identity": identities(cfg),  # spurgen/identity.py: which runs are seeds of one experiment
        "class_file": cfg.target.get("file"),
        "model": parts.model_id if parts else None,
        "model_is_tiny_random": bool(parts.is_tiny_random) if parts else None,
        "class_index": int(cfg.target.index),
        "class_name": cfg.target.name,
        "lambda_sfsl": float(cfg.loss.lambda_sfsl),
        "seed": int(cfg.seed),
        "reference_seed": int(cfg.data.reference_seed),
        **extra,
    }


def resolve_references(cfg: DictConfig) -> list[Path]:
    """Cheap, before any model is built: which reference files this run trains on."""
    folder = reference_folder(
        cfg.data.reference_dir,
        cfg.data.spurious_imagenet_dir,
        int(cfg.target.index),
        cfg.target.component,
        asset_path("demo_references") if cfg.data.demo_references else None,
    )
    names = list(cfg.target.reference_files) if cfg.target.reference_files else None
    return select_references(folder, int(cfg.data.num_references), int(cfg.data.reference_seed), names)


def negative_prompt(cfg: DictConfig) -> str:
    return ", ".join(dict.fromkeys([cfg.target.name, *cfg.target.synonyms]))


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list, logger) -> L.Trainer:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    plugins = [*(kwargs.pop("plugins", None) or []), AtomicCheckpointIO()]
    return L.Trainer(
        **kwargs, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir), plugins=plugins
    )


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".spurgen_write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise SpurgenError(
            f"output folder {run_dir} is not writable ({exc.strerror}); choose another with "
            "hydra.run.dir=<folder>"
        ) from None


def build_dataset(
    cfg: DictConfig, parts: SDParts, ref_images: torch.Tensor, resolution: int
) -> DreamBoothDataset:
    """Instance (reference) examples plus, with prior preservation, class images from the frozen model."""
    with_prior = cfg.loss.lambda_prior > 0 and cfg.data.num_class_images > 0
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


def build_module(
    cfg: DictConfig, parts: SDParts, ref_images: torch.Tensor, run_config: dict
) -> SpurgenModule:
    """The objective, the frozen extractor (only when the SFSL is on), memory options and LoRA, wrapped in
    the LightningModule."""
    objective = build(cfg.loss)
    extractor = build(cfg.feature_extractor) if objective.uses_sfsl else None
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
    return SpurgenModule(
        parts.unet,
        parts.text_encoder,
        parts.tokenizer,
        parts.vae,
        parts.noise_scheduler,
        extractor,
        objective,
        OptimSettings(
            cfg.train.lr_unet,
            cfg.train.lr_text_encoder,
            cfg.train.weight_decay,
            (cfg.train.adam_beta1, cfg.train.adam_beta2),
            cfg.train.adam_eps,
            cfg.train.train_text_encoder,
            optimizer=cfg.train.optimizer,
        ),
        seed=int(cfg.seed),
        on_nonfinite=cfg.train.on_nonfinite,
        reference_images=ref_images if objective.uses_sfsl else None,
        sample_scheduler=parts.sample_scheduler,
        run_config=run_config,
        cache_latents=cfg.train.cache_latents,
    )


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


def build_callbacks(
    cfg: DictConfig, run_dir: Path, parts: SDParts, resolution: int
) -> tuple[list, GracefulInterrupt]:
    """Checkpoints, intermediate samples, signal handling (and the test-only fault injection)."""
    ckpt = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="step-{step:06d}",
        every_n_train_steps=int(cfg.train.checkpoint_every_n_steps) or None,
        save_top_k=int(cfg.train.keep_last_n),
        monitor="step",
        mode="max",
        save_last=True,
        auto_insert_metric_name=False,
    )
    samples = SampleImages(
        run_dir / "samples",
        cfg.data.instance_prompt,
        int(cfg.train.sample_every_n_steps),
        int(cfg.train.num_samples),
        int(cfg.train.sample_steps),
        float(cfg.train.sample_guidance),
        resolution,
        negative_prompt(cfg),
        seed=int(cfg.seed),
        meta={"model_is_tiny_random": parts.is_tiny_random},
    )
    interrupt = GracefulInterrupt(run_dir / "checkpoints" / "last.ckpt", run_dir)
    callbacks = [ckpt, samples, interrupt]
    if os.environ.get("SPURGEN_FAULT_KILL_AT_STEP"):
        fault = FaultInjection(
            int(os.environ["SPURGEN_FAULT_KILL_AT_STEP"]), os.environ.get("SPURGEN_FAULT_SIGNAL", "KILL")
        )
        callbacks.insert(0, fault)  # before GracefulInterrupt, which then sees the signal at the same step
    return callbacks, interrupt


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Returns the run metadata (also written to run_dir/run.json)."""
    run_dir = Path(run_dir)
    t0 = time.time()
    check_writable(run_dir)
    check_launch(cfg.trainer)  # DDP inside a basic/joblib sweep cannot work: fail before building
    ref_paths = resolve_references(cfg)
    check_optimizer(cfg.train.optimizer)  # adamw8bit without CUDA/bitsandbytes fails before any model

    parts: SDParts = build(cfg.model)
    if parts.is_tiny_random:
        print(TINY_BANNER, flush=True)
    resolution = int(cfg.data.resolution or parts.resolution)
    log.info("references (%d): %s", len(ref_paths), ", ".join(p.name for p in ref_paths))
    ref_images = load_training_images(ref_paths, resolution, cfg.data.center_crop)  # (R, 3, H, W) in [0, 1]
    dataset = build_dataset(cfg, parts, ref_images, resolution)
    resolved = scrub_secrets(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    resolved["model_is_tiny_random"] = parts.is_tiny_random  # in checkpoints and the W&B config too
    module = build_module(cfg, parts, ref_images, resolved)
    loader = build_loader(cfg, dataset, module)

    meta = run_metadata(cfg, parts, resolution=resolution, prediction_type=parts.prediction_type)
    name = f"{cfg.target.name.replace(' ', '_')}-lambda{cfg.loss.lambda_sfsl:g}-seed{cfg.seed}"
    logger = build_logger(
        cfg.logger,
        run_dir,
        resolved,
        name,
        group=cfg.target.name.replace(" ", "_"),
        tags=[f"class:{cfg.target.index}", f"lambda_sfsl:{cfg.loss.lambda_sfsl:g}", f"seed:{cfg.seed}"],
    )
    callbacks, interrupt = build_callbacks(cfg, run_dir, parts, resolution)
    trainer = build_trainer(cfg, run_dir, callbacks, logger)
    if parts.is_tiny_random and trainer.logger is not None:
        trainer.logger.log_metrics({"meta/model_is_tiny_random": 1.0}, step=0)
    resume_from = newest_loadable_checkpoint(run_dir / "checkpoints") if cfg.resume else None
    if cfg.resume:
        log.info("resuming in %s from %s", run_dir, resume_from or "the start (no loadable checkpoint)")
    interrupt.install()
    try:
        trainer.fit(module, loader, ckpt_path=str(resume_from) if resume_from else None)
    finally:
        interrupt.uninstall()
    trainer.save_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"), weights_only=False)

    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    meta.update(
        steps=int(trainer.global_step),
        final_losses=final,
        references=[str(p) for p in ref_paths],
        instance_prompt=cfg.data.instance_prompt,
        class_prompt=cfg.data.class_prompt,
        identifier=cfg.data.identifier,
        concept=cfg.target.concept,
        negative_prompt=negative_prompt(cfg),
        train_seconds=round(time.time() - t0, 2),
    )
    if trainer.is_global_zero:
        module.eval()
        if cfg.train.lora_rank > 0:  # merged, so pipeline/ is a plain diffusers folder
            merge_lora(module.unet)
            merge_lora(module.text_encoder)
        save_pipeline(module.pipeline(), run_dir / "pipeline", meta)
        (run_dir / "run.json").write_text(json.dumps(meta, indent=2))
        if parts.is_tiny_random:
            print(TINY_BANNER, flush=True)
    return meta
