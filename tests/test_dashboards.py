"""W&B dashboards as code (issue 14): spurgen's panel spec, the wandb-workspaces workspace and report built from
it, the offline specification, and the metric keys checked against what a tiny `logger=wandb` run logs."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import pytest

from spurgen.dashboards import command
from spurgen.dashboards.charts import VS_LAMBDA, VS_LAMBDA_SPEC
from spurgen.dashboards.plan import LAMBDA
from spurgen.dashboards.source import folder_spec
from spurgen.dashboards.spec import (
    IMAGE_KEYS,
    REPORT_TABLE_KEY,
    SPEC_FILE,
    TRAIN_LOSSES,
    DashboardSpec,
    Filter,
    Panel,
    metric,
)
from spurgen.dashboards.wandb_objects import create_charts, filter_text, report, workspace
from spurgen.errors import SpurgenError
from spurgen.report import collect, write_report
from tests.conftest import FAST, run_cli
from tests.helpers import TINY
from tests.test_sweeps import _mixed_run, fake_sweep  # noqa: F401 - the report tests' fixture

ws = pytest.importorskip("wandb_workspaces.workspaces")
wr = pytest.importorskip("wandb_workspaces.reports.v2")


@pytest.fixture
def mixed_sweep(tmp_path) -> Path:
    """Two extractors x hummingbird / hummingbird_feeder x lambda_sfsl {0, 1} x seeds {0, 1}: four tables."""
    root = tmp_path / "mixed"
    for ext, file, lam, seed in product("AB", ("hummingbird", "hummingbird_feeder"), (0, 1), (0, 1)):
        _mixed_run(root, ext, 300, file, lam, seed)
    return root


@pytest.fixture(autouse=True)
def _no_wandb_server(monkeypatch):
    """Nothing here may reach W&B: the API object and network connections fail loudly."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network / W&B")

    monkeypatch.setattr(command, "wandb_api", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def spec_of(root: Path) -> DashboardSpec:
    return folder_spec(root, write_report(root), None, None)


def wire(obj) -> dict:
    return json.loads(obj._to_model().model_dump_json(by_alias=True, exclude_none=True))


def selects(filters: list[Filter], run) -> bool:
    """Evaluate a table's W&B filters on a report Run, as W&B would on the run's logged config."""
    known = {
        "config.method_version": run.method_version,
        "config.target.index": run.class_key[0],
        "config.target.file": run.class_key[1],
        "config.target.component": run.class_key[2],
        LAMBDA: run.lambda_sfsl,
    }
    for f in filters:
        value = known.get(f.key, run.config.get(f.key.removeprefix("config.")))
        if (value == f.value) != (f.op == "=="):
            return False
    return True


# -- the spec --------------------------------------------------------------------------------------------------
def test_table_filters_select_exactly_the_report_tables_runs(mixed_sweep):
    spec = spec_of(mixed_sweep)
    runs = collect(mixed_sweep).runs
    assert len(spec.tables) == 4 and spec.identity_keys == ["data.class_prompt", "feature_extractor._target_"]
    for t in spec.tables:
        chosen = {str(r.folder) for r in runs if selects(t.filters, r)}
        mine = {str(r.folder) for r in runs if r.identity == t.identity and r.class_key[1] == t.class_file}
        assert chosen == mine and len(mine) == 4  # two lambdas x two seeds, nothing of another table
        assert any(f.key == "config.feature_extractor._target_" for f in t.filters)
    assert spec.classifiers == ["a", "b"] and spec.group == "mixed" and spec.project == "spurgen"


def test_spec_json_round_trips(mixed_sweep):
    spec = spec_of(mixed_sweep)
    again = DashboardSpec.from_json(spec.to_json())
    assert again == spec and isinstance(again.tables[0].filters[0], Filter)
    assert isinstance(again.report.sections[1].runsets[0].filters[0], Filter)
    assert again.charts == {VS_LAMBDA: VS_LAMBDA_SPEC}  # the custom chart preset travels with the spec
    assert again.report.sections[1].panels[0].chart == VS_LAMBDA


def test_bad_spec_values_are_refused():
    with pytest.raises(ValueError, match="filter key"):
        Filter("lambda_sfsl", "==", 0)  # a config key must say so: config.lambda_sfsl
    with pytest.raises(ValueError, match="filter op"):
        Filter("group", "~", "g")
    with pytest.raises(ValueError, match="vs_lambda panel"):
        Panel("vs_lambda", "t", ["eval/spurious_rate/a"], LAMBDA, VS_LAMBDA)  # no baseline and reference


# -- the workspace ---------------------------------------------------------------------------------------------
def _panels(sections) -> dict[str, list]:
    return {s.name: s.panels for s in sections}


def test_workspace_groups_by_class_and_identity_then_lambda(mixed_sweep):
    spec = spec_of(mixed_sweep)
    view = workspace(spec, "me")
    assert view.project == "spurgen" and view.name == "spurgen mixed"
    grouping = [g.name for g in view.runset_settings.groupby]
    assert grouping == [
        "method_version",
        "target.index",
        "target.file",
        "data.class_prompt",
        "feature_extractor._target_",
        "model_is_tiny_random",
        "lambda_sfsl",
    ]  # lambda_sfsl only within a class and identity
    assert view.runset_settings.filters == "Group == 'mixed' and JobType != 'report'"
    panels = _panels(view.sections)
    assert [p.y for p in panels["training losses"]] == [[k] for k in TRAIN_LOSSES]
    assert panels["generated images"][0].media_keys == list(IMAGE_KEYS)
    rates = panels["spurious rate vs lambda_sfsl"]
    assert [p.metrics for p in rates] == [["eval/spurious_rate/a"], ["eval/spurious_rate/b"]]
    assert all(p.groupby_aggfunc == "mean" and p.groupby_rangefunc == "stddev" for p in rates)
    rows = panels["baseline and reference (lambda_sfsl = 0 runs)"]
    assert rows[0].metrics == ["eval_baseline/spurious_rate/a", "eval_reference/spurious_rate/a"]
    # a custom chart ignores the workspace's grouping and would pool unlike runs: the lines are the report's
    assert not any(isinstance(p, wr.CustomChart) for s in view.sections for p in s.panels)
    both = panels["consistency and similarity"]
    assert both[0].metrics == ["eval/consistency_all", "eval/consistency_at_least_half"]
    assert both[1].metrics == ["eval/similarity/a", "eval/similarity/b"]
    (parallel,) = panels["all runs"]
    columns = [c.metric for c in parallel.columns]
    assert [c.name for c in columns[:3]] == ["target.name", "lambda_sfsl", "seed"]
    assert "eval/spurious_rate/b" in columns and "eval/consistency_all" in columns
    assert "summary:eval/spurious_rate/a" in view.runset_settings.pinned_columns
    assert "config:target.value.name" in view.runset_settings.pinned_columns
    grouped = wire(view)["spec"]["section"]["runSets"][0]["grouping"]  # serialises offline
    assert {"section": "config", "name": "feature_extractor.value._target_"} in grouped


# -- the report ------------------------------------------------------------------------------------------------
def _grids(rep) -> list[tuple[str, object]]:
    """(the H2 above it, PanelGrid) for each panel grid of a report."""
    out, heading = [], None
    for block in rep.blocks:
        if isinstance(block, wr.H2):
            heading = block.text[0] if isinstance(block.text, list) else block.text
        if isinstance(block, wr.PanelGrid):
            out.append((str(heading), block))
    return out


def test_report_holds_the_sweep_report_and_one_grid_per_table(mixed_sweep):
    spec = spec_of(mixed_sweep)
    rep = report(spec, "")
    grids = _grids(rep)
    assert len(grids) == 1 + 4 + 1  # sweep report, per table its runs, all runs
    head = grids[0][1]
    assert head.runsets[0].filters == "Group == 'mixed' and JobType == 'report'"
    assert head.panels[0].table_name == REPORT_TABLE_KEY
    assert head.panels[1].media_keys == spec.figures
    assert spec.figures[0] == "report/rate_2"  # then each table's similarity / KID / diversity figure
    assert len(spec.figures) == 1 + 4 and all(f.startswith("report/measures_2_94_") for f in spec.figures[1:])
    for t in spec.tables:
        (runs_grid,) = [g for h, g in grids if h == t.title]
        where = runs_grid.runsets[0].filters
        assert f"Config('target.value.file') == '{t.class_file}'" in where
        assert f"Config('feature_extractor.value._target_') == '{t.differs[1].split('=')[1]}'" in where
        assert "Group == 'mixed' and JobType != 'report'" in where
        plotted = [p for p in runs_grid.panels if isinstance(p, wr.LinePlot | wr.BarPlot)]
        assert plotted and all(p.groupby == LAMBDA and p.groupby_rangefunc == "stddev" for p in plotted)
    last = grids[-1][1]
    assert last.runsets[0].groupby[-1] == LAMBDA
    assert isinstance(last.panels[0], wr.ParallelCoordinatesPlot)
    wired = [b["type"] for b in wire(rep)["spec"]["blocks"]]  # serialises (no entity: no project lookup)
    assert wired.count("panel-grid") == len(grids) and wired.count("heading") == len(grids)


def logged_eval_keys(classifiers: list[str]) -> set[str]:
    """The keys spurgen/eval/summary.py flat_metrics (what the eval stage logs) writes for these classifiers."""
    from spurgen.eval.summary import flat_metrics

    nums = {k: {"value": 0.5} for k in ("spurious_rate", "top5_rate", "mean_p_target", "similarity")}
    block = {
        "per_classifier": {c: nums for c in classifiers},
        "consistency": {"all": {"value": 1}, "at_least_half": {"value": 1}},
    }
    return set(flat_metrics({s: block for s in ("images", "baseline", "reference")}, {}))


def run_transforms(transforms: list[dict], rows: list[dict], fields: dict[str, str]) -> list[dict]:
    """The Vega-Lite transforms a preset layer uses (field filters, fold, mean aggregate), on rows as W&B's
    custom chart query gives them (one per run, columns named by their keys), with `${field:...}` bound."""

    def bind(name: str) -> str:
        return fields[name[len("${field:") : -1]] if name.startswith("${field:") else name

    for t in transforms:
        if "filter" in t:
            f = t["filter"]
            key = bind(f["field"])
            if "equal" in f:
                rows = [r for r in rows if r.get(key) == f["equal"]]
            else:  # valid
                rows = [r for r in rows if r.get(key) is not None]
        elif "fold" in t:
            name, value = t["as"]
            rows = [{**r, name: bind(k), value: r.get(bind(k))} for r in rows for k in t["fold"]]
        elif "aggregate" in t:
            (agg,) = t["aggregate"]
            assert agg["op"] == "mean"
            groups: dict[tuple, list] = {}
            for r in rows:
                groups.setdefault(tuple(r[g] for g in t["groupby"]), []).append(r[agg["field"]])
            rows = [
                {**dict(zip(t["groupby"], g, strict=True)), agg["as"]: sum(v) / len(v)}
                for g, v in groups.items()
            ]
        else:
            raise AssertionError(f"a transform this test does not know: {t}")
    return rows


def test_report_draws_baseline_and_reference_as_lines_from_the_lambda_0_runs(mixed_sweep):
    """Each table's spurious rate vs lambda_sfsl, per classifier, is a W&B custom chart over exactly that
    table's runs (its identity and class, every lambda_sfsl): the rate per run with its mean ± std over seeds,
    and the baseline and reference rows as horizontal lines, the means of the lambda_sfsl = 0 runs'
    eval_baseline/spurious_rate/<c> and eval_reference/spurious_rate/<c> (keys as the logging code writes
    them). Not bars, not from the other runs."""
    from spurgen.eval.summary import SET_PREFIX

    spec = spec_of(mixed_sweep)
    logged = logged_eval_keys(spec.classifiers)
    rep = report(spec, "team")
    grids = dict(_grids(rep))
    for t in spec.tables:
        grid = grids[t.title]
        where = grid.runsets[0].filters
        assert where == filter_text(
            [Filter("group", "==", "mixed"), Filter("job_type", "!=", "report"), *t.filters]
        )
        assert "lambda_sfsl" not in where  # every lambda_sfsl: the lines run across them
        charts = {p.chart_fields["value"]: p for p in grid.panels if isinstance(p, wr.CustomChart)}
        bars = {k for p in grid.panels if isinstance(p, wr.BarPlot) for k in p.metrics}
        for c in spec.classifiers:
            images, baseline, reference = (
                f"{SET_PREFIX[s]}/spurious_rate/{c}" for s in ("images", "baseline", "reference")
            )
            assert {images, baseline, reference} <= logged
            chart = charts[images]
            assert chart.chart_name == f"team/{VS_LAMBDA}"
            assert chart.chart_fields == {
                "lambda": "lambda_sfsl",
                "value": images,
                "baseline": baseline,
                "reference": reference,
            }
            assert chart.query == {
                "config": {"keys": ["lambda_sfsl"]},
                "summary": {"keys": [images, baseline, reference]},
            }
            assert baseline not in bars and reference not in bars  # lines, not bars
        for k in ("consistency_all", "consistency_at_least_half"):
            chart = charts[f"{SET_PREFIX['images']}/{k}"]
            assert chart.chart_fields["baseline"] == f"{SET_PREFIX['baseline']}/{k}" in logged
            assert chart.chart_fields["reference"] == f"{SET_PREFIX['reference']}/{k}" in logged
    vega = wire(charts[f"{SET_PREFIX['images']}/spurious_rate/a"])  # the panel alone: no project lookup
    assert vega["viewType"] == "Vega2" and vega["config"]["panelDefId"] == f"team/{VS_LAMBDA}"

    # the preset: a horizontal rule (a y and no x: it spans every lambda_sfsl) per row, at the mean over the
    # lambda_sfsl = 0 runs; a lambda_sfsl = 1 run that carried a baseline would not move it
    assert spec.charts == {VS_LAMBDA: VS_LAMBDA_SPEC}
    (rule,) = [layer for layer in VS_LAMBDA_SPEC["layer"] if layer["mark"]["type"] == "rule"]
    assert "x" not in rule["encoding"] and rule["encoding"]["y"]["field"] == "level"
    fields = dict(charts[f"{SET_PREFIX['images']}/spurious_rate/a"].chart_fields)
    b, r = fields["baseline"], fields["reference"]
    runs = [
        {"lambda_sfsl": 0.0, fields["value"]: 0.2, b: 0.1, r: 0.7},
        {"lambda_sfsl": 0.0, fields["value"]: 0.4, b: 0.3, r: 0.9},
        {"lambda_sfsl": 1.0, fields["value"]: 0.6, b: 0.95, r: 0.05},
        {"lambda_sfsl": 1.0, fields["value"]: 0.8},
    ]
    levels = {x["row"]: x["level"] for x in run_transforms(rule["transform"], runs, fields)}
    assert levels == pytest.approx({b: 0.2, r: 0.8})
    points = [layer for layer in VS_LAMBDA_SPEC["layer"] if layer["mark"]["type"] != "rule"]
    assert {layer["encoding"]["x"]["field"] for layer in points} == {"${field:lambda}"}
    assert {layer["encoding"]["y"]["field"] for layer in points} == {"${field:value}"}
    assert {layer["mark"]["type"] for layer in points} == {"errorband", "line", "point"}
    line = next(layer for layer in points if layer["mark"]["type"] == "line")
    assert line["encoding"]["y"]["aggregate"] == "mean"
    assert (
        next(layer for layer in points if layer["mark"]["type"] == "errorband")["mark"]["extent"] == "stdev"
    )


def test_chart_presets_are_created_before_the_dashboard(mixed_sweep):
    spec = spec_of(mixed_sweep)
    calls = []

    class Api:
        def __init__(self, error=None):
            self.error = error

        def create_custom_chart(self, **kwargs):
            calls.append(kwargs)
            if self.error:
                raise self.error

    assert create_charts(spec, Api(), "team") == []
    assert (
        calls[0]["name"] == VS_LAMBDA and calls[0]["spec"] == VS_LAMBDA_SPEC and calls[0]["entity"] == "team"
    )
    assert create_charts(spec, Api(RuntimeError("chart already exists (409)")), "team") == []  # kept
    (line,) = create_charts(spec, Api(RuntimeError("permission denied")), "team")
    assert f"team/{VS_LAMBDA} not created (permission denied)" in line and "stay empty" in line


def test_report_with_entity_needs_the_server_to_serialise(mixed_sweep, monkeypatch):
    """Why the offline form is spurgen's spec: a report whose runsets name an entity looks the project up."""
    import wandb_workspaces.reports.v2.interface as wri

    def lookup():
        raise AssertionError("W&B server lookup")

    monkeypatch.setattr(wri, "_get_api", lookup)
    rep = report(spec_of(mixed_sweep), "someone")
    with pytest.raises(AssertionError, match="W&B server lookup"):
        rep._to_model()


def test_tiny_runs_are_marked(fake_sweep):  # noqa: F811 - the fixture imported from test_sweeps
    for metrics in fake_sweep.glob("*/eval/metrics.json"):
        try:
            data = json.loads(metrics.read_text())
        except json.JSONDecodeError:
            continue
        metrics.write_text(json.dumps({**data, "model_is_tiny_random": True}))
    spec = spec_of(fake_sweep)
    assert {t.scale for t in spec.tables} == {"tiny random"} and len(spec.tables) == 2  # versions 1 and 2
    assert "TINY RANDOM MODELS" in spec.workspace.sections[0].panels[0].keys[0]
    rep = report(spec, "")
    assert isinstance(rep.blocks[0], wr.CalloutBlock)
    assert all("[tiny random]" in h for h, _ in _grids(rep)[1:-1])
    assert "config.model_is_tiny_random" in spec.workspace.runset.groupby


def test_mini_world_runs_are_marked_by_their_model_marks(fake_sweep):  # noqa: F811
    """model.marks.model_is_mini (what model=mini declares) marks a table "mini world"."""
    import yaml

    for cfg_file in fake_sweep.glob("*/.hydra/config.yaml"):
        cfg = yaml.safe_load(cfg_file.read_text())
        cfg_file.write_text(yaml.safe_dump({**cfg, "model": {"marks": {"model_is_mini": True}}}))
    spec = spec_of(fake_sweep)
    assert {t.scale for t in spec.tables} == {"mini world"}


def test_filter_text_quotes_values():
    text = filter_text([Filter("config.lambda_sfsl", "==", 0.0), Filter("config.target.file", "==", "it's")])
    assert text == "Config('lambda_sfsl.value') == 0.0 and Config('target.value.file') == \"it's\""


# -- the commands ----------------------------------------------------------------------------------------------
def test_report_dashboard_dry_run_writes_the_full_spec(fake_sweep, capsys):  # noqa: F811
    from spurgen.cli.report import main

    assert main([str(fake_sweep), "--dashboard", "--dry-run"]) == 0
    out = capsys.readouterr().out
    path = fake_sweep / SPEC_FILE
    assert path.exists() and (fake_sweep / "report.md").exists()
    assert f"spurgen dashboard {path}" in out and "--dry-run: nothing created in W&B" in out
    spec = DashboardSpec.read(path)
    lines = list(__import__("csv").DictReader(open(fake_sweep / "report.csv")))
    assert len(spec.report_table) == len(lines) and spec.report_table[0]["metric"] == lines[0]["metric"]
    figures = {
        p.stem.replace("spurious_rate_vs_lambda_v", "rate_") for p in (fake_sweep / "figures").glob("*.png")
    }
    logged = {f.removeprefix("report/") for f in spec.figures}
    assert {f for f in logged if f.startswith("rate_")} == {f for f in figures if f.startswith("rate_")}
    assert {f for f in figures if f.startswith("rate_")} == {"rate_1", "rate_2"}
    # one similarity / KID / diversity figure per table (measures_<index>_v<version>.png), logged under its key
    assert {f for f in figures if f.startswith("measures_")} == {"measures_105_v1", "measures_105_v2"}
    assert len([f for f in logged if f.startswith("measures_")]) == 2
    assert spec == spec_of(fake_sweep)  # everything the W&B objects are built from
    assert wire(workspace(spec, "me"))["spec"]["section"]["panelBankConfig"]  # buildable from the file alone
    assert not (fake_sweep / "wandb").exists()


def test_dashboard_offline_writes_spec_and_says_how(mixed_sweep, tmp_path, capsys):
    assert command.main([str(mixed_sweep), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "out" / SPEC_FILE).exists() and (tmp_path / "out" / "report.md").exists()
    assert "W&B is offline" in out and f"wandb sync {mixed_sweep}/*/wandb/offline-run-*" in out
    spec = DashboardSpec.read(tmp_path / "out" / SPEC_FILE)
    assert command.main([str(tmp_path / "out" / SPEC_FILE), "--entity", "team", "--dry-run"]) == 0
    assert DashboardSpec.read(tmp_path / "out" / SPEC_FILE).entity == "team" and spec.entity is None


def test_dashboard_when_w_and_b_refuses_nothing_fails(mixed_sweep, monkeypatch, capsys):
    class Api:
        default_entity = "me"

        def runs(self, path, filters):
            return [object()]  # the group already has a report run

    def unreachable(self):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(command, "online", lambda: True)
    monkeypatch.setattr(command, "wandb_api", Api)
    monkeypatch.setattr(ws.Workspace, "save", unreachable)
    assert command.main([str(mixed_sweep)]) == 0
    out = capsys.readouterr().out
    assert "W&B did not accept the dashboard (api.wandb.ai unreachable)" in out
    assert (mixed_sweep / SPEC_FILE).exists() and "spurgen dashboard" in out


def test_group_without_folder_offline_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert command.main(["ablation_six_classes-2026-11-29"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spurgen: error: ") and "needs W&B online" in err


class FakeRun:
    def __init__(self, name, config=None, job_type=None, summary=None, files=None):
        self.name, self.config, self.job_type = name, config or {}, job_type
        self.summary, self._files = summary or {}, files or {}

    def file(self, path):
        text = self._files[path]

        class File:
            def download(self, root, replace):
                target = Path(root) / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
                return open(target)

        return File()


def _fake_api(runs):
    class Api:
        default_entity = "me"

        def runs(self, path, filters):
            assert path == "me/spurgen" and filters["group"] == "g"
            return [r for r in runs if filters.get("jobType") in (None, r.job_type)]

    return Api


def test_group_without_report_run_stops_with_a_message(monkeypatch, capsys):
    train = FakeRun(
        "koala-lambda0-seed0", {"target": {"index": 105, "name": "koala"}, "lambda_sfsl": 0, "seed": 0}
    )
    monkeypatch.setattr(command, "online", lambda: True)
    monkeypatch.setattr(command, "wandb_api", _fake_api([train]))
    assert command.main(["g"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "W&B group 'g' in me/spurgen has no report run" in err
    assert "spurgen report <sweep folder> --wandb" in err


def test_group_spec_comes_from_its_report_run(monkeypatch, tmp_path):
    from spurgen.dashboards.source import group_spec

    def cfg(lam, seed, ext):
        target = {"index": 105, "name": "koala"}
        return {
            "target": target,
            "lambda_sfsl": lam,
            "seed": seed,
            "method_version": "2",
            "ext": ext,
            "model_is_tiny_random": True,
        }

    runs = [
        FakeRun(f"r{i}", cfg(lam, seed, ext))
        for i, (lam, seed, ext) in enumerate(product((0, 1), (0, 1), "AB"))
    ]
    table = {"columns": ["metric", "mean"], "data": [["spurious_rate/a", 0.5], ["spurious_rate/b", 0.4]]}
    summary = {
        REPORT_TABLE_KEY: {"_type": "table-file", "path": "media/t.table.json"},
        "report/rate_2": {"_type": "image-file"},
    }
    runs.append(
        FakeRun(
            "report-g", job_type="report", summary=summary, files={"media/t.table.json": json.dumps(table)}
        )
    )
    spec = group_spec(_fake_api(runs)(), "me", "spurgen", "g")
    assert spec.report_table == [
        {"metric": "spurious_rate/a", "mean": 0.5},
        {"metric": "spurious_rate/b", "mean": 0.4},
    ]
    assert spec.identity_keys == ["ext"] and len(spec.tables) == 2 and spec.figures == ["report/rate_2"]
    assert {t.scale for t in spec.tables} == {"tiny random"} and spec.source == "wandb:me/spurgen/g"


def test_missing_workspaces_package_is_one_line(monkeypatch):
    import sys

    from spurgen.dashboards.wandb_objects import modules

    monkeypatch.setitem(sys.modules, "wandb_workspaces.workspaces", None)
    with pytest.raises(SpurgenError, match=r"pip install 'wandb\[workspaces\]'"):
        modules()


def test_dashboard_command_is_dispatched(capsys):
    import spurgen.cli

    assert spurgen.cli.main(["dashboard", "--help"]) == 0
    assert "usage: spurgen dashboard" in capsys.readouterr().out


# -- the keys against the logging code -------------------------------------------------------------------------
def test_eval_keys_are_the_logged_ones():
    """Every eval key a panel plots is a key spurgen/eval/summary.py flat_metrics writes."""
    from spurgen.eval.summary import flat_metrics

    def block(c):
        nums = {k: {"value": 0.5} for k in ("spurious_rate", "top5_rate", "mean_p_target", "similarity")}
        return {
            "per_classifier": {c: nums},
            "consistency": {"all": {"value": 1}, "at_least_half": {"value": 1}},
        }

    logged = set(flat_metrics({s: block("a") for s in ("images", "baseline", "reference")}, {}))
    planned = {
        metric("images", "spurious_rate", "a"),
        metric("images", "similarity", "a"),
        metric("baseline", "spurious_rate", "a"),
        metric("reference", "spurious_rate", "a"),
        *(
            metric(s, k)
            for s in ("images", "baseline", "reference")
            for k in ("consistency_all", "consistency_at_least_half")
        ),
    }
    assert planned <= logged


def _panel_keys(spec: DashboardSpec) -> set[str]:
    keys = set()
    for section in spec.workspace.sections + spec.report.sections:
        for p in section.panels:
            if p.kind in ("line", "bar", "vs_lambda", "media", "parallel"):
                keys |= {k for k in p.keys if not k.startswith("config.") and not k.startswith("report/")}
    return keys


def wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file (a LevelDB-style log: a 7-byte file header, 32 KiB
    blocks, chunks with a 7-byte header crc/length/type, FULL=1 FIRST=2 MIDDLE=3 LAST=4); wandb 0.31 has no
    Python reader of its own."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            yield record


def logged(run_dir: Path) -> tuple[set[str], dict]:
    """(every history and summary key, the config) that a run logged to W&B offline."""
    keys, config = set(), {}
    for path in run_dir.glob("wandb/offline-run-*/*.wandb"):
        for rec in wandb_records(path):
            kind = rec.WhichOneof("record_type")
            if kind in ("history", "summary"):
                items = rec.history.item if kind == "history" else rec.summary.update
                keys |= {i.key or "/".join(i.nested_key) for i in items}
            if kind == "run":
                config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
    return keys, config


@pytest.mark.slow
def test_dashboard_keys_are_what_a_tiny_wandb_run_logged(tmp_path):
    """A tiny lambda_sfsl = 0 run (with its baseline) logged to W&B offline: every metric and media key the
    dashboard plots is among the keys it logged, and every config key it groups or filters by is in its
    config. Renaming a key in the logging code fails this test."""
    sweep = tmp_path / "sweep"
    argv = [*TINY, *(a for a in FAST if not a.startswith("logger="))]
    argv += ["logger=wandb", "trainer.log_every_n_steps=1", "lambda_sfsl=0", "generate.baseline=true"]
    argv += ["generate.num_images=4", "stages=[train,generate,evaluate]", f"hydra.run.dir={sweep}/run0"]
    assert run_cli(argv) == 0
    keys, config = logged(sweep / "run0")
    spec = spec_of(sweep)
    assert spec.classifiers and spec.tables[0].scale == "tiny random"
    missing = sorted(
        k for k in _panel_keys(spec) if k not in keys and not any(x.startswith(k + "/") for x in keys)
    )
    assert not missing, f"plotted but never logged: {missing}; logged: {sorted(keys)}"
    assert {*TRAIN_LOSSES, *IMAGE_KEYS} <= _panel_keys(spec)
    for key in spec.workspace.runset.groupby + [f.key for t in spec.tables for f in t.filters]:
        node = config
        for part in key.removeprefix("config.").split("."):
            assert isinstance(node, dict) and part in node, f"{key} not in the W&B config"
            node = node[part]
