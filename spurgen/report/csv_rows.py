"""report.csv: the report's rows in long form, one line per row and metric (also the W&B table)."""

from __future__ import annotations

TABLE_FIELDS = [
    "method_version",
    "class_index",
    "class_name",
    "class_file",
    "component",
    "identity",
]  # a table's key
CSV_FIELDS = [
    *TABLE_FIELDS,
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


EFFECT_FIELDS = [
    *TABLE_FIELDS,
    "lambda_sfsl",
    "classifier",
    "metric",
    "mean_0",
    "n_seeds_0",
    "mean",
    "n_seeds",
    "difference",
    "spread",
    "verdict",
    "pooled_value_0",
    "pooled_ci_low_0",
    "pooled_ci_high_0",
    "pooled_value",
    "pooled_ci_low",
    "pooled_ci_high",
]


def effect_lines(found: list[dict]) -> list[dict]:
    """effects.csv: one line per table, lambda_sfsl > 0, classifier and metric (spurgen/report/effects.py), the
    pooled 95% intervals in columns of their own (the spurious rate's Wilson interval, the similarity's normal
    interval of the mean over all seeds' images)."""
    out = []
    for e in found:
        line = {k: e[k] for k in EFFECT_FIELDS if k in e and not k.startswith("pooled")}
        for suffix, pooled in (("_0", e["pooled_0"]), ("", e["pooled"])):
            line[f"pooled_value{suffix}"] = pooled.get("rate", pooled.get("mean")) if pooled else ""
            line[f"pooled_ci_low{suffix}"] = pooled["ci"][0] if pooled else ""
            line[f"pooled_ci_high{suffix}"] = pooled["ci"][1] if pooled else ""
        out.append(line)
    return out
