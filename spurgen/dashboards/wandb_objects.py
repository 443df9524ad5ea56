"""`DashboardSpec` -> wandb-workspaces objects: a saved workspace view (`ws.Workspace`) and a report
(`wr.Report`). Building needs no W&B server; saving them does (spurgen/dashboards/command.py).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from spurgen.dashboards.spec import DashboardSpec, Filter, Panel, RunSet, Section
from spurgen.errors import SpurgenError

WORKSPACES_VERSION = "0.4.13"  # the version spurgen is tested with (pyproject.toml)
INSTALL = f"pip install 'wandb[workspaces]' (wandb-workspaces=={WORKSPACES_VERSION})"
AGG, SPREAD = "mean", "stddev"
ATTRIBUTE = {"group": "Group", "job_type": "JobType"}  # spec run attribute -> W&B filter name


def modules() -> tuple[ModuleType, ModuleType]:
    """(wandb_workspaces.workspaces, wandb_workspaces.reports.v2), or a one-line error naming the extra."""
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError as exc:
        raise SpurgenError(f"W&B dashboards need the wandb-workspaces package ({exc}): {INSTALL}") from None
    return ws, wr


def _backend(key: str) -> str:
    """`config.target.index` -> `target.value.index`: W&B keeps a nested config key's value under `.value`
    after its first segment, and the W&B app writes config filters in that form (wandb-workspaces passes a
    name holding `.value` through unchanged)."""
    from wandb_workspaces.expr import groupby_str_to_key

    return groupby_str_to_key(key).name


def filter_text(filters: list[Filter]) -> str:
    """The W&B filter expression: `Group == 'g' and Config('target.value.index') == 105 and ...`."""
    parts = []
    for f in filters:
        left = f"Config({_backend(f.key)!r})" if f.key.startswith("config.") else ATTRIBUTE[f.key]
        parts.append(f"{left} {f.op} {f.value!r}")
    return " and ".join(parts)


def _column(key: str) -> str:
    """A runs-table column accessor: `config:target.value.name` or `summary:<metric>`."""
    return f"config:{_backend(key)}" if key.startswith("config.") else f"summary:{key}"


def panel(p: Panel, wr: ModuleType) -> Any:
    """One wandb-workspaces panel (the same classes serve workspaces and reports)."""
    grouped = {"groupby": p.groupby, "groupby_aggfunc": AGG, "groupby_rangefunc": SPREAD} if p.groupby else {}
    if p.kind == "line":
        return wr.LinePlot(title=p.title, x="Step", y=list(p.keys), **grouped)
    if p.kind == "bar":
        # ungrouped (the workspace): the runset's groups make the bars, mean ± std as well
        return wr.BarPlot(
            title=p.title,
            metrics=list(p.keys),
            **(grouped or {"groupby_aggfunc": AGG, "groupby_rangefunc": SPREAD}),
        )
    if p.kind == "media":
        return wr.MediaBrowser(title=p.title, media_keys=list(p.keys))
    if p.kind == "parallel":
        columns = [
            wr.ParallelCoordinatesPlotColumn(
                metric=wr.Config(k.removeprefix("config.")) if k.startswith("config.") else k
            )
            for k in p.keys
        ]
        return wr.ParallelCoordinatesPlot(title=p.title, columns=columns)
    if p.kind == "table":
        return wr.WeavePanelSummaryTable(table_name=p.keys[0])
    return wr.MarkdownPanel(markdown=p.keys[0])


def workspace(spec: DashboardSpec, entity: str) -> Any:
    """The saved view: the sweep group's runs grouped by class and identity, one section per question."""
    ws, wr = modules()
    rs = spec.workspace.runset
    runset = ws.RunsetSettings(
        filters=filter_text(rs.filters),
        groupby=[ws.Config(k.removeprefix("config.")) for k in rs.groupby],
        pinned_columns=[_column(k) for k in rs.columns],
    )
    sections = [
        ws.Section(name=s.name, panels=[panel(p, wr) for p in s.panels], is_open=True)
        for s in spec.workspace.sections
    ]
    return ws.Workspace(
        entity=entity,
        project=spec.project,
        name=spec.workspace.name,
        sections=sections,
        runset_settings=runset,
    )


def runset(rs: RunSet, spec: DashboardSpec, entity: str, wr: ModuleType) -> Any:
    return wr.Runset(
        entity=entity,
        project=spec.project,
        name=rs.name,
        filters=filter_text(rs.filters),
        groupby=list(rs.groupby),
        pinned_columns=[_column(k) for k in rs.columns],
    )


def _blocks(s: Section, spec: DashboardSpec, entity: str, wr: ModuleType) -> list[Any]:
    blocks: list[Any] = [wr.H2(s.name)]
    if s.text:
        blocks.append(wr.MarkdownBlock(text=s.text))
    if s.panels:
        blocks.append(
            wr.PanelGrid(
                runsets=[runset(r, spec, entity, wr) for r in s.runsets],
                panels=[panel(p, wr) for p in s.panels],
            )
        )
    return blocks


def report(spec: DashboardSpec, entity: str) -> Any:
    """The report: the sweep report's table and figures, then each table's panels, then every run.
    Its runsets name `entity`/`project`; serialising it looks the project up on the W&B server (an empty
    entity skips the lookup: what the offline tests do)."""
    _, wr = modules()
    blocks: list[Any] = []
    if any(t.scale for t in spec.tables):
        blocks.append(
            wr.CalloutBlock(
                text=f"Marked tables: {', '.join(sorted({t.scale for t in spec.tables if t.scale}))}."
            )
        )
    for s in spec.report.sections:
        blocks += _blocks(s, spec, entity, wr)
    return wr.Report(
        project=spec.project,
        entity=entity,
        title=spec.report.title,
        description=spec.report.description,
        blocks=blocks,
    )
