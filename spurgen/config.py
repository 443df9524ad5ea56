"""Typed configuration.

YAML under the top-level conf/ is what people edit; these dataclasses type it (registered in Hydra's ConfigStore
as `spurgen_schema`), so a misspelled key or a value of the wrong type fails at composition, naming the key.
Each default is written once: a group with a YAML file (data/, train/, loss/) holds its values there and its
dataclass declares only the types (MISSING); the other nodes (generate, eval settings, logger) keep their
defaults here. spurgen/validation.py adds the checks types cannot express and runs before anything is built.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf

# Bump whenever a default of the objective changes (METHOD.md: results from different definitions are never
# mixed silently); docs/CHANGELOG.md says what each version changed. Written into pipeline/spurgen.json, the
# metadata and the metrics of every run.
METHOD_VERSION = "3"


def _conf_dir() -> str:
    """The Hydra config tree: spurgen/conf in an installed wheel (pyproject.toml maps the top-level conf/ there),
    else the checkout's top-level conf/ (an editable install or a source tree on sys.path)."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return str(packaged if packaged.is_dir() else here.parent / "conf")


CONF_DIR = _conf_dir()


class Distance(str, Enum):
    cosine = "cosine"
    mse = "mse"


class ReferenceTarget(str, Enum):
    mean = "mean"  # normalised mean of the reference features (METHOD.md default)
    nearest = "nearest"  # the closest reference, per sample
    paired = "paired"  # the reference image paired with the instance sample


@dataclass
class TargetConfig:
    """The ImageNet class k and its spurious feature; the `class` group is placed here."""

    index: int = MISSING
    file: str | None = None  # the conf/class file this target came from (each class file sets its own name)
    name: str | None = None  # from the ImageNet label list when null
    concept: str | None = None  # spurious concept noun used in prompts ("flower"); needed to train
    feature: str | None = None  # human description of the spurious feature
    component: int | None = None  # Spurious ImageNet neural-PCA component; null = the only one
    synonyms: list[str] = field(default_factory=list)  # class names for the negative prompt
    reference_files: list[str] | None = None  # explicit reference file names inside the folder, if any
    reference_dir: str | None = None  # the class's own reference folder, used when data.reference_dir is null


@dataclass
class SFSLConfig:
    """Open choices of L_SFSL (METHOD.md, 'Open choices')."""

    _target_: str = MISSING
    distance: Distance = MISSING
    reference: ReferenceTarget = MISSING
    t_max: int = MISSING  # only instance samples with t <= t_max get the term
    decode_size: int | None = MISSING  # null: decode at full resolution, then resize for f
    every_n_steps: int = MISSING
    decoder_checkpointing: bool = MISSING  # recompute decoder activations in backward (memory, same value)
    decode_at_extractor_size: bool = (
        MISSING  # decode z0_hat resized to f's input size / 8 (overrides decode_size)
    )
    mean_free: bool = MISSING  # L_SFSL's gradient leaves each channel's mean of the model output alone (v3)


@dataclass
class LossConfig:
    _target_: str = MISSING
    lambda_prior: float = MISSING
    lambda_sfsl: float = MISSING  # ${lambda_sfsl}
    sfsl: SFSLConfig = field(default_factory=SFSLConfig)


@dataclass
class GuidanceConfig:
    """Sampling-time SFSL guidance (spurgen/methods/guidance.py): z_t moves against grad L_SFSL at the last K
    sampler steps."""

    _target_: str = MISSING
    strength: float = MISSING  # s: the step against the gradient (0: the plain sampler, bit for bit)
    last_k: int = MISSING  # guide the last K sampler steps
    schedule: str = MISSING  # constant | linear (weight (j+1)/K at the j-th of the last K steps)


@dataclass
class MethodConfig:
    """How a run makes its images (conf/method): what fine-tuning trains, whether L_SFSL may enter its
    objective, and the sampling-time guidance."""

    _target_: str = MISSING
    name: str = MISSING  # dreambooth | sfsl | guidance | sfsl_guidance | textual_inversion
    tuning: Any = MISSING  # a _target_ node (spurgen/methods/tuning.py), or null: no fine-tuning
    sfsl_loss: bool = MISSING  # lambda_sfsl > 0 allowed (false: the method's objective has no L_SFSL)
    guidance: GuidanceConfig | None = MISSING  # null: the plain sampler


