"""A sweep's runs -> its `DashboardSpec`: which panels, metric keys, groups and filters.

The runs come from a local sweep folder (spurgen/report/collect.py `collect`) or from W&B
(spurgen/dashboards/source.py); either way they are `Run`s of the sweep report, so the dashboard's tables are
the report's tables: one per method version x class x run identity (spurgen/identity.py). W&B groups runs by
config keys only and does not know the identity hash, so the dashboard groups and filters by the config keys
whose values tell the identities apart (`identity_keys`) together with the class keys: the same partition
of the runs, never lambda_sfsl alone.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from spurgen.dashboards.charts import VS_LAMBDA, VS_LAMBDA_SPEC
from spurgen.dashboards.spec import (
    CONSISTENCY,
    IMAGE_KEYS,
    REPORT_TABLE_KEY,
    SPEC_VERSION,
    TRAIN_LOSSES,
    DashboardSpec,
    Filter,
    Panel,
    ReportSpec,
    RunSet,
    Section,
    TableSpec,
    WorkspaceSpec,
    metric,
)
from spurgen.report import Run, table_title

LAMBDA = "config.lambda_sfsl"
UNSET = "<unset>"
SCALE_NOTE = {
    "tiny random": "TINY RANDOM MODELS: these numbers check the plumbing and mean nothing",
    "mini world": "MINI WORLD: small trained parts (docs/mini_world.md); the numbers show the mechanism, "
    "not Stable Diffusion results",
}


def scale_of(run: Run) -> str:
    """ "tiny random" (random weights), "mini world" (the model preset's marks say model_is_mini, or, failing
    that, as in a run whose saved config has no marks, a model part from spurgen's mini world: a `model.*`
    value that names `mini`), or "" for a real model."""
    if run.tiny:
        return "tiny random"
    if run.config.get("model.marks.model_is_mini") is True:
        return "mini world"
    if any(k.startswith("model.") and "mini" in str(v).lower() for k, v in run.config.items()):
        return "mini world"
    return ""


def identity_keys(runs: list[Run]) -> list[str]:
    """Config keys whose value is not the same in every table: together with the class and the method
    version they tell the tables (run identities) apart."""
    configs: dict[tuple, dict[str, Any]] = {}
    for r in sorted(runs, key=lambda r: str(r.folder)):
        configs.setdefault(r.table, r.config)
    keys = sorted({k for c in configs.values() for k in c})
    return [k for k in keys if len({json.dumps(c.get(k, UNSET), default=str) for c in configs.values()}) > 1]


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and value != UNSET


def table_filters(run: Run, keys: list[str]) -> list[Filter]:
    """The config conditions that select one table's runs: method version, class, identity keys."""
    index, file, component = run.class_key
    out = [
        Filter("config.method_version", "==", run.method_version),
        Filter("config.target.index", "==", index),
    ]
    if file:
        out.append(Filter("config.target.file", "==", file))
    if component >= 0:
        out.append(Filter("config.target.component", "==", component))
    out += [Filter(f"config.{k}", "==", run.config[k]) for k in keys if _scalar(run.config.get(k, UNSET))]
    return out


def tables(runs: list[Run], keys: list[str]) -> list[TableSpec]:
    by_table: dict[tuple, list[Run]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: str(r.folder)):
        by_table[r.table].append(r)
    out = []
    for table, truns in sorted(by_table.items()):
        first = truns[0]
        out.append(
            TableSpec(
                title=table_title(first.class_name, table),
                method_version=first.method_version,
                class_index=first.class_key[0],
                class_name=first.class_name,
                class_file=first.class_key[1],
                component=None if first.class_key[2] < 0 else first.class_key[2],
                identity=first.identity,
                scale=next((s for r in truns if (s := scale_of(r))), ""),
                differs=[f"{k}={first.config.get(k, UNSET)}" for k in keys],
                filters=table_filters(first, keys),
            )
        )
    return out


def group_by(runs: list[Run], keys: list[str]) -> list[str]:
    """The workspace's grouping: method version, class, identity keys, tiny marker, then lambda_sfsl."""
    out = ["config.method_version", "config.target.index"]
    if any(r.class_key[1] for r in runs):
        out.append("config.target.file")
    if any(r.class_key[2] >= 0 for r in runs):
        out.append("config.target.component")
    return [*out, *(f"config.{k}" for k in keys), "config.model_is_tiny_random", LAMBDA]


def group_filters(group: str) -> list[Filter]:
    """The sweep's training runs: its W&B group, less the report run."""
    return [Filter("group", "==", group), Filter("job_type", "!=", "report")]


