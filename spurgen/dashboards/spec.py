"""spurgen's own dashboard specification: plain dataclasses that read and write JSON.

Both W&B objects (the saved workspace view and the report, spurgen/dashboards/wandb_objects.py) are built from
one `DashboardSpec`, so the JSON written offline is exactly what an online run would create. Metric keys are
those the logging code writes (spurgen/module.py `train/...`, spurgen/eval/summary.py `flat_metrics`,
spurgen/callbacks.py `samples/...`, spurgen/eval/outputs.py `eval/...`, spurgen/report/wandb_run.py `report/...`);
tests/test_dashboards.py checks them against what a tiny `logger=wandb` run logs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

SPEC_VERSION = 2  # 2: `vs_lambda` panels (a W&B custom chart) and the chart presets they use
SPEC_FILE = "dashboard.json"  # written next to report.md

# The metric keys the dashboard plots, as the logging code names them.
TRAIN_LOSSES = ("train/loss", "train/loss_instance", "train/loss_prior", "train/loss_sfsl")  # module.py
IMAGE_KEYS = ("samples/instance_prompt", "eval/generated_vs_reference")  # callbacks.py, eval/outputs.py
REPORT_TABLE_KEY = "report/table"  # spurgen/report/wandb_run.py push_wandb
CONSISTENCY = ("consistency_all", "consistency_at_least_half")
# set -> key prefix (spurgen/eval/summary.py SET_PREFIX)
PREFIX = {"images": "eval", "reference": "eval_reference", "baseline": "eval_baseline"}

# W&B run attributes a filter may name (besides `config.<key>`)
RUN_ATTRIBUTES = ("group", "job_type")
OPS = ("==", "!=")
PANEL_KINDS = ("line", "bar", "vs_lambda", "media", "parallel", "table", "markdown")


def metric(set_name: str, name: str, classifier: str | None = None) -> str:
    """`eval/spurious_rate/<c>`, `eval_baseline/consistency_all`, ... (spurgen/eval/summary.py flat_metrics)."""
    key = f"{PREFIX[set_name]}/{name}"
    return f"{key}/{classifier}" if classifier else key


@dataclass
class Filter:
    """One condition on W&B runs: `key` is `group`, `job_type` or `config.<dotted key>`."""

    key: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"filter op {self.op!r}: one of {OPS}")
        if self.key not in RUN_ATTRIBUTES and not self.key.startswith("config."):
            raise ValueError(f"filter key {self.key!r}: one of {RUN_ATTRIBUTES} or config.<key>")


@dataclass
class RunSet:
    """The runs a section shows: all filters hold; runs are grouped by `groupby` (config keys, in order)."""

    name: str
    filters: list[Filter] = field(default_factory=list)
    groupby: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # runs-table columns: config.<key> or a metric key


@dataclass
class Panel:
    """One panel. `keys`: line y keys | bar metrics | [images metric, baseline metric, reference metric] of a
    vs_lambda panel | media keys | parallel columns (config.<key> or a metric) | [table name] | [markdown text].
    `groupby`: a config key whose values make the lines or bars of a line/bar panel, aggregated as the mean over
    the runs of each value with the standard deviation; of a vs_lambda panel, its x axis (lambda_sfsl).
    `chart`: the custom chart preset (a key of `DashboardSpec.charts`) a vs_lambda panel draws with: the
    images metric per run and its mean ± std over seeds per lambda_sfsl, and the baseline and reference metrics'
    means over the lambda_sfsl = 0 runs as horizontal lines (spurgen/dashboards/charts.py)."""

    kind: str
    title: str
    keys: list[str]
    groupby: str | None = None
    chart: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in PANEL_KINDS:
            raise ValueError(f"panel kind {self.kind!r}: one of {PANEL_KINDS}")
        if self.kind == "vs_lambda" and (len(self.keys) != 3 or not self.groupby or not self.chart):
            raise ValueError("a vs_lambda panel: keys [images, baseline, reference], groupby (x) and chart")


@dataclass
class Section:
    """A titled group of panels; in the report, `text` comes before its panels, which show `runsets`."""

    name: str
    panels: list[Panel] = field(default_factory=list)
    runsets: list[RunSet] = field(default_factory=list)
    text: str = ""


@dataclass
class TableSpec:
    """One table of the sweep report (method version x class x run identity) and how to find its runs."""

    title: str
    method_version: str
    class_index: int
    class_name: str
    class_file: str
    component: int | None
    identity: str
    scale: str  # "" (a real model), "tiny random" or "mini world": such numbers check plumbing only
    differs: list[str]  # `key=value` in which it differs from the other tables
    filters: list[Filter]  # selects its runs among the group's


@dataclass
class WorkspaceSpec:
    name: str
    runset: RunSet
    sections: list[Section]


@dataclass
class ReportSpec:
    title: str
    description: str
    sections: list[Section]


@dataclass
class DashboardSpec:
    """Everything needed to create the W&B workspace and report of one sweep, later or now."""

    spec_version: int
    entity: str | None
    project: str
    group: str
    source: str  # the sweep folder, or `wandb:<entity>/<project>/<group>`
    classifiers: list[str]
    identity_keys: list[str]  # config keys whose values tell the tables' run identities apart
    tables: list[TableSpec]
    workspace: WorkspaceSpec
    report: ReportSpec
    report_table: list[dict]  # the sweep report's report.csv lines (spurgen/report/csv_rows.py csv_lines)
    figures: list[str]  # the sweep report's figures as the report run logged them (`report/...` keys)
    # W&B custom chart presets the vs_lambda panels draw with: name -> Vega-Lite spec (charts.py); saving the
    # dashboard creates them in the entity first
    charts: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def from_json(cls, text: str) -> DashboardSpec:
        return _load(cls, json.loads(text))

    @classmethod
    def read(cls, path: str | Path) -> DashboardSpec:
        return cls.from_json(Path(path).read_text())


def _load(kind: Any, data: Any) -> Any:
    """A dataclass (or list of them) from its asdict() form."""
    if is_dataclass(kind) and isinstance(data, dict):
        hints = get_type_hints(kind)
        return kind(**{f.name: _load(hints[f.name], data[f.name]) for f in fields(kind) if f.name in data})
    inner = getattr(kind, "__args__", None)
    if isinstance(data, list) and inner and is_dataclass(inner[0]):
        return [_load(inner[0], d) for d in data]
    return data