@dataclass
class DataConfig:
    reference_dir: str | None = MISSING  # a plain folder of reference images
    spurious_imagenet_dir: str | None = (
        MISSING  # a Spurious ImageNet images/ folder (class index + component)
    )
    demo_references: bool = (
        MISSING  # allow the packaged demo images when no folder is given (tiny model only)
    )
    num_references: int = MISSING
    reference_seed: int = (
        MISSING  # picks the references (not the training seed: METHOD.md, "Seeds mean one thing")
    )
    num_class_images: int = MISSING
    resolution: int | None = MISSING  # null: from the model config
    identifier: str = MISSING  # the unique identifier token [V]
    instance_prompt: str = MISSING
    class_prompt: str = MISSING
    class_images_dir: str | None = MISSING  # null: the cache (SPURGEN_CACHE or ~/.cache/spurgen)
    class_image_steps: int = MISSING
    class_image_guidance: float = MISSING
    class_image_batch_size: int = MISSING
    batch_size: int = MISSING  # instance images per step (as many prior images are added)
    num_workers: int = MISSING
    center_crop: bool = MISSING


@dataclass
class TrainConfig:
    lr_unet: float = MISSING
    lr_text_encoder: float = MISSING
    weight_decay: float = MISSING
    adam_beta1: float = MISSING
    adam_beta2: float = MISSING
    adam_eps: float = MISSING
    train_text_encoder: bool = MISSING
    checkpoint_every_n_steps: int = MISSING
    keep_last_n: int = MISSING
    sample_every_n_steps: int = MISSING  # 0 disables intermediate validation samples
    num_samples: int = MISSING
    sample_steps: int = MISSING
    sample_guidance: float = MISSING
    gradient_checkpointing: bool = MISSING
    optimizer: str = MISSING  # adamw | adamw8bit (bitsandbytes, CUDA only)
    lora_rank: int = (
        MISSING  # 0: full fine-tuning; > 0: LoRA (peft) of this rank, merged before pipeline/ is saved
    )
    lora_alpha: float | None = MISSING  # null: = lora_rank
    lora_dropout: float = MISSING
    on_nonfinite: str = MISSING  # stop (message naming the term and step) | skip (skip the step, count it)
    cache_latents: bool = MISSING  # encode each training image with the frozen VAE once, not every step
    allow_random_extractor: bool = MISSING  # a real generator with a random extractor is refused unless true


@dataclass
class LoggerConfig:
    """The logger group (conf/logger/*.yaml): `_target_` builds a factory in spurgen/loggers.py."""

    _target_: str = "spurgen.loggers.CsvLogger"
    kind: str = "csv"  # wandb | csv | none
    project: str = "spurgen"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str = "auto"  # auto (offline without credentials or network) | online | offline | disabled


PROMPT_TEMPLATES = [
    "{prompt}",
    "{prompt} on the beach",
    "{prompt} on Mount Fuji",
    "{prompt} in a garden",
    "{prompt} in a market",
]


@dataclass
class GenerateConfig:
    """Generation from a fine-tuned pipeline (or the base model with generate.baseline=true)."""

    num_images: int = 100
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    batch_size: int = 4
    instance_prompt: str | None = None  # null: from pipeline/spurgen.json (required for a foreign pipeline)
    class_prompt: str | None = None  # null: from spurgen.json; the baseline's prompt
    negative_prompt: str | None = None  # null: spurgen.json, else class name + synonyms; "" disables
    templates: list[str] = field(default_factory=lambda: list(PROMPT_TEMPLATES))  # "{prompt}" is replaced
    sampler: str | None = None  # a diffusers scheduler class name; null: the pipeline's own
    seed: int = "${seed}"  # type: ignore[assignment]  # image i: spurgen.seeds.generation_seed(seed, i)
    resolution: int | None = None  # null: spurgen.json, else the UNet's native size
    baseline: bool = False  # the un-fine-tuned base model (the `model` group) with the class prompt
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (float16 on CUDA, float32 on CPU) | float32 | float16 | bfloat16


