"""A run's identity: which runs may be averaged as seeds of one experiment (METHOD.md, Evaluation).

The identity is a hash of the resolved config less the keys that differ between seeds of one experiment (the
seeds, lambda_sfsl, the target), the keys that say where and how a run was launched or logged, and the keys
that cannot change its numbers (IGNORED_KEYS). Two runs of one identity and one class differ only in seed and
lambda_sfsl; the report never counts runs of different identities as seeds. The method (`method.*`,
conf/method) is part of the identity, so runs of two methods, or of one guidance at two strengths, are never
pooled; the default, method=sfsl as shipped, adds no key, so the runs made before the method group (all of
them that method) keep their identity.

Baseline and reference rows depend on far less than a fine-tuned run: the base model and generation
settings (BASELINE_KEYS), or the reference source (REFERENCE_KEYS), plus the evaluation settings both share.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# Keys left out of every identity (a dotted key leaves out everything under it; a value that only repeats one of
# them, like `${seed}`, is left out with it).
SEED_KEYS = (
    "seed",
    "lambda_sfsl",
    "loss.lambda_sfsl",
    "target",  # the class: the report's other axis (class_key)
    "generate.seed",  # derived from the training seed
    "eval.seed",  # the bootstrap seed: intervals only
    "module.settings.seed",
)
LAUNCH_KEYS = ("run_dir", "resume", "logger", "hydra")
NO_EFFECT_KEYS = (
    "data.num_workers",
    "data.class_images_dir",  # a cache folder: its contents are keyed by the settings (spurgen/data/prior.py)
    "data.class_image_batch_size",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "train.checkpoint_every_n_steps",
    "train.keep_last_n",
    "train.sample_every_n_steps",
    "train.num_samples",
    "train.sample_steps",
    "train.sample_guidance",
    "eval.batch_size",
    "eval.device",
    "eval.channels_last",
    "eval.contact_sheet_max",
    "generate.batch_size",
    "generate.device",
    "generate.baseline",  # a switch that adds the baseline images; the run's own images do not change
    "callbacks",  # checkpoints, validation samples, signal handling: none changes what a run learns
    "stages",
    "threads",  # CPU threads of one run (parallel sweep jobs set 1)
    "extras",
)
IGNORED_KEYS = SEED_KEYS + LAUNCH_KEYS + NO_EFFECT_KEYS

# What the baseline (base model, class prompt) and the reference images' numbers depend on.
EVAL_KEYS = ("method_version", "eval")
BASELINE_KEYS = (*EVAL_KEYS, "model", "generate", "data.class_prompt", "data.resolution")
REFERENCE_KEYS = (
    *EVAL_KEYS,
    "data.reference_dir",
    "target.reference_dir",
    "data.spurious_imagenet_dir",
    "data.demo_references",
)
ROW_IGNORED_KEYS = (*IGNORED_KEYS, "generate.instance_prompt", "eval.baseline_dir")

HASH_CHARS = 12


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    if isinstance(value, Enum):
        return value.name
    return value


def _leaf(node: DictConfig, key: str) -> Any:
    """The value, resolved where it can be (a saved .hydra/config.yaml cannot resolve `${hydra:...}`), else
    the interpolation text; '???' when missing."""
    if OmegaConf.is_missing(node, key):
        return "???"
    raw = node._get_node(key)._value()
    # where it ran or where spurgen is installed, not what it ran: the text, in any process and install
    if isinstance(raw, str) and ("${hydra:" in raw or "${spurgen_asset:" in raw):
        return raw
    try:
        return _portable(_plain(node[key]))
    except OmegaConfBaseException:
        return str(node._get_node(key)._value())


def _portable(value: Any) -> Any:
    """A path into spurgen's shipped assets, as the `${spurgen_asset:...}` text that names it in any install
    (an interpolation chain such as model.unet.path -> model.path resolves to the absolute path)."""
    if not isinstance(value, str):
        return value
    from spurgen.config import asset_path

    root = asset_path("")
    if value == root or value.startswith(root.rstrip("/\\") + os.sep):
        rel = Path(value).relative_to(root).as_posix()
        return "${spurgen_asset:" + ("" if rel == "." else rel) + "}"
    return value


def flat_config(cfg: DictConfig | dict, ignored: tuple[str, ...] = IGNORED_KEYS) -> dict[str, Any]:
    """The config as {dotted key: value}, resolved, less the `ignored` keys (and everything under them)."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg or {})
    out: dict[str, Any] = {}
    _walk(node, "", ignored, out)
    return _without_default_method(out)


