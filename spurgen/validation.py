"""Every check of a composed config, in one place. Types are checked by the schema (spurgen/config.py) when
Hydra composes; this module checks what types cannot (ranges, choices, keys a stage needs) before anything is
built, and reports every problem it finds in one message, each naming its key.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from spurgen import imagenet
from spurgen.errors import ConfigError, Problems
from spurgen.seeds import GENERATION_STRIDE

KNOWN_STAGES = ("train", "generate", "evaluate")
OPTIMIZERS = ("adamw", "adamw8bit")
GENERATE_DTYPES = ("auto", "float32", "float16", "bfloat16")
CROPS = ("none", "model")
LOGGERS = ("wandb", "csv", "none")
NONNEGATIVE = (
    "lambda_sfsl",
    "loss.lambda_prior",
    "loss.lambda_sfsl",
    "data.num_class_images",
    "train.lr_unet",
    "train.lr_text_encoder",
    "train.keep_last_n",
    "train.checkpoint_every_n_steps",
    "train.sample_every_n_steps",
    "train.num_samples",
    "train.lora_rank",
    "data.reference_seed",
    "seed",
)
POSITIVE = ("loss.sfsl.t_max", "loss.sfsl.every_n_steps", "data.num_references", "data.batch_size")
POSITIVE_OR_NULL = ("loss.sfsl.decode_size", "data.resolution", "threads")


def _nonneg(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None or not math.isfinite(value) or value < 0:
        raise ConfigError(key, f"must be a finite number >= 0, got {value!r}")


def _positive(cfg: DictConfig, key: str, allow_none: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(key, f"must be > 0, got {value!r}")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}, got {value!r}")


def check_target(cfg: DictConfig) -> None:
    """target.index in 0..999; name and synonyms filled from the ImageNet label list when null."""
    if OmegaConf.is_missing(cfg.target, "index"):
        raise ConfigError("target.index", "missing: with class=imagenet give target.index=<0..999>")
    index = cfg.target.index
    if not 0 <= index < imagenet.NUM_CLASSES:
        raise ConfigError("target.index", f"ImageNet class index must be in 0..999, got {index}")
    if not cfg.target.name:
        cfg.target.name = imagenet.short_name(index)
    if not cfg.target.synonyms:
        cfg.target.synonyms = imagenet.synonyms(index)


def check_training(cfg: DictConfig) -> None:
    """Keys the train stage reads."""
    if "train" in cfg.stages and not (cfg.target.concept and str(cfg.target.concept).strip()):
        name = cfg.target.get("name")
        index = OmegaConf.select(cfg, "target.index", throw_on_missing=False)
        raise ConfigError(
            "target.concept",
            f"class {name!r} (index {index}) has no spurious concept noun; training needs one "
            "for the prompts, e.g. target.concept=flower",
        )
    ident = cfg.data.identifier
    if len(ident.strip()) == 0 or " " in ident:
        raise ConfigError("data.identifier", f"must be one token without spaces, got {ident!r}")
    if cfg.feature_extractor.get("layer", "pool") == "":
        raise ConfigError("feature_extractor.layer", "must be 'pool' or a module name")


MODEL_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "noise_scheduler", "sample_scheduler")


def check_model_path(cfg: DictConfig) -> None:
    """A part read from model.path (model/<part>=pretrained) needs it set: model=local leaves it unset on
    purpose, and without this check a run would need the user to notice which weights it loaded."""
    model = cfg.get("model")
    if model is None or "path" not in model or OmegaConf.select(cfg, "model.path") is not None:
        return
    reads = [p for p in MODEL_PARTS if p in model and OmegaConf.is_dict(model[p]) and "path" in model[p]]
    if reads:
        raise ConfigError(
            "model.path",
            f"is required ({', '.join(reads)} load from it): model.path=<diffusers folder or hub id>",
        )


def check_generate(gen: DictConfig) -> None:
    """The generate.* keys (run before training, and by the generate stage itself)."""
    for key in ("num_images", "num_inference_steps", "batch_size"):
        if int(gen[key]) <= 0:
            raise ConfigError(f"generate.{key}", f"must be > 0, got {gen[key]}")
    if int(gen.num_images) > GENERATION_STRIDE:
        raise ConfigError(
            "generate.num_images", f"at most {GENERATION_STRIDE} (spurgen/seeds.py), got {gen.num_images}"
        )
    if int(gen.seed) < 0:
        raise ConfigError("generate.seed", f"must be >= 0 (generation seeds derive from it), got {gen.seed}")
    if not gen.templates:
        raise ConfigError("generate.templates", "must hold at least one template")
    for t in gen.templates:
        if "{prompt}" not in t:
            raise ConfigError("generate.templates", f"{t!r} lacks the placeholder {{prompt}}")
    _choice("generate.dtype", gen.dtype, GENERATE_DTYPES)


def check_eval(ev: DictConfig) -> None:
    """The eval.* keys (run before training, and by the evaluate/export stages); nothing is built or
    imported beyond each classifier's builder function."""
    if ev.get("classifier_set") is not None:
        raise ConfigError(
            "eval.classifier_set", f"was removed: choose the classifier group with eval={ev.classifier_set}"
        )
    _choice("eval.crop", ev.crop, CROPS)
    for key in ("batch_size", "bootstrap_samples"):
        if int(ev[key]) <= 0:
            raise ConfigError(f"eval.{key}", f"must be > 0, got {ev[key]}")
    if not ev.classifiers:
        raise ConfigError(
            "eval.classifiers",
            "is empty: choose a classifier group (eval=default, eval=tiny) or add one with "
            "+eval.classifiers.<name>={_target_: spurgen.models.loaders.load_timm, arch: <timm name>}",
        )
    for name, node in ev.classifiers.items():
        check_builder(f"eval.classifiers.{name}", node)


