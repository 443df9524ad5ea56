"""A sweep's report on disk: collect, aggregate, then report.csv, report.md and figures/ (and W&B on request)."""

from __future__ import annotations

from pathlib import Path

from spurgen.report.aggregate import aggregate
from spurgen.report.collect import collect
from spurgen.report.cost import cost_figures
from spurgen.report.csv_rows import CSV_FIELDS, EFFECT_FIELDS, csv_lines, effect_lines
from spurgen.report.effects import effects
from spurgen.report.figures import figures as draw_figures
from spurgen.report.markdown import markdown
from spurgen.report.wandb_run import push_wandb


def write_report(
    root: str | Path, out_dir: str | Path | None = None, to_wandb: bool = False
) -> dict[str, Path]:
    """Collect, aggregate and write report.md, report.csv, effects.csv (the effect-shown rule,
    spurgen/report/effects.py) and figures/ (into the sweep folder by default)."""
    import csv

    from spurgen.files import output_folder

    sweep = collect(root)
    out = output_folder(out_dir or sweep.root, "--out")  # one line, before any figure is drawn
    rows = aggregate(sweep)
    figures = {**draw_figures(sweep, rows, out), **cost_figures(sweep, rows, out)}
    lines, shown = csv_lines(rows), effect_lines(effects(rows))
    for name, fields, content in (("report.csv", CSV_FIELDS, lines), ("effects.csv", EFFECT_FIELDS, shown)):
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(content)
    (out / "report.md").write_text(markdown(sweep, rows, figures, out))
    paths = {
        "report.md": out / "report.md",
        "report.csv": out / "report.csv",
        "effects.csv": out / "effects.csv",
    }
    paths.update(figures)
    if to_wandb:
        push_wandb(sweep, lines, figures, shown)
    return paths