@dataclass
class EvalConfig:
    """Evaluation settings (METHOD.md, 'Evaluation'); the classifiers come from the `eval` group."""

    # name -> a `_target_` node building a FrozenImageModel (spurgen/models/loaders.py), e.g.
    # resnet50: {_target_: spurgen.models.loaders.load_timm, arch: resnet50, weights: null}
    classifiers: dict[str, Any] = field(default_factory=dict)
    classifier_set: str | None = None  # not a setting (eval=<name> selects the group): any value is refused
    reference_dir: str | None = None  # a plain folder or a Spurious ImageNet images/ folder
    baseline_dir: str | None = None  # images from the un-fine-tuned model (generate.baseline=true)
    imagenet_val_dir: str | None = None  # ImageNet validation images of the target class
    crop: str = "none"  # none (resize only, METHOD.md) | model (the model's resize + centre crop)
    batch_size: int = 32
    bootstrap_samples: int = 1000
    seed: int = "${seed}"  # type: ignore[assignment]
    device: str = "auto"
    channels_last: bool = True
    contact_sheet_max: int = 500


@dataclass
class SpurgenConfig:
    target: TargetConfig = field(default_factory=TargetConfig)
    model: Any = MISSING  # built with hydra.utils.instantiate (_target_)
    feature_extractor: Any = MISSING
    loss: LossConfig = field(default_factory=LossConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: dict[str, Any] = field(default_factory=dict)  # any lightning.Trainer argument
    module: Any = MISSING  # the LightningModule's settings and optimiser (conf/module), built with _target_
    callbacks: dict[str, Any] = field(default_factory=dict)  # name -> _target_ node (conf/callbacks)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lambda_sfsl: float = 0.1
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: ["train", "generate", "evaluate"])
    threads: int | None = None  # torch CPU threads of this run (null: torch's own); parallel sweep jobs: 1
    run_dir: str = "${hydra:runtime.output_dir}"
    resume: str | None = None
    method_version: str = METHOD_VERSION
    extras: dict[str, Any] = field(default_factory=dict)


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    node = OmegaConf.structured(SpurgenConfig)
    # `trainer.<any Lightning Trainer argument>` without "+": the trainer node accepts new keys; they are
    # checked against lightning.Trainer's signature in validate().
    OmegaConf.set_struct(node.trainer, False)
    ConfigStore.instance().store(name="spurgen_schema", node=node)


def asset_path(name: str) -> str:
    """Path of a file or folder shipped in spurgen/assets (the OmegaConf resolver `spurgen_asset`)."""
    return str(Path(str(resources.files("spurgen") / "assets" / name)))


def _hash_nodes(*nodes: Any) -> str:
    """Short hash of config nodes (resolved), e.g. the settings that make a random model what it is."""
    plain = [OmegaConf.to_container(n, resolve=True) if OmegaConf.is_config(n) else n for n in nodes]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _negative_prompt(name: str | None, synonyms: Any) -> str | None:
    from spurgen.prompts import negative_prompt

    return negative_prompt({"name": name, "synonyms": list(synonyms or [])})


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("spurgen_asset"):
        OmegaConf.register_new_resolver("spurgen_asset", asset_path)
    if not OmegaConf.has_resolver(
        "spurgen_eq"
    ):  # ${spurgen_eq:${lambda_sfsl},0}: a switch for one sweep value
        OmegaConf.register_new_resolver("spurgen_eq", lambda a, b: float(a) == float(b))
    if not OmegaConf.has_resolver(
        "spurgen_subdir"
    ):  # a sweep run's folder name, cut to fit (spurgen/sweep.py)
        from spurgen.sweep import short_dirname

        OmegaConf.register_new_resolver("spurgen_subdir", short_dirname)
    if not OmegaConf.has_resolver("spurgen_hash"):  # ${spurgen_hash:${model.unet},...}: ids of random parts
        OmegaConf.register_new_resolver("spurgen_hash", _hash_nodes)
    if not OmegaConf.has_resolver("spurgen_none_if_zero"):  # a cadence of 0 means never
        OmegaConf.register_new_resolver("spurgen_none_if_zero", lambda v: None if not v else v)
    if not OmegaConf.has_resolver("spurgen_negative_prompt"):  # the class name and its synonyms
        OmegaConf.register_new_resolver("spurgen_negative_prompt", _negative_prompt)
    if not OmegaConf.has_resolver("spurgen_resume_or"):
        OmegaConf.register_new_resolver("spurgen_resume_or", lambda resume, default: resume or default)
