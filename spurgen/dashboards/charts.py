"""The W&B custom chart (a Vega-Lite spec saved as a chart preset in the entity) that draws a metric against
lambda_sfsl with the baseline and reference rows as horizontal lines.

Why a custom chart: no built-in W&B panel can. A line plot's x axis is a history metric (Step, time or a
logged value), never a config key such as lambda_sfsl; a scatter plot takes lambda_sfsl as x but draws points
(its min/max/mean lines run along x over the runs that have the metric, so the baseline, logged only by the
lambda_sfsl = 0 runs, would sit at x = 0 alone); a bar plot draws bars. A constant line across every
lambda_sfsl, whose level comes from other runs (the lambda_sfsl = 0 ones), needs the runs' summary and config
in one Vega-Lite view: W&B's custom charts (wandb-workspaces `CustomChart`, the `Vega2` panel) query exactly
that, and a rule mark with only a y encoding spans the whole x axis.

The preset is one spec for every such panel; each panel maps its fields (`${field:...}`, filled in by W&B from
the panel's `chart_fields`) to the keys it plots. W&B cannot update a preset, so its name carries a hash of the
spec: a changed spec is a new preset. Custom charts ignore a workspace's run grouping (W&B draws every run the
panel's run set selects), so spurgen puts these panels only where the run set is one table of the sweep report
(one method version x class x run identity): the report's table sections.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# field -> what it is bound to (wandb_objects.py fills it in from the panel's keys)
FIELDS = {
    "lambda": "config lambda_sfsl (x)",
    "value": "the generated images' metric, eval/...: a point per run, the mean over seeds as a line, ± std",
    "baseline": "eval_baseline/...: its mean over the lambda_sfsl = 0 runs, a horizontal line",
    "reference": "eval_reference/...: its mean over the lambda_sfsl = 0 runs, a horizontal line",
}
STRINGS = ("title", "y")
IMAGES_COLOR = "#4c78a8"
ROW_COLORS = ["#e45756", "#54a24b"]  # baseline, reference (fold order)


def _x(title: bool = True) -> dict[str, Any]:
    x: dict[str, Any] = {"field": "${field:lambda}", "type": "quantitative"}
    return {**x, "title": "lambda_sfsl"} if title else x


def _y(**extra: Any) -> dict[str, Any]:
    return {"field": "${field:value}", "type": "quantitative", "title": "${string:y}", **extra}


def vs_lambda_spec() -> dict[str, Any]:
    """Vega-Lite: the generated images' metric per run (points) and its mean over seeds per lambda_sfsl (line,
    ± std band); the baseline and reference metrics averaged over the lambda_sfsl = 0 runs (horizontal rules
    across every lambda_sfsl). Field placeholders stand only where a field name goes (no expressions), as in
    W&B's own presets; W&B names the query's columns by their keys (`tableWithLeafColNames`)."""
    valid = {"filter": {"field": "${field:value}", "valid": True}}
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "${string:title}",
        "data": {"name": "wandb"},
        "width": "container",
        "layer": [
            {  # mean over seeds ± std, per lambda_sfsl
                "transform": [valid],
                "mark": {"type": "errorband", "extent": "stdev", "color": IMAGES_COLOR, "opacity": 0.25},
                "encoding": {"x": _x(), "y": _y()},
            },
            {
                "transform": [valid],
                "mark": {"type": "line", "point": True, "color": IMAGES_COLOR},
                "encoding": {"x": _x(), "y": _y(aggregate="mean")},
            },
            {  # every run
                "transform": [valid],
                "mark": {"type": "point", "color": IMAGES_COLOR, "opacity": 0.5, "size": 20},
                "encoding": {"x": _x(), "y": _y(), "tooltip": [_x(), _y()]},
            },
            {  # the baseline and reference rows: the mean over the lambda_sfsl = 0 runs, across every lambda
                "transform": [
                    {"filter": {"field": "${field:lambda}", "equal": 0}},
                    {"fold": ["${field:baseline}", "${field:reference}"], "as": ["row", "level"]},
                    {"filter": {"field": "level", "valid": True}},
                    {"aggregate": [{"op": "mean", "field": "level", "as": "level"}], "groupby": ["row"]},
                ],
                "mark": {"type": "rule", "strokeWidth": 2},
                "encoding": {
                    "y": {"field": "level", "type": "quantitative", "title": "${string:y}"},
                    "color": {
                        "field": "row",
                        "type": "nominal",
                        "title": "lambda_sfsl = 0 runs",
                        "scale": {"range": ROW_COLORS},
                        "legend": {"labelLimit": 400},
                    },
                    "strokeDash": {"field": "row", "type": "nominal", "title": "lambda_sfsl = 0 runs"},
                    "tooltip": [
                        {"field": "row", "type": "nominal"},
                        {"field": "level", "type": "quantitative", "format": ".3f"},
                    ],
                },
            },
        ],
    }


def preset_name(spec: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return f"spurgen-vs-lambda-{digest}"


VS_LAMBDA_SPEC = vs_lambda_spec()
VS_LAMBDA = preset_name(VS_LAMBDA_SPEC)
