"""report.md: an introduction, per method version the rate figure and each table (the keys in which it differs
from the other tables, its rows, its image grid), then the missing or failed runs and repeated runs."""

from __future__ import annotations

import json
from pathlib import Path

from spurgen.report.aggregate import table_differences
from spurgen.report.collect import Sweep
from spurgen.report.titles import table_id, table_title


def _fmt(s: dict | None) -> str:
    if not s or s["mean"] is None:
        return "–"
    if s["std"] is None:
        return f"{s['mean']:.3f} (n={s['n']})"
    return f"{s['mean']:.3f} ± {s['std']:.3f} (n={s['n']})"


def _row_label(r: dict) -> str:
    return f"lambda_sfsl={r['lambda_sfsl']:g}" if r["row"] == "images" else r["row"]


def _extractor_lines(trows: list[dict]) -> list[str]:
    """Which feature extractor trained the SFSL in this table's runs (lambda_sfsl > 0), from metrics.json."""
    used = {
        json.dumps(e, sort_keys=True): e
        for r in trows
        if (e := r.get("extractor")) and e.get("used") and (r.get("lambda_sfsl") or 0) > 0
    }
    if not used:
        return []
    names = [
        f"`{e['name']}` ({e.get('arch')}, layer {e.get('layer')}{', RANDOM weights' if e.get('is_random') else ''})"
        for e in used.values()
    ]
    return ["SFSL trained through: " + "; ".join(names), ""]


def _table_lines(trows: list[dict], differences: list[str]) -> list[str]:
    """One table's heading, the keys in which it differs from the other tables, and its rows."""
    first = trows[0]
    classifiers = sorted(
        {m.split("/", 1)[1] for r in trows for m in r["stats"] if m.startswith("spurious_rate/")}
    )
    head = ["row", *[f"spurious rate {c}" for c in classifiers], "consistency all", "consistency ≥ half"]
    head.append("similarity")
    lines = [f"### {table_title(first['class_name'], first['table'])}", ""]
    if differences:
        lines += ["Differs from the other tables in: " + ", ".join(f"`{d}`" for d in differences), ""]
    lines += _extractor_lines(trows)
    ids = {r["row"]: r["row_identity"] for r in trows if r["row"] != "images"}
    if ids:
        lines += ["Row identities: " + ", ".join(f"{k} {v}" for k, v in sorted(ids.items())), ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in trows:
        sims = [
            s["mean"] for m, s in r["stats"].items() if m.startswith("similarity/") and s["mean"] is not None
        ]
        cells = [
            _row_label(r),
            *[_fmt(r["stats"].get(f"spurious_rate/{c}")) for c in classifiers],
            _fmt(r["stats"].get("consistency_all")),
            _fmt(r["stats"].get("consistency_at_least_half")),
            f"{sum(sims) / len(sims):.3f}" if sims else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _intro(sweep: Sweep, versions: list[str]) -> list[str]:
    lines = [f"# spurgen sweep report: {sweep.root}", ""]
    if any(r.tiny for r in sweep.runs):
        lines += [
            "> **TINY RANDOM MODELS** in some runs: these numbers check the plumbing and mean nothing.",
            "",
        ]
    marks = sorted({json.dumps(r.marks, sort_keys=True) for r in sweep.runs if r.marks})
    if marks:
        lines += [
            "> **Model marks** (what the model preset declares; e.g. model_is_mini: the mini world's numbers show "
            "the mechanism, not Stable Diffusion results): " + "; ".join(f"`{m}`" for m in marks),
            "",
        ]
    lines += [
        f"{len(sweep.runs)} runs read, {len(sweep.problems)} missing or failed. One table per class and run "
        "identity (the resolved config less seed, lambda_sfsl, the class, paths, logging and keys that cannot "
        "change results): runs of different identities are never averaged. Cells: mean ± seed-to-seed std "
        "(n = seeds). Reference and baseline rows do not depend on lambda_sfsl (one value per seed). "
        "Similarity: cos(phi(x), m) averaged over the classifiers (per classifier in report.csv).",
        "",
    ]
    if len(versions) > 1:
        lines += [
            f"> **Method versions differ** ({', '.join(versions)}): each has its own section; they are "
            "never averaged together.",
            "",
        ]
    return lines


def markdown(sweep: Sweep, rows: list[dict], figures: dict[str, Path], out_dir: Path) -> str:
    versions = sorted({r["method_version"] for r in rows})
    differences = table_differences(sweep)
    lines = _intro(sweep, versions)
    for version in versions:
        lines += [f"## Method version {version}", ""]
        fig = figures.get(f"rate:{version}")
        if fig:
            lines += [f"![spurious rate vs lambda_sfsl]({fig.relative_to(out_dir)})", ""]
        tables = {r["table"] for r in rows if r["method_version"] == version}
        for table in sorted(tables, key=lambda t: (t[1], differences.get(t, []), t[2])):
            lines += _table_lines([r for r in rows if r["table"] == table], differences.get(table, []))
            grid = figures.get(f"grid:{table_id(table)}")
            lines += ["", f"![reference beside generated]({grid.relative_to(out_dir)})" if grid else "", ""]
    lines += ["## Missing or failed runs", ""]
    lines += [f"- `{where}`: {why}" for where, why in sweep.problems] or ["None."]
    if sweep.conflicts:
        lines += ["", "## Repeated runs (one seed counts once)", ""]
        lines += [f"- {c}" for c in sweep.conflicts]
    return "\n".join(lines) + "\n"
