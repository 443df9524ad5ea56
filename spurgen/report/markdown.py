"""report.md: an introduction, per method version the rate figure and each table (the keys in which it differs
from the other tables, its rows, its image grid), then the missing or failed runs and repeated runs."""

from __future__ import annotations

import json
from pathlib import Path

from spurgen.report.aggregate import DISTRIBUTION_METRICS, table_differences
from spurgen.report.collect import Sweep
from spurgen.report.cost import cost_lines
from spurgen.report.effects import RULE, table_effects
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
    lines += _gap_lines(trows)
    return lines + _distribution_lines(trows) + _memorisation_lines(trows) + _effect_lines(trows)


def _gap_lines(trows: list[dict]) -> list[str]:
    """Each generated row's adversarial gap (spurgen/report/aggregate.py): the spurious rate under the classifier
    that is the table's training extractor minus the rate under each held-out classifier (mean ± seed std of
    the per-seed gaps). A gap that grows with lambda_sfsl is the extractor being fooled, not the feature drawn."""
    keys = sorted({m for r in trows for m in r["stats"] if m.startswith("adversarial_gap/")})
    trained = next((r["trained_extractor"] for r in trows if r.get("trained_extractor")), None)
    if not keys or not trained:
        return []
    head = ["row", *[f"gap {trained} − {m.split('/', 1)[1]}" for m in keys]]
    lines = ["", f"Adversarial gap: spurious rate under the training extractor `{trained}` minus the rate under "
             "each held-out classifier, per seed (mean ± seed std).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for r in trows:
        if r["row"] == "images":
            lines.append("| " + " | ".join([_row_label(r), *[_fmt(r["stats"].get(m)) for m in keys]]) + " |")
    return lines


DISTRIBUTION_NAMES = {"similarity": "similarity", "kid": "KID", "diversity": "diversity"}


def _distribution_lines(trows: list[dict]) -> list[str]:
    """Per classifier, each row's similarity, KID to the references and diversity (mean ± seed std), where
    the runs measured them."""
    keys = sorted({m for r in trows for m in r["stats"] if m.split("/", 1)[0] in DISTRIBUTION_METRICS})
    keys.sort(key=lambda m: DISTRIBUTION_METRICS.index(m.split("/", 1)[0]))
    if not keys:
        return []
    head = ["row", *[f"{DISTRIBUTION_NAMES[m.split('/', 1)[0]]} {m.split('/', 1)[1]}" for m in keys]]
    lines = ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in trows:
        lines.append("| " + " | ".join([_row_label(r), *[_fmt(r["stats"].get(m)) for m in keys]]) + " |")
    return lines


def _memorisation_lines(trows: list[dict]) -> list[str]:
    """Each row's nearest-reference PSNR (dB; median and largest over its images, mean ± seed std): a generated
    set far closer to the references than the references are to each other suggests copying."""
    keys = ("memorisation_psnr_median", "memorisation_psnr_max")
    if not any(k in r["stats"] for r in trows for k in keys):
        return []
    lines = ["", "Memorisation: PSNR (dB) of each image to its nearest reference (the reference row: to its nearest "
             "other reference, the yardstick).", "", "| row | median PSNR | largest PSNR |", "|---|---|---|"]  # fmt: skip
    for r in trows:
        lines.append("| " + " | ".join([_row_label(r), *[_fmt(r["stats"].get(k)) for k in keys]]) + " |")
    return lines


def _wilson(p: dict | None) -> str:
    """A pooled value with its 95% interval: a rate (Wilson) or a similarity (normal, the mean's)."""
    return "–" if not p else f"{p.get('rate', p.get('mean')):.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]"


def _difference(e: dict) -> str:
    if e["difference"] is None:
        return "–"
    spread = "–" if e["spread"] is None else f"{e['spread']:.3f}"
    return f"{e['difference']:+.3f} / {spread}"


def _effect_lines(trows: list[dict]) -> list[str]:
    """The effect-shown rule (spurgen/report/effects.py) per lambda_sfsl > 0 and classifier, for the spurious
    rate (with both rows' pooled 95% Wilson intervals) and the similarity; every line, shown or not."""
    found = table_effects(trows)
    if not found:
        return []
    head = ["lambda_sfsl", "classifier", "rate pooled 95% Wilson: λ=0 → λ", "rate diff / spread", "rate effect",
            "similarity pooled 95%: λ=0 → λ", "similarity diff / spread", "similarity effect"]  # fmt: skip
    lines = ["", "Effect of lambda_sfsl against lambda_sfsl = 0 (diff: mean difference; spread: pooled seed "
             "spread):", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    pairs = {(e["lambda_sfsl"], e["classifier"]): {} for e in found}
    for e in found:
        pairs[(e["lambda_sfsl"], e["classifier"])][e["metric"]] = e
    for (lam, c), by in pairs.items():
        rate, sim = by["spurious_rate"], by["similarity"]
        cells = [f"{lam:g}", c, f"{_wilson(rate['pooled_0'])} → {_wilson(rate['pooled'])}", _difference(rate),
                 rate["verdict"], f"{_wilson(sim['pooled_0'])} → {_wilson(sim['pooled'])}", _difference(sim),
                 sim["verdict"]]  # fmt: skip
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
        "Similarity: cos(phi(x), m) averaged over the classifiers in the first table, per classifier in the "
        "second, beside KID to the references (unbiased MMD² of the classifier's features, kernel "
        "(x·y/d + 1)³, all images against all references) and diversity (mean pairwise 1 − cosine of the "
        "features within a set; the reference row's is the yardstick).",
        "",
        RULE,
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
            measures = figures.get(f"measures:{table_id(table)}")
            if measures:
                lines += [
                    f"![similarity, KID and diversity vs lambda_sfsl]({measures.relative_to(out_dir)})",
                    "",
                ]
    lines += cost_lines(sweep, rows, figures, out_dir)  # rates against the cost of N images (run.json `cost`)
    lines += ["## Missing or failed runs", ""]
    lines += [f"- `{where}`: {why}" for where, why in sweep.problems] or ["None."]
    if sweep.conflicts:
        lines += ["", "## Repeated runs (one seed counts once)", ""]
        lines += [f"- {c}" for c in sweep.conflicts]
    return "\n".join(lines) + "\n"
