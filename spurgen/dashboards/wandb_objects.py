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


def chart_id(name: str, entity: str) -> str:
    """A custom chart preset's id, `<entity>/<name>` (the entity that owns it; bare name when none is known)."""
    return f"{entity}/{name}" if entity else name


def vs_lambda(p: Panel, entity: str, wr: ModuleType) -> Any:
    """A metric vs lambda_sfsl with the baseline and reference rows as lines: a W&B custom chart (`Vega2`
    panel) with spurgen's preset (charts.py). It queries each run of the panel's run set for the config key on
    the x axis and the three summary metrics, and the preset's fields name those columns (W&B names a query's
    columns by their keys)."""
    x = (p.groupby or "").removeprefix("config.")
    images, baseline, reference = p.keys
    return wr.CustomChart(
        query={"config": {"keys": [x]}, "summary": {"keys": list(p.keys)}},
        chart_name=chart_id(p.chart or "", entity),
        chart_fields={"lambda": x, "value": images, "baseline": baseline, "reference": reference},
        chart_strings={"title": p.title, "y": images},
    )


def panel(p: Panel, wr: ModuleType, entity: str = "") -> Any:
    """One wandb-workspaces panel (the same classes serve workspaces and reports); `entity` owns the custom
    chart presets."""
    if p.kind == "vs_lambda":
        return vs_lambda(p, entity, wr)
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
        ws.Section(name=s.name, panels=[panel(p, wr, entity) for p in s.panels], is_open=True)
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
                panels=[panel(p, wr, entity) for p in s.panels],
            )
        )
    return blocks


def create_charts(spec: DashboardSpec, api: Any, entity: str) -> list[str]:
    """Create the custom chart presets the vs_lambda panels draw with (wandb.Api.create_custom_chart) in
    `entity`, before the workspace and report that use them; one that exists already is kept (W&B cannot update
    a preset, so its name carries the spec's hash). Lines to print for any that could not be created: their
    panels stay empty, the rest of the dashboard does not depend on them."""
    lines = []
    for name, vega in spec.charts.items():
        try:
            api.create_custom_chart(
                entity=entity,
                name=name,
                display_name="spurgen: metric vs lambda_sfsl, baseline and reference as lines",
                spec_type="vega2",
                access="private",
                spec=vega,
            )
        except Exception as exc:  # noqa: BLE001 - W&B refuses a name it has: the preset is there already
            text = " ".join(str(exc).split()) or type(exc).__name__
            if "exist" not in text.lower() and "409" not in text:
                lines.append(
                    f"W&B custom chart {chart_id(name, entity)} not created ({text[:200]}): its panels (metric vs "
                    "lambda_sfsl with the baseline and reference lines) stay empty; the report's figures draw "
                    "the same lines"
                )
    return lines


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
