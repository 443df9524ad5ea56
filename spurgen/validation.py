"""Every check of a composed config, in one place. Types are checked by the schema (spurgen/config.py) when
Hydra composes; this module checks what types cannot (ranges, choices, keys a stage needs) and the inputs the
config names (reference images, a local model folder, an extractor's weights file), and reports every problem
it finds in one message, each naming its key.

`validate` and `check_inputs` run before anything heavy is imported (torch, Lightning, diffusers), so a
mistake is refused in about a second. The few checks that need a built part take the number they need
(`check_t_max` the model's training timesteps, `check_resolution` the sides its VAE and UNet can make).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from spurgen import imagenet
from spurgen.config import asset_path
from spurgen.data.references import reference_folder, select_references
from spurgen.errors import ConfigError, Problems, SpurgenError
from spurgen.identity import training_key
from spurgen.models.sd import check_source
from spurgen.seeds import GENERATION_STRIDE

KNOWN_STAGES = ("train", "generate", "evaluate")
ON_NONFINITE = ("stop", "skip")
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


def check_method(cfg: DictConfig) -> None:
    """The method group (conf/method): its objective, its guidance, and the settings each needs."""
    method = cfg.method
    if float(cfg.lambda_sfsl) > 0 and not method.sfsl_loss:
        hint = "method=sfsl_guidance" if method.guidance is not None else "method=sfsl"
        raise ConfigError(
            "lambda_sfsl",
            f"method={method.name} has no L_SFSL in its fine-tuning: lambda_sfsl must be 0, got "
            f"{cfg.lambda_sfsl} ({hint} trains with it)",
        )
    tuning = method.tuning
    if tuning is not None and str(tuning.get("_target_", "")).endswith("TextualInversion"):
        if int(cfg.train.lora_rank) > 0:
            raise ConfigError("train.lora_rank", f"method={method.name} trains one embedding: LoRA must be 0")
    guidance = method.guidance
    if guidance is None:
        return
    _nonneg(cfg, "method.guidance.strength")
    _positive(cfg, "method.guidance.last_k")
    _choice("method.guidance.schedule", guidance.schedule, ("constant", "linear"))
    if str(cfg.loss.sfsl.reference) in ("paired", "ReferenceTarget.paired"):
        raise ConfigError(
            "loss.sfsl.reference", "paired needs a training image per sample: guidance uses mean or nearest"
        )
    if cfg.generate.dtype == "float16":
        raise ConfigError("generate.dtype", "SFSL guidance decodes with gradients: float32 or bfloat16")


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


def eval_problems(ev: DictConfig) -> Problems:
    """check_eval's problems, collected for a stage that reports them with its own input checks."""
    problems = Problems()
    problems.attempt(check_eval, ev)
    return problems


def check_builder(key: str, node: Any) -> None:
    """A `_target_` node whose target exists (without building anything, and without importing a module that
    is not loaded yet: a spurgen builder is looked up in its source, so the check stays cheap)."""
    target = node.get("_target_") if isinstance(node, DictConfig | dict) else None
    if not target:
        raise ConfigError(key, "needs a _target_ builder, e.g. spurgen.models.loaders.load_timm")
    if not _defined(str(target)):
        raise ConfigError(key, f"_target_ {target!r} is not an importable function")