def _without_default_method(flat: dict[str, Any]) -> dict[str, Any]:
    """The default method's keys (conf/method/sfsl.yaml, as shipped) left out: every run before the method group
    was that method, and keeps its identity; any other method, or sfsl changed, enters with all its keys."""
    from spurgen.config import CONF_DIR

    default = OmegaConf.load(Path(CONF_DIR) / "method" / "sfsl.yaml")
    shipped = _flat_node(default.method, "method.")
    mine = {k: v for k, v in flat.items() if _under(k, ("method",))}
    return {k: v for k, v in flat.items() if k not in mine} if mine == shipped else flat


def _flat_node(node: DictConfig, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _walk(node, prefix, (), out)
    return out


def _repeats_ignored(child: Any, ignored: tuple[str, ...]) -> bool:
    """A value that only repeats an ignored key (`generate.seed: ${seed}`) is ignored with it."""
    raw = child._value() if child is not None and child._is_interpolation() else None
    match = re.fullmatch(r"\$\{([\w.]+)\}", raw) if isinstance(raw, str) else None
    return bool(match) and _under(match.group(1), ignored)


def _walk(node: DictConfig, prefix: str, ignored: tuple[str, ...], out: dict[str, Any]) -> None:
    for key in node.keys():
        full = f"{prefix}{key}"
        child = node._get_node(key)
        if _under(full, ignored) or _repeats_ignored(child, ignored):
            continue
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation():
            before = len(out)
            _walk(child, full + ".", ignored, out)
            if len(out) == before:
                out[full] = {}
        else:
            out[full] = _leaf(node, key)


def _hash(flat: dict[str, Any]) -> str:
    blob = json.dumps(sorted(flat.items()), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:HASH_CHARS]


def _only(flat: dict[str, Any], kept: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in flat.items() if _under(k, kept)}


def run_identity(cfg: DictConfig | dict) -> str:
    """The identity of a fine-tuned run: runs of one identity and one class are seeds of one experiment."""
    return _hash(flat_config(cfg))


def baseline_identity(cfg: DictConfig | dict) -> str:
    """The identity of a run's baseline row: base model, generation and evaluation settings."""
    return _hash(_only(flat_config(cfg, ROW_IGNORED_KEYS), BASELINE_KEYS))


def reference_identity(cfg: DictConfig | dict) -> str:
    """The identity of a run's reference row: the reference source and evaluation settings."""
    return _hash(_only(flat_config(cfg, ROW_IGNORED_KEYS), REFERENCE_KEYS))


# What decides the weights training produces: a resumed run must continue with the same (trainer.* and the
# generate/eval settings may change, e.g. trainer.max_steps to train longer).
TRAINING_KEYS = (
    "method_version", "method.tuning", "model", "feature_extractor", "loss", "data", "train", "module", "target",
    "seed", "lambda_sfsl",
)  # fmt: skip


def training_key(cfg: DictConfig | dict) -> dict[str, Any]:
    """{dotted key: value} of everything that decides a run's trained weights (TRAINING_KEYS, less the keys
    that cannot change them): what `resume=` must find unchanged."""
    return _only(flat_config(cfg, LAUNCH_KEYS + NO_EFFECT_KEYS), TRAINING_KEYS)


def identities(cfg: DictConfig | dict) -> dict[str, str]:
    """{"run", "baseline", "reference"}: written into run.json, pipeline/spurgen.json and eval/metrics.json."""
    return {
        "run": run_identity(cfg),
        "baseline": baseline_identity(cfg),
        "reference": reference_identity(cfg),
    }


def class_key(cfg: DictConfig | dict) -> tuple[int | None, str | None, int | None]:
    """(ImageNet index, class file name, Spurious ImageNet component): what tells one class row from another
    (hummingbird and hummingbird_feeder share the index and component; their files differ)."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg or {})
    index = OmegaConf.select(node, "target.index", default=None, throw_on_missing=False)
    file = OmegaConf.select(node, "target.file", default=None)
    component = OmegaConf.select(node, "target.component", default=None)
    return (
        None if index is None or index == "???" else int(index),
        None if file is None else str(file),
        None if component is None else int(component),
    )


def metrics_stamp(cfg: DictConfig, run_dir: str | Path) -> dict:
    """What a run's eval/metrics.json records of the run beside the numbers: the identities, the class file,
    and from run_dir/run.json (what training built) the extractor that trained the SFSL and the base weights.
    The evaluate stage puts it into the result before the one write of metrics.json."""
    stamp = {"identity": identities(cfg), "class_file": class_key(cfg)[1]}
    run_json = Path(run_dir) / "run.json"
    if run_json.exists():
        meta = json.loads(run_json.read_text())
        stamp["extractor"] = meta.get("extractor")
        stamp["model_weights"] = meta.get("model_weights")  # which base weights, by content
    return stamp
