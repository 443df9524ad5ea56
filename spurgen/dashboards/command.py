"""W&B dashboard of a sweep: a saved workspace view and a report, or dashboard.json offline.

`spurgen dashboard <sweep folder | W&B group | dashboard.json> [--entity E] [--project P] [--out DIR]
[--dry-run]` (or `python -m spurgen dashboard`; `spurgen report <sweep> --dashboard`).

Writes the dashboard's specification (dashboard.json, spurgen/dashboards/spec.py) next to the sweep report;
online (W&B credentials and network, no --dry-run) it also saves the W&B workspace view and report and prints
their URLs. Offline it says how to create them later. Exit codes: 0 ok (also when W&B is unreachable), 2 bad
input (one-line message).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spurgen.dashboards.source import folder_spec, group_spec
from spurgen.dashboards.spec import SPEC_FILE, DashboardSpec
from spurgen.errors import SpurgenError

PREFIX = "spurgen: "


@dataclass
class Request:
    source: str  # a sweep folder, a W&B group name or a dashboard.json
    out: str | None = None  # where dashboard.json goes (default: next to the sweep report)
    entity: str | None = None
    project: str | None = None
    dry_run: bool = False


@dataclass
class Loaded:
    spec: DashboardSpec
    path: Path  # where its JSON is (or goes)
    folder: Path | None  # the local sweep folder, if any
    out: Path | None  # where the sweep report is


def online() -> bool:
    """W&B reachable with credentials (and not forced offline by WANDB_MODE)."""
    from spurgen.loggers import wandb_mode

    return wandb_mode("auto") == "online"


def wandb_api() -> Any:
    import wandb

    return wandb.Api()


def load(req: Request, live: bool, paths: dict[str, Path] | None = None) -> Loaded:
    """The spec from a dashboard.json, a sweep folder (its report written first unless `paths` are given), or
    a W&B group (online only)."""
    src = Path(req.source).expanduser()
    if src.is_file() and src.suffix == ".json":
        spec = DashboardSpec.read(src)
        spec.entity, spec.project = req.entity or spec.entity, req.project or spec.project
        folder = Path(spec.source) if Path(spec.source).is_dir() else None
        return Loaded(spec, src, folder, src.parent)
    if src.is_dir():
        from spurgen.report import write_report

        paths = paths or write_report(src, req.out, False)
        out = paths["report.md"].parent
        return Loaded(folder_spec(src, paths, req.entity, req.project), out / SPEC_FILE, src, out)
    if not live:
        raise SpurgenError(
            f"{req.source} is no sweep folder here; reading W&B group {req.source!r} needs W&B online "
            "(credentials and network, no --dry-run): give the sweep folder instead"
        )
    api = wandb_api()
    entity = req.entity or api.default_entity
    spec = group_spec(api, entity, req.project or "spurgen", req.source)
    return Loaded(spec, Path(req.out or ".") / SPEC_FILE, None, None)


def later(loaded: Loaded) -> list[str]:
    """How to create the dashboard later, online."""
    lines = [f"create it later, online (W&B credentials and network): spurgen dashboard {loaded.path}"]
    if loaded.folder is not None:
        lines.insert(0, f"first upload offline runs: wandb sync {loaded.folder}/*/wandb/offline-run-*")
    return lines


def _has_report_run(api: Any, spec: DashboardSpec, entity: str) -> bool:
    runs = api.runs(f"{entity}/{spec.project}", filters={"group": spec.group, "jobType": "report"})
    return len(list(runs)) > 0


def save(loaded: Loaded) -> list[str]:
    """Create the workspace view and the report in W&B; their URLs. The sweep report is logged first (its
    run holds the table and figures the report shows) when the group has none, and the custom chart presets
    the report's line panels use are created before the report."""
    from spurgen.dashboards.wandb_objects import create_charts, modules, report, workspace

    modules()  # a one-line error naming the extra, before anything is created
    api = wandb_api()
    entity = loaded.spec.entity or api.default_entity
    if loaded.folder is not None and not _has_report_run(api, loaded.spec, entity):
        from spurgen.report import write_report

        write_report(loaded.folder, loaded.out, True)
    notes = create_charts(loaded.spec, api, entity)  # the presets the report's line panels draw with
    view = workspace(loaded.spec, entity)
    view.save()
    rep = report(loaded.spec, entity)
    rep.save()
    return [*notes, f"W&B workspace: {view.url}", f"W&B report: {rep.url}"]


def create(req: Request, paths: dict[str, Path] | None = None) -> list[str]:
    """Write the specification; online, create the dashboard too. Returns the lines to print."""
    live = online() and not req.dry_run
    loaded = load(req, live, paths)
    loaded.spec.write(loaded.path)
    spec = loaded.spec
    lines = [
        f"dashboard specification written: {loaded.path} ({len(spec.tables)} tables, "
        f"{sum(len(s.panels) for s in spec.workspace.sections)} workspace panels, "
        f"{sum(len(s.panels) for s in spec.report.sections)} report panels; W&B group {spec.group})"
    ]
    if not live:
        why = "--dry-run" if req.dry_run else "W&B is offline (no credentials or network, or WANDB_MODE)"
        return lines + [f"{why}: nothing created in W&B"] + later(loaded)
    try:
        return lines + save(loaded)
    except SpurgenError:
        raise
    except Exception as exc:  # noqa: BLE001 - W&B unreachable or refusing: the spec is on disk, nothing fails
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return lines + [f"W&B did not accept the dashboard ({first[:200]})"] + later(loaded)


def main(argv: list[str] | None = None, prog: str = "spurgen dashboard") -> int:
    """Build the dashboard of a sweep; return the exit code (0 ok, 2 bad input)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a sweep folder, a W&B group name, or a dashboard.json written before")
    parser.add_argument(
        "--entity", default=None, help="W&B entity (default: the runs' logger.entity, else yours)"
    )
    parser.add_argument("--project", default=None, help="W&B project (default: the runs' logger.project)")
    parser.add_argument(
        "--out", default=None, help="where the report and dashboard.json go (default: sweep folder)"
    )
    parser.add_argument("--dry-run", action="store_true", help="only write dashboard.json; never contact W&B")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return run(Request(args.source, args.out, args.entity, args.project, args.dry_run))


def run(req: Request, paths: dict[str, Path] | None = None) -> int:
    """create() with its lines printed and a user mistake as one line (exit code 2)."""
    try:
        lines = create(req, paths)
    except SpurgenError as exc:
        print(f"spurgen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print("\n".join(PREFIX + line for line in lines))
    return 0
