"""A sweep's report on disk: collect, aggregate, then report.csv, report.md and figures/ (and W&B on request)."""

from __future__ import annotations

from pathlib import Path

from spurgen.report.aggregate import aggregate
from spurgen.report.collect import collect
from spurgen.report.csv_rows import CSV_FIELDS, csv_lines
from spurgen.report.figures import figures as draw_figures
from spurgen.report.markdown import markdown
from spurgen.report.wandb_run import push_wandb


def write_report(
    root: str | Path, out_dir: str | Path | None = None, to_wandb: bool = False
) -> dict[str, Path]:
    """Collect, aggregate and write report.md, report.csv and figures/ (into the sweep folder by default)."""
    import csv

    from spurgen.files import output_folder

    sweep = collect(root)
    out = output_folder(out_dir or sweep.root, "--out")  # one line, before any figure is drawn
    rows = aggregate(sweep)
    figures = draw_figures(sweep, rows, out)
    lines = csv_lines(rows)
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(lines)
    (out / "report.md").write_text(markdown(sweep, rows, figures, out))
    paths = {"report.md": out / "report.md", "report.csv": out / "report.csv", **figures}
    if to_wandb:
        push_wandb(sweep, lines, figures)
    return paths