def classifiers_of(report_table: list[dict]) -> list[str]:
    return sorted(
        {
            str(line["metric"]).split("/", 1)[1]
            for line in report_table
            if str(line["metric"]).startswith("spurious_rate/")
        }
    )


# -- panels --------------------------------------------------------------------------------------------------
def loss_panels(groupby: str | None) -> list[Panel]:
    return [Panel("line", key, [key], groupby) for key in TRAIN_LOSSES]


def rate_panels(classifiers: list[str], groupby: str | None) -> list[Panel]:
    """Spurious rate vs lambda_sfsl per classifier: a bar per lambda_sfsl, mean over seeds ± std."""
    return [
        Panel("bar", f"spurious rate vs lambda_sfsl: {c}", [metric("images", "spurious_rate", c)], groupby)
        for c in classifiers
    ]


def lines_panels(classifiers: list[str]) -> list[Panel]:
    """Spurious rate (per classifier) and consistency vs lambda_sfsl with the baseline and reference rows as
    horizontal lines: a W&B custom chart (charts.py) over one table's runs. Each run is a point, the mean over
    seeds per lambda_sfsl a line with its standard deviation; the baseline and reference lines are the means of
    `eval_baseline/...` and `eval_reference/...` over the runs with lambda_sfsl = 0 (the runs that log them),
    drawn across every lambda_sfsl. Only for a run set that is one table (a custom chart ignores W&B's run
    grouping, so over a whole sweep it would pool unlike runs)."""

    def panel(title: str, name: str, classifier: str | None = None) -> Panel:
        keys = [metric(s, name, classifier) for s in ("images", "baseline", "reference")]
        return Panel("vs_lambda", title, keys, LAMBDA, VS_LAMBDA)

    rates = [
        panel(f"spurious rate vs lambda_sfsl, baseline and reference as lines: {c}", "spurious_rate", c)
        for c in classifiers
    ]
    return rates + [panel(f"{k} vs lambda_sfsl, baseline and reference as lines", k) for k in CONSISTENCY]


def reference_panels(classifiers: list[str], groupby: str | None) -> list[Panel]:
    """The baseline and reference rows (logged by the lambda_sfsl = 0 runs) as bars of their own: the
    workspace's view of them, where each identity x class group of lambda_sfsl = 0 runs is a bar (a line across
    lambda_sfsl needs a custom chart, which would pool the workspace's groups: see lines_panels)."""
    panels = [
        Panel(
            "bar",
            f"baseline and reference: {c}",
            [metric("baseline", "spurious_rate", c), metric("reference", "spurious_rate", c)],
            groupby,
        )
        for c in classifiers
    ]
    keys = [metric(s, k) for s in ("baseline", "reference") for k in CONSISTENCY]
    return [*panels, Panel("bar", "baseline and reference: consistency", keys, groupby)]


def consistency_panels(classifiers: list[str], groupby: str | None) -> list[Panel]:
    keys = [metric("images", k) for k in CONSISTENCY]
    return [Panel("bar", "consistency across classifiers", keys, groupby)]


def similarity_panels(classifiers: list[str], groupby: str | None) -> list[Panel]:
    keys = [metric("images", "similarity", c) for c in classifiers]
    return [Panel("bar", "similarity to the references (cos of phi to m)", keys, groupby)]


def parallel_panel(classifiers: list[str]) -> Panel:
    columns = ["config.target.name", LAMBDA, "config.seed"]
    columns += [metric("images", "spurious_rate", c) for c in classifiers]
    columns += [metric("images", "consistency_all")]
    columns += [metric("images", "similarity", c) for c in classifiers]
    return Panel("parallel", "class, lambda_sfsl, seed and the eval metrics", columns)


def runs_columns(classifiers: list[str], keys: list[str]) -> list[str]:
    out = [
        "config.target.name",
        "config.method_version",
        "config.model_is_tiny_random",
        LAMBDA,
        "config.seed",
    ]
    out += [f"config.{k}" for k in keys]
    return (
        out
        + [metric("images", "spurious_rate", c) for c in classifiers]
        + [metric("images", "consistency_all")]
    )


# -- the spec ------------------------------------------------------------------------------------------------
def intro(group: str, specs: list[TableSpec], keys: list[str]) -> str:
    """The text above the panels: what is compared, how runs are grouped, which tables are not real."""
    lines = [
        f"Sweep `{group}`: {len(specs)} table(s) of the sweep report (method version x class x run identity). "
        "Runs are grouped by method version, class, the config keys that tell run identities apart "
        f"({', '.join(f'`{k}`' for k in keys) or 'none: one identity per class'}) and then lambda_sfsl, so "
        "unlike runs are never pooled; bars and lines are the mean over seeds with the standard deviation.",
    ]
    for t in specs:
        mark = f" **[{t.scale.upper()}]**" if t.scale else ""
        lines.append(f"- {t.title}{mark}" + (f": {', '.join(t.differs)}" if t.differs else ""))
    notes = sorted({SCALE_NOTE[t.scale] for t in specs if t.scale})
    return "\n".join(lines + [f"\n> **{n}**" for n in notes])


