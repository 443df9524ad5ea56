"""Shared plumbing of the Hydra entry points (spurgen run | generate | evaluate | export): the typed schemas of
the stand-alone stages, users' config folders (SPURGEN_CONFIG_PATH, spurgen/cli/searchpath.py), and
`main(argv) -> exit code` with user mistakes printed as one line, no traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from spurgen.cli.searchpath import register_search_path, user_config_dirs
from spurgen.config import (
    METHOD_VERSION,
    EvalConfig,
    GenerateConfig,
    LoggerConfig,
    TargetConfig,
    register_resolvers,
)
from spurgen.errors import SpurgenError

register_search_path()


@dataclass
class GenerateApp:
    pipeline_dir: str | None = None  # a diffusers folder; its spurgen.json gives the prompts
    out_dir: str | None = None  # null: <pipeline_dir>/../generated (or ../baseline)
    seed: int = 0
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    target: TargetConfig | None = None  # class=<name>: the negative prompt of a foreign pipeline
    model: Any = None  # the base model for generate.baseline=true (model=sd15 / model=tiny)
    eval: Any = None  # model presets also pick the classifier set and the extractor; unused here
    feature_extractor: Any = None
    method_version: str = METHOD_VERSION


@dataclass
class EvaluateApp:
    images_dir: str = MISSING
    out_dir: str = "${hydra:runtime.output_dir}"
    seed: int = 0
    eval: EvalConfig = field(default_factory=EvalConfig)
    target: TargetConfig | None = None  # null: the class recorded in images_dir/generate.json
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    method_version: str = METHOD_VERSION


@dataclass
class ExportApp:
    images_dir: str = MISSING
    out_dir: str = "${hydra:runtime.output_dir}/dataset"
    min_classifiers: int = 1  # copy images predicted as the target by at least this many classifiers
    review: str | None = None  # a `spurgen review` database: keep only the images reviewers accepted
    min_votes: int = 2  # ... each with at least this many reviewers' votes (docs/review.md)
    seed: int = 0
    eval: EvalConfig = field(default_factory=EvalConfig)
    target: TargetConfig | None = None
    method_version: str = METHOD_VERSION


@dataclass
class PickApp:
    folder: str = MISSING  # the photos (the positional argument of `spurgen pick <folder>`)
    out_dir: str = "picks/${now:%Y-%m-%d_%H-%M-%S}"  # must be missing or empty
    n: int = 5  # references to pick
    min_classifiers: int | None = None  # a crop qualifies when >= this many give the target top-1; null: all
    scales: list[float] = field(default_factory=lambda: [1.0, 0.6, 0.35])  # crop side / the short side
    crops_per_photo: int = 96  # random square crops per photo, besides the whole photo
    whole_photos: bool = True
    size: int | None = None  # side of the written references in pixels; null: the crop's own pixels
    seed: int = 0
    max_iou: float = 0.5  # no two references of one photo overlap more
    max_cosine: float = 0.95  # no two references' features are more alike (the first classifier's phi)
    eval: EvalConfig = field(default_factory=EvalConfig)
    target: TargetConfig | None = None
    method_version: str = METHOD_VERSION


def register_app_configs() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="spurgen_generate_schema", node=GenerateApp)
    cs.store(name="spurgen_evaluate_schema", node=EvaluateApp)
    cs.store(name="spurgen_export_schema", node=ExportApp)
    cs.store(name="spurgen_pick_schema", node=PickApp)
    register_resolvers()


def resolve_target(cfg: DictConfig, images_dir: str | Path | None = None) -> tuple[int | None, int | None]:
    """(class index, component) from class=... / target.index, else images_dir/generate.json; index None when
    neither names a class (the evaluate/export stages report that together with any other input problem)."""
    from spurgen import imagenet
    from spurgen.eval.imagesets import read_generate_json

    target = cfg.get("target")
    index = None
    if target is not None and not OmegaConf.is_missing(target, "index"):
        index = target.index
    elif target is not None:
        raise SpurgenError("target.index is missing: with class=imagenet give target.index=<0..999>")
    elif images_dir is not None:
        index = read_generate_json(Path(images_dir)).get("class_index")
    if index is None:
        return None, None
    if not 0 <= int(index) < imagenet.NUM_CLASSES:
        raise SpurgenError(f"target.index: ImageNet class index must be in 0..999, got {index}")
    if target is not None:
        if not target.name:
            target.name = imagenet.short_name(int(index))
        if not target.synonyms:
            target.synonyms = imagenet.synonyms(int(index))
    return int(index), (target.component if target is not None else None)


def guarded(body: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task: SpurgenError -> 'spurgen: error: ...' on stderr and its exit code; a required key
    left unset (`???`, like images_dir) is one such line too, not OmegaConf's exception."""
    from omegaconf.errors import MissingMandatoryValue

    def task(cfg: DictConfig) -> Any:
        try:
            return body(cfg)
        except SpurgenError as exc:
            print(f"spurgen: error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except MissingMandatoryValue as exc:
            key = exc.full_key or "a required key"
            print(
                f"spurgen: error: {key} is required: give {key}=<value> on the command line", file=sys.stderr
            )
            sys.exit(2)

    return task


OUTPUT_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "out_dir", "resume")


def check_output_dirs(argv: list[str]) -> str | None:
    """Hydra creates the run folder (the sweep folder with -m) before any spurgen code runs and fails with a
    traceback when it cannot, and a stage writing to an `out_dir` it cannot create would fail the same way
    later. So check each output folder the command line names (or the working directory, under which Hydra's
    defaults lie) first: the problem, or None."""
    if any(a.startswith(("-h", "--help", "--cfg", "--info", "--hydra-help")) for a in argv):
        return None
    multirun = "-m" in argv or "--multirun" in argv
    named: dict[str, str] = {}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") in OUTPUT_KEYS and value:
            named[key.lstrip("+~")] = value
    unused = "hydra.run.dir" if multirun else "hydra.sweep.dir"
    wanted = [(k, v) for k, v in named.items() if k != unused]
    # no Hydra folder named: its default lies under the working directory
    if all(k == "out_dir" for k, _ in wanted):
        wanted.append(("hydra.sweep.dir" if multirun else "hydra.run.dir", "."))
    for key, value in wanted:
        if "${" in value:  # an interpolation: only Hydra can resolve it
            continue
        target = Path(value).expanduser().absolute()
        probe = target
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK):
            return f"output folder {target} is not writable (at {probe}); choose another with {key}=<folder>"
    return None


def run_main(hydra_entry: Callable[[], Any], prog: str | None, argv: list[str] | None) -> int:
    """Call a @hydra.main function with argv as its command line (prog as argv[0], None: keep today's);
    return the exit code."""
    saved = sys.argv
    sys.argv = [prog or (saved[0] if saved else "spurgen"), *(saved[1:] if argv is None else argv)]
    problem = check_output_dirs(sys.argv[1:])
    if problem:
        sys.argv = saved
        print(f"spurgen: error: {problem}", file=sys.stderr)
        return SpurgenError.exit_code
    try:
        user_config_dirs()  # a missing SPURGEN_CONFIG_PATH folder: one line before Hydra starts
        hydra_entry()
        return 0
    except SpurgenError as exc:
        print(f"spurgen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