def _defined(target: str) -> bool:
    """Whether `module.name` names something: read from the module's source for spurgen's own modules not
    imported yet (a top-level def, class, assignment or import), else by importing it (hydra's get_method)."""
    import ast
    import sys

    module, _, name = target.rpartition(".")
    if module.startswith("spurgen.") and module not in sys.modules:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not str(spec.origin).endswith(".py"):
            return False
        tree = ast.parse(Path(spec.origin).read_text())
        names: set[str] = set()
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(stmt.name)
            elif isinstance(stmt, ast.Assign | ast.AnnAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
            elif isinstance(stmt, ast.Import | ast.ImportFrom):
                names.update((a.asname or a.name).split(".")[0] for a in stmt.names)
        return name in names
    from hydra.utils import get_method

    try:
        get_method(target)
    except Exception:  # noqa: BLE001 - Hydra raises ImportError / ValueError alike
        return False
    return True


TRAINER = "lightning.Trainer"  # conf/trainer/default.yaml's _target_


def check_trainer_keys(cfg: DictConfig) -> None:
    """trainer.<key> must be a lightning.Trainer argument that spurgen does not set itself. The arguments are
    read from lightning's source file, not its import (ten seconds), so the check answers at once."""
    target = cfg.trainer.get("_target_")
    if target not in (TRAINER, "lightning.pytorch.Trainer"):
        raise ConfigError(
            "trainer._target_", f"must be {TRAINER} (conf/trainer/default.yaml), got {target!r}"
        )
    allowed = trainer_arguments()
    managed = {"logger", "callbacks", "default_root_dir"}  # from their own config groups
    for key in cfg.trainer:
        if key in ("_target_", "_partial_"):
            continue
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


def trainer_arguments() -> set[str]:
    """lightning.Trainer's keyword arguments, read from its source with ast (no import of lightning)."""
    import ast

    spec = importlib.util.find_spec("lightning")  # a submodule's spec would import its packages
    source = Path(next(iter(spec.submodule_search_locations))) / "pytorch" / "trainer" / "trainer.py"
    tree = ast.parse(source.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    args = init.args
    return {a.arg for a in [*args.args, *args.kwonlyargs]} - {"self"}


def _check_choices(cfg: DictConfig) -> None:
    for stage in cfg.stages:
        if stage not in KNOWN_STAGES:
            raise ConfigError("stages", f"unknown stage {stage!r}; known: {', '.join(KNOWN_STAGES)}")
    _choice("train.optimizer", cfg.train.optimizer, OPTIMIZERS)
    _choice("train.on_nonfinite", cfg.train.on_nonfinite, ON_NONFINITE)
    _choice("logger.kind", cfg.logger.kind, LOGGERS)


def validate(cfg: DictConfig) -> DictConfig:
    """Check a run's config before anything is built; fill target.name and synonyms from ImageNet.

    Raises ConfigError naming the key, or, with several problems, one ConfigError listing them all.
    """
    problems = Problems()
    problems.attempt(check_target, cfg)
    problems.attempt(check_training, cfg)
    problems.attempt(check_model_path, cfg)
    problems.attempt(check_method, cfg)
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
    problems.attempt(check_optimizer, cfg.train.optimizer)
    problems.raise_any()
    return cfg


# --- the inputs a run's config names: checked before anything heavy is imported -----------------------------


def resolve_references(cfg: DictConfig) -> list[Path]:
    """Which reference files this run trains on (the folder exists and holds enough images)."""
    folder = reference_folder(
        cfg.data.reference_dir,
        cfg.data.spurious_imagenet_dir,
        int(cfg.target.index),
        cfg.target.component,
        # the class file's own references, then the packaged demo images (tiny models only)
        cfg.target.get("reference_dir")
        or (asset_path("demo_references") if cfg.data.demo_references else None),
    )
    names = list(cfg.target.reference_files) if cfg.target.reference_files else None
    return select_references(folder, int(cfg.data.num_references), int(cfg.data.reference_seed), names)


def check_extractor_file(cfg: DictConfig) -> None:
    """With lambda_sfsl > 0, a weights file the extractor names must exist (no hub fallback)."""
    weights = OmegaConf.select(cfg, "feature_extractor.weights", throw_on_missing=False)
    if (
        float(cfg.loss.lambda_sfsl) <= 0
        or not isinstance(weights, str)
        or Path(weights).expanduser().is_file()
    ):
        return
    name = cfg.feature_extractor.get("name") or cfg.feature_extractor.get("_target_")
    if made_by := cfg.feature_extractor.get("made_by"):  # a file spurgen makes: say the command
        raise SpurgenError(
            f"feature_extractor.weights: {weights} not found for {name!r}; make it with `{made_by}`"
        )
    raise SpurgenError(
        f"feature_extractor.weights: {weights} not found for the SFSL extractor {name!r}; put the file there or "
        "set feature_extractor.weights=/path/to/file (lambda_sfsl=0 trains without an extractor)"
    )


def check_classifier_files(cfg: DictConfig) -> None:
    """With the evaluate stage, an evaluation classifier whose weights file spurgen makes (it names `made_by`)
    must have it before any job trains."""
    if "evaluate" not in (cfg.get("stages") or []):
        return
    for key, node in (OmegaConf.select(cfg, "eval.classifiers") or {}).items():
        weights, made_by = node.get("weights"), node.get("made_by")
        if made_by and isinstance(weights, str) and not Path(weights).expanduser().is_file():
            raise SpurgenError(
                f"eval.classifiers.{key}.weights: {weights} not found; make it with `{made_by}`"
            )


def check_inputs(cfg: DictConfig, problems: Problems | None = None) -> list[Path] | None:
    """The checks of a training run's inputs that need no run folder and load nothing (reference files, a
    local model folder, the extractor's weights file, a sweep's launcher); a sweep runs them for every job
    before it starts any. Adds each problem to `problems`, or raises them all at once when none is given.
    Returns the references."""
    own = problems is None
    problems = Problems() if own else problems
    references = problems.attempt(resolve_references, cfg)
    problems.attempt(check_source, cfg.model.get("path"))  # a local SD folder exists and is complete
    problems.attempt(check_extractor_file, cfg)
    problems.attempt(check_classifier_files, cfg)
    problems.attempt(check_launch, cfg.trainer)  # DDP inside a basic/joblib sweep cannot work
    if own:
        problems.raise_any()
    return references


def check_optimizer(name: str) -> None:
    """train.optimizer=adamw8bit needs a CUDA GPU and bitsandbytes."""
    if name != "adamw8bit":
        return
    import torch  # only for this choice: the plain AdamW check imports nothing

    if not torch.cuda.is_available():
        raise ConfigError(
            "train.optimizer",
            "adamw8bit (bitsandbytes' 8-bit AdamW) needs a CUDA GPU and none is available; use "
            "train.optimizer=adamw (the trainer=gpu_24gb / gpu_16gb presets are for GPU machines)",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "train.optimizer",
            "adamw8bit needs bitsandbytes, which is not installed: pip install bitsandbytes "
            "(or use train.optimizer=adamw)",
        )


# set by a launcher (torchrun, SLURM/submitit): every rank was started by it, not by Lightning's re-run
EXTERNAL_LAUNCH_ENV = ("SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "WORLD_SIZE")


def _multi_device(trainer_cfg) -> bool:
    strategy = str(trainer_cfg.get("strategy", "auto"))
    devices = trainer_cfg.get("devices", 1)
    many = (
        devices in (-1, "auto", "-1")
        or (isinstance(devices, int) and devices > 1)
        or isinstance(devices, list)
    )
    return "ddp" in strategy and "spawn" not in strategy and many


def check_launch(trainer_cfg) -> None:
    """DDP inside a Hydra multirun job with the basic/joblib launcher cannot work: Lightning re-runs the
    command line (the whole sweep) for each extra device. Fail early and say what works instead."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    if _multi_device(trainer_cfg) and not any(k in os.environ for k in EXTERNAL_LAUNCH_ENV):
        raise SpurgenError(
            "trainer.strategy=ddp with several devices inside a sweep (-m) needs one launcher job per run with "
            "its own ranks: use hydra/launcher=submitit_slurm (tasks_per_node = devices), or run each config "
            "without -m (docs/sweeps.md)"
        )


# --- resume=: the run continues with the settings it was trained with -------------------------------------


TRAINING_KEY_FILE = "training_key.json"  # in the run folder: what its weights were trained with


def resume_mismatch(cfg: DictConfig, run_dir: Path) -> str | None:
    """With resume=: how these settings differ from those run_dir was trained with (identity.training_key, in
    run_dir/training_key.json), or None (the same, not resuming, or a run folder from before the file)."""
    path = Path(run_dir) / TRAINING_KEY_FILE
    if not cfg.resume or not path.is_file():
        return None
    key = json.loads(json.dumps(training_key(cfg), default=str))
    before = json.loads(path.read_text())
    changed = sorted(k for k in {*before, *key} if before.get(k, "<unset>") != key.get(k, "<unset>"))
    if not changed:
        return None
    shown = "; ".join(f"{k}: {before.get(k, '<unset>')!r} -> {key.get(k, '<unset>')!r}" for k in changed[:4])
    more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    return (
        f"resume={run_dir} was trained with other settings ({shown}{more}): resume with the run's own overrides, "
        "or start a new run"
    )


def check_same_training(cfg: DictConfig, run_dir: Path) -> None:
    """A resumed run continues only with the settings it was trained with: other overrides would make one run
    of two experiments, its numbers labelled with the second. Trainer and generation settings may change (more
    steps, other images)."""
    problem = resume_mismatch(cfg, run_dir)
    if problem:
        raise SpurgenError(problem)


# --- checks that need one number from a built part ------------------------------------------------------------


def check_t_max(cfg: DictConfig, num_train_timesteps: int) -> None:
    """loss.sfsl.t_max past the model's training timesteps (t runs 0..T-1) is a typo more often than a choice:
    the SFSL gate t <= t_max would be open at every step, as t_max = T - 1 says plainly."""
    t_max = int(cfg.loss.sfsl.t_max)
    if float(cfg.loss.lambda_sfsl) > 0 and t_max > num_train_timesteps:
        raise ConfigError(
            "loss.sfsl.t_max",
            f"{t_max} is past the model's {num_train_timesteps} training timesteps (t is "
            f"0..{num_train_timesteps - 1}); loss.sfsl.t_max={num_train_timesteps - 1} applies the SFSL at "
            "every step",
        )


def check_extractor_pairing(cfg: DictConfig, name: str, is_random: bool) -> None:
    """A real generator trained through a random extractor would be pulled toward random features: refused
    unless train.allow_random_extractor=true says the pairing is meant."""
    real_generator = not cfg.model.get("is_tiny_random", False)
    if real_generator and is_random and not cfg.train.allow_random_extractor:
        raise SpurgenError(
            f"the real generator model is paired with the random feature extractor {name!r}: the SFSL "
            "would pull images toward random features; set feature_extractor=robust_resnet50_madry (or another "
            "real extractor), or train.allow_random_extractor=true if the pairing is meant"
        )


def check_resolution(resolution: int, step: int, key: str) -> int:
    """`resolution`, or a ConfigError naming `key` (with the nearest sizes that work) when it is not a multiple
    of `step`, the sides the model's VAE and UNet can make (spurgen.models.parts.resolution_multiple)."""
    if resolution % step:
        near = sorted({max(step, resolution // step * step), (resolution // step + 1) * step})
        raise ConfigError(
            key,
            f"{resolution} px is not a multiple of {step}, which this model needs (VAE factor x UNet "
            f"downsampling, and diffusers' 8); try {' or '.join(map(str, near))}",
        )
    return resolution