def workspace_spec(group: str, runset: RunSet, classifiers: list[str], text: str) -> WorkspaceSpec:
    """One saved view: the group's runs, grouped by identity and class (the runset), panels per question."""
    sections = [
        Section("sweep", [Panel("markdown", "what this compares", [text])]),
        Section("training losses", loss_panels(None)),
        Section("generated images", [Panel("media", "generated images per run", list(IMAGE_KEYS))]),
        Section("spurious rate vs lambda_sfsl", rate_panels(classifiers, None)),
        Section("baseline and reference (lambda_sfsl = 0 runs)", reference_panels(classifiers, None)),
        Section(
            "consistency and similarity",
            consistency_panels(classifiers, None) + similarity_panels(classifiers, None),
        ),
        Section("all runs", [parallel_panel(classifiers)]),
    ]
    return WorkspaceSpec(f"spurgen {group}", runset, sections)


def table_sections(t: TableSpec, group: str, classifiers: list[str]) -> list[Section]:
    """A table's panels over its runs (one identity and class): spurious rate and consistency vs lambda_sfsl
    with the baseline and reference rows as lines (from its lambda_sfsl = 0 runs), then the losses as a line
    per lambda_sfsl and the images, rates, consistency and similarity as a bar per lambda_sfsl."""
    mark = f" [{t.scale}]" if t.scale else ""
    where = [*group_filters(group), *t.filters]
    text = f"Run identity `{t.identity}`" + (f"; differs in {', '.join(t.differs)}" if t.differs else "")
    text += f". **{SCALE_NOTE[t.scale]}.**" if t.scale else "."
    text += (
        " The baseline (base model, class prompt) and reference lines are the means of `eval_baseline/...` "
        "and `eval_reference/...` over this table's lambda_sfsl = 0 runs, which log them."
    )
    tuned = Section(
        t.title + mark,
        lines_panels(classifiers)
        + loss_panels(LAMBDA)
        + [Panel("media", "generated images per run", list(IMAGE_KEYS))]
        + rate_panels(classifiers, LAMBDA)
        + consistency_panels(classifiers, LAMBDA)
        + similarity_panels(classifiers, LAMBDA),
        [RunSet(t.title, where)],
        text,
    )
    return [tuned]


def report_spec(
    group: str, specs: list[TableSpec], runset: RunSet, classifiers: list[str], figures: list[str], text: str
) -> ReportSpec:
    report_run = RunSet(
        "sweep report run", [Filter("group", "==", group), Filter("job_type", "==", "report")]
    )
    head = Section(
        "sweep report",
        [Panel("table", "report.csv", [REPORT_TABLE_KEY]), Panel("media", "report figures", figures)],
        [report_run],
        text
        + "\n\nThe table and figures are those of `spurgen report --wandb` (its run in this group), so the "
        "report and this dashboard never disagree.",
    )
    sections = [head]
    for t in specs:
        sections += table_sections(t, group, classifiers)
    sections.append(Section("all runs", [parallel_panel(classifiers)], [runset], "Every run of the sweep."))
    return ReportSpec(
        f"spurgen sweep {group}", "Runs compared by class, run identity and lambda_sfsl.", sections
    )


def build_spec(
    runs: list[Run], where: dict[str, Any], report_table: list[dict], figures: list[str]
) -> DashboardSpec:
    """The dashboard of a sweep's runs; `where`: entity, project, group and source (folder or W&B path)."""
    keys = identity_keys(runs)
    specs = tables(runs, keys)
    classifiers = classifiers_of(report_table)
    group = where["group"]
    runset = RunSet(group, group_filters(group), group_by(runs, keys), runs_columns(classifiers, keys))
    text = intro(group, specs, keys)
    return DashboardSpec(
        spec_version=SPEC_VERSION,
        entity=where.get("entity"),
        project=where["project"],
        group=group,
        source=where["source"],
        classifiers=classifiers,
        identity_keys=keys,
        tables=specs,
        workspace=workspace_spec(group, runset, classifiers, text),
        report=report_spec(group, specs, runset, classifiers, figures, text),
        report_table=report_table,
        figures=figures,
        charts={VS_LAMBDA: VS_LAMBDA_SPEC},
    )
