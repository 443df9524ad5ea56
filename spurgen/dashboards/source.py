"""Where a dashboard's runs come from: a local sweep folder, or a W&B group (its training runs' configs and
the table that `spurgen report --wandb` logged for it)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from spurgen.dashboards.plan import build_spec
from spurgen.dashboards.spec import REPORT_TABLE_KEY, DashboardSpec
from spurgen.errors import SpurgenError
from spurgen.report import Run, aggregate, collect, csv_lines, training_group

DEFAULT_PROJECT = "spurgen"  # spurgen/config.py LoggerConfig.project; push_wandb logs the report run there
REPORT_FILES = ("report.md", "report.csv", "effects.csv")


def figure_keys(paths: dict[str, Path]) -> list[str]:
    """The keys under which push_wandb logs the report's figures (`rate:1` -> `report/rate_1`)."""
    return [f"report/{k.replace(':', '_')}" for k in paths if k not in REPORT_FILES]


def _logger_settings(root: Path) -> dict[str, Any]:
    """The `logger` block of the sweep's first run (project, entity, group), {} if none."""
    for cfg_file in sorted(root.glob("*/.hydra/config.yaml")):
        try:
            return dict((yaml.safe_load(cfg_file.read_text()) or {}).get("logger") or {})
        except (OSError, yaml.YAMLError, TypeError, ValueError):
            continue
    return {}


def folder_spec(
    root: str | Path, paths: dict[str, Path], entity: str | None, project: str | None
) -> DashboardSpec:
    """The dashboard of a local sweep folder whose report (`paths`, from write_report) was just written."""
    sweep = collect(root)
    logger = _logger_settings(sweep.root)
    where = {
        "entity": entity or logger.get("entity"),
        "project": project or logger.get("project") or DEFAULT_PROJECT,
        "group": logger.get("group") or training_group(sweep.root),
        "source": str(sweep.root),
    }
    return build_spec(sweep.runs, where, csv_lines(aggregate(sweep)), figure_keys(paths))


# -- a W&B group ---------------------------------------------------------------------------------------------
def _as_run(name: str, config: dict) -> Run | None:
    """A training run's W&B config as a report Run (None when it is not a spurgen run)."""
    from omegaconf import OmegaConf

    from spurgen import identity as ident

    config = dict(config)
    tiny = bool(config.pop("model_is_tiny_random", False))
    config.pop("extractor", None)  # added by training (what it built), not part of the identity
    if "lambda_sfsl" not in config or "target" not in config:
        return None
    cfg = OmegaConf.create(config)
    index, file, component = ident.class_key(cfg)
    return Run(
        folder=Path(name),
        class_name=str(OmegaConf.select(cfg, "target.name", default="?")),
        class_key=(-1 if index is None else index, file or "", -1 if component is None else component),
        lambda_sfsl=float(cfg["lambda_sfsl"]),
        seed=int(cfg.get("seed", 0)),
        method_version=str(cfg.get("method_version", "unknown")),
        tiny=tiny,
        identity=ident.run_identity(cfg),
        row_identity={},
        config=ident.flat_config(cfg),
        results={},
        sets={},
    )


def _report_table(run: Any) -> list[dict]:
    """The `report/table` a report run logged, as report.csv lines."""
    ref = run.summary.get(REPORT_TABLE_KEY)
    if not isinstance(ref, dict) or "path" not in ref:
        raise SpurgenError(
            f"W&B run {run.name} holds no {REPORT_TABLE_KEY}: log it with `spurgen report <sweep folder> --wandb`"
        )
    with tempfile.TemporaryDirectory() as tmp, run.file(ref["path"]).download(root=tmp, replace=True) as fh:
        data = json.load(fh)
    return [dict(zip(data["columns"], row, strict=False)) for row in data["data"]]


def group_spec(api: Any, entity: str, project: str, group: str) -> DashboardSpec:
    """The dashboard of a W&B group with no local sweep folder: the table from its report run."""
    path = f"{entity}/{project}"
    runs = list(api.runs(path, filters={"group": group}))
    reports = [r for r in runs if getattr(r, "job_type", None) == "report"]
    if not reports:
        raise SpurgenError(
            f"W&B group {group!r} in {path} has no report run ({len(runs)} runs): run "
            "`spurgen report <sweep folder> --wandb` first, or give the sweep folder"
        )
    training = [x for r in runs if r not in reports and (x := _as_run(r.name, r.config))]
    if not training:
        raise SpurgenError(f"W&B group {group!r} in {path} has no spurgen training runs")
    figures = sorted(
        k
        for k, v in reports[-1].summary.items()
        if k.startswith("report/") and isinstance(v, dict) and v.get("_type") == "image-file"
    )
    where = {"entity": entity, "project": project, "group": group, "source": f"wandb:{path}/{group}"}
    return build_spec(training, where, _report_table(reports[-1]), figures)
