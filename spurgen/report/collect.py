"""Reading a sweep folder: every run's eval/metrics.json and .hydra/config.yaml as a Run, the runs that failed or
never started as problems. Runs of one identity that started from different base weights (metrics.json
"model_weights") get identities of their own.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spurgen.errors import SpurgenError


@dataclass
class Run:
    folder: Path
    class_name: str
    class_key: tuple[int, str, int]  # (ImageNet index, class file or "", component or -1)
    lambda_sfsl: float
    seed: int
    method_version: str
    tiny: bool
    identity: str  # the run identity (spurgen/identity.py)
    row_identity: dict[str, str]  # set -> identity of that row: images (= identity), baseline, reference
    config: dict[str, Any]  # the flattened config the identity hashes (for the differences between tables)
    results: dict  # metrics.json "results": set -> numbers
    sets: dict  # metrics.json "sets": set -> {folder, num_images}
    extractor: dict | None = None  # metrics.json "extractor": what trained the SFSL (run.json's record)
    marks: dict = field(default_factory=dict)  # metrics.json "model_marks": what the model preset declares
    weights: str | None = None  # metrics.json "model_weights": the base weights by content (None: older runs)
    memorisation: dict = field(
        default_factory=dict
    )  # metrics.json "memorisation": set -> nearest-reference numbers

    @property
    def table(self) -> tuple:
        return (self.method_version, self.class_key, self.identity)


@dataclass
class Sweep:
    root: Path
    runs: list[Run] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (run folder or planned overrides, why)
    conflicts: list[str] = field(default_factory=list)  # runs that should agree but do not


def load_yaml(path: Path):
    with open(path) as f:
        return yaml.safe_load(f)


def _read_run(folder: Path) -> Run:
    """One run, or raises ValueError saying what is wrong with it."""
    from omegaconf import OmegaConf

    from spurgen import identity as ident

    cfg = OmegaConf.create(load_yaml(folder / ".hydra" / "config.yaml") or {})
    metrics_file = folder / "eval" / "metrics.json"
    if not metrics_file.exists():
        raise ValueError(f"no eval/metrics.json ({_last_error(folder)})")
    try:
        metrics = json.loads(metrics_file.read_text())
        target = metrics["target"]
        index, file, component = ident.class_key(cfg)
        component = component if component is not None else target.get("component")
        run_id = ident.run_identity(cfg)
        return Run(
            folder,
            str(OmegaConf.select(cfg, "target.name", default=None) or target["name"]),
            (
                int(target["index"]) if index is None else index,
                file or "",
                -1 if component is None else component,
            ),
            float(cfg["lambda_sfsl"]),
            int(cfg["seed"]),
            str(metrics.get("method_version", "unknown")),
            bool(metrics.get("model_is_tiny_random")),
            run_id,
            {
                "images": run_id,
                "baseline": ident.baseline_identity(cfg),
                "reference": ident.reference_identity(cfg),
            },
            ident.flat_config(cfg),
            metrics["results"],
            metrics.get("sets") or {},
            metrics.get("extractor"),
            metrics.get("model_marks") or {},
            metrics.get("model_weights"),
            metrics.get("memorisation") or {},
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"unreadable eval/metrics.json or config ({type(exc).__name__}: {exc})") from None


def _last_error(folder: Path) -> str:
    log = folder / "run.log"
    if log.exists():
        lines = [ln for ln in log.read_text(errors="ignore").splitlines() if "error" in ln.lower()]
        if lines:
            return "run.log: " + lines[-1].strip()[:200]
    return "the run failed or has not finished"


def _planned(root: Path) -> list[frozenset[str]] | None:
    """Each job's task overrides as the sweep planned them (multirun.yaml), or None if unknown."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        hydra_cfg = (load_yaml(root / "multirun.yaml") or {})["hydra"]
        params = [f"{k}={v}" for k, v in ((hydra_cfg.get("sweeper") or {}).get("params") or {}).items()]
        parsed = OverridesParser.create().parse_overrides(params + list(hydra_cfg["overrides"]["task"]))
        return [frozenset(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception:  # noqa: BLE001 - an unknown sweep plan only means missing runs cannot be listed
        return None


def collect(root: str | Path) -> Sweep:
    """Read every run under a sweep folder (any depth: a folder with .hydra/config.yaml is a run)."""
    from spurgen.config import register_resolvers

    register_resolvers()  # saved configs hold ${spurgen_eq:...} and the like
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SpurgenError(f"sweep folder {root} does not exist")
    folders = sorted(p.parent.parent for p in root.rglob(".hydra/config.yaml") if p.parent.parent != root)
    if not folders:
        raise SpurgenError(
            f"{root} holds no runs (no sub-folder with .hydra/config.yaml): is it a sweep folder?"
        )
    sweep = Sweep(root)
    seen: set[frozenset[str]] = set()
    for folder in folders:
        ov = folder / ".hydra" / "overrides.yaml"
        if ov.exists():
            seen.add(frozenset(load_yaml(ov) or []))
        try:
            sweep.runs.append(_read_run(folder))
        except (ValueError, OSError, yaml.YAMLError) as exc:
            sweep.problems.append((str(folder.relative_to(root)), str(exc)))
    _split_unlike_weights(sweep.runs)
    for job in _planned(root) or []:
        if job not in seen:
            sweep.problems.append(
                (",".join(sorted(job)), "planned by the sweep but never started (no folder)")
            )
    return sweep


def _split_unlike_weights(runs: list[Run]) -> None:
    """Runs of one config identity that started from different base weights (a model folder regenerated or
    replaced between runs: the config, and so the identity, cannot tell) are not seeds of one experiment.
    Where an identity's runs disagree on `weights`, each gets `model.weights` in its config and the weights
    in its identities (images and baseline rows: both depend on the base model), so they fall into separate
    tables that name the difference. Identities whose runs agree are left as they are."""
    seen: dict[str, set[str | None]] = defaultdict(set)
    for r in runs:
        seen[r.identity].add(r.weights)
    for r in runs:
        if len(seen[r.identity]) < 2:
            continue
        tag = f"+{r.weights or 'unrecorded'}"
        r.config = {**r.config, "model.weights": r.weights or "<unrecorded>"}
        r.row_identity = {
            **r.row_identity,
            "images": r.identity + tag,
            "baseline": r.row_identity["baseline"] + tag,
        }
        r.identity += tag
