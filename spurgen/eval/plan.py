"""What an evaluation (or an export) measures, checked before any classifier is built.

Every cheap check runs first and all problems are reported together in one message: a missing target
class, an images folder that is missing, empty or holds no readable image, a reference or ImageNet-val
folder that does not fit, and the eval.* settings. Only then are classifier weights fetched and built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from spurgen import imagenet
from spurgen.errors import Problems, SpurgenError
from spurgen.eval.imagesets import (
    ImageSet,
    ReferencePool,
    load_folder,
    load_imagenet_val,
    load_reference,
    read_generate_json,
    reference_pool,
)

NO_TARGET = "no target class: give class=<name> (a conf/class file) or class=imagenet target.index=<i>"


@dataclass
class EvalPlan:
    """The image sets and classifiers of one evaluation."""

    target: int  # ImageNet class index k
    component: int | None  # Spurious ImageNet component of the reference set, if any
    sets: dict[str, ImageSet]  # "images" first, then "reference" / "baseline" when given
    classifiers: dict[str, Any]  # name -> `_target_` node (eval.classifiers), not built yet
    val: ImageSet | None = None  # ImageNet validation images of class k (the spurious score)
    generation: dict = field(default_factory=dict)  # images_dir/generate.json ({} when absent)
    # with val and a Spurious ImageNet reference: all components of the class (the official score's pool)
    reference_pool: ReferencePool | None = None

    @property
    def images(self) -> ImageSet:
        return self.sets["images"]


def check_target(index: int | None) -> int:
    if index is None:
        raise SpurgenError(NO_TARGET)
    if not 0 <= int(index) < imagenet.NUM_CLASSES:
        raise SpurgenError(f"target.index: ImageNet class index must be in 0..999, got {index}")
    return int(index)


def plan_evaluation(
    ev: DictConfig,
    images_dir: str | Path,
    target: int | None,
    component: int | None = None,
    extra_sets: dict[str, str | Path | None] | None = None,
    problems: Problems | None = None,
) -> EvalPlan:
    """Check everything cheap and list the sets: images_dir, then eval.reference_dir / eval.baseline_dir
    (or, when those are unset, the `reference` / `baseline` folders in extra_sets), and
    eval.imagenet_val_dir (with a Spurious ImageNet reference, also the class's other components, which the
    official spurious score pools). Raises one SpurgenError naming every problem found, with those already in
    `problems` (the stage's check of the eval.* keys, spurgen/validation.py)."""
    problems = problems if problems is not None else Problems()
    index = problems.attempt(check_target, target)
    sets = {"images": problems.attempt(load_folder, "images", images_dir)}
    extra = extra_sets or {}
    reference = ev.reference_dir or extra.get("reference")
    if reference and index is not None:
        sets["reference"] = problems.attempt(load_reference, reference, index, component)
    baseline = ev.baseline_dir or extra.get("baseline")
    if baseline:
        sets["baseline"] = problems.attempt(load_folder, "baseline", baseline)
    val, pool = None, None
    if ev.imagenet_val_dir and index is not None:
        val = problems.attempt(load_imagenet_val, ev.imagenet_val_dir, index)
        if sets.get("reference") is not None:
            pool = problems.attempt(reference_pool, sets["reference"], index)
    problems.raise_any()
    return EvalPlan(
        index,
        component,
        sets,
        dict(ev.classifiers),
        val,
        read_generate_json(Path(images_dir)),
        pool,
    )