def check_builder(key: str, node: Any) -> None:
    """A `_target_` node whose target imports (without building anything)."""
    from hydra.utils import get_method

    target = node.get("_target_") if isinstance(node, DictConfig | dict) else None
    if not target:
        raise ConfigError(key, "needs a _target_ builder, e.g. spurgen.models.loaders.load_timm")
    try:
        get_method(target)
    except Exception:  # noqa: BLE001 - Hydra raises ImportError / ValueError alike
        raise ConfigError(key, f"_target_ {target!r} is not an importable function") from None


def check_trainer_keys(cfg: DictConfig) -> None:
    """trainer.<key> must be a lightning.Trainer argument that spurgen does not set itself."""
    import lightning

    allowed = set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}
    managed = {"logger", "callbacks", "default_root_dir"}  # from their own config groups
    for key in cfg.trainer:
        if key in managed:
            raise ConfigError(
                f"trainer.{key}", "is set by spurgen (use logger=..., callbacks.*, hydra.run.dir=...)"
            )
        if key not in allowed:
            close = sorted(a for a in allowed if a[:4] == str(key)[:4])
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"trainer.{key}", f"is not a lightning.Trainer argument{hint}")


def check_trainer_steps(cfg: DictConfig) -> None:
    """trainer.max_steps: a count >= 0, or -1 (Lightning's "no limit") only when trainer.max_epochs ends the run."""
    steps = OmegaConf.select(cfg, "trainer.max_steps")
    if steps is None:
        return
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < -1:
        raise ConfigError("trainer.max_steps", f"must be a whole number of steps >= 0, got {steps!r}")
    if steps == -1 and OmegaConf.select(cfg, "trainer.max_epochs") in (None, -1):
        raise ConfigError("trainer.max_steps", "-1 (no limit) needs trainer.max_epochs to end training")


def _check_choices(cfg: DictConfig) -> None:
    for stage in cfg.stages:
        if stage not in KNOWN_STAGES:
            raise ConfigError("stages", f"unknown stage {stage!r}; known: {', '.join(KNOWN_STAGES)}")
    _choice("train.optimizer", cfg.train.optimizer, OPTIMIZERS)
    _choice("train.on_nonfinite", cfg.train.on_nonfinite, ("stop", "skip"))
    _choice("logger.kind", cfg.logger.kind, LOGGERS)


def validate(cfg: DictConfig) -> DictConfig:
    """Check a run's config before anything is built; fill target.name and synonyms from ImageNet.

    Raises ConfigError naming the key, or, with several problems, one ConfigError listing them all.
    """
    problems = Problems()
    problems.attempt(check_target, cfg)
    problems.attempt(check_training, cfg)
    problems.attempt(check_model_path, cfg)
    for key in NONNEGATIVE:
        problems.attempt(_nonneg, cfg, key)
    for key in POSITIVE:
        problems.attempt(_positive, cfg, key)
    for key in POSITIVE_OR_NULL:
        problems.attempt(_positive, cfg, key, True)
    problems.attempt(_check_choices, cfg)
    if "generate" in cfg.stages:
        problems.attempt(check_generate, cfg.generate)
    if "evaluate" in cfg.stages:
        problems.attempt(check_eval, cfg.eval)
    problems.attempt(check_trainer_keys, cfg)
    problems.attempt(check_trainer_steps, cfg)
    problems.raise_any()
    return cfg
