"""report.csv: the report's rows in long form, one line per row and metric (also the W&B table)."""

from __future__ import annotations

CSV_FIELDS = [
    "method_version",
    "class_index",
    "class_name",
    "class_file",
    "component",
    "identity",
    "row",
    "row_identity",
    "lambda_sfsl",
    "metric",
    "mean",
    "std",
    "n_seeds",
    "seeds",
]


def csv_lines(rows: list[dict]) -> list[dict]:
    """Long form: one line per row and metric (`identity` is the table's; `row_identity` the row's own)."""
    out = []
    for r in rows:
        for metric, s in r["stats"].items():
            line = {k: r[k] for k in CSV_FIELDS if k in r}
            line.update(
                component="" if r["component"] is None else r["component"],
                lambda_sfsl="" if r["lambda_sfsl"] is None else r["lambda_sfsl"],
                metric=metric,
                mean=s["mean"],
                std=s["std"],
                n_seeds=s["n"],
                seeds=" ".join(map(str, r["seeds"])),
            )
            out.append(line)
    return out
