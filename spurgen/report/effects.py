"""The report's "effect shown" rule: does lambda_sfsl > 0 raise a number above plain DreamBooth (lambda_sfsl = 0)
by more than the runs' own seed-to-seed noise?

Per table (class and run identity: rows of different identities are never compared), per classifier, per
lambda_sfsl > 0 row, for the spurious rate and the similarity cos(phi(x), m) (METHOD.md, 'Evaluation'):

    difference     d   = mean_lambda - mean_0             (each the mean over that row's seeds)
    pooled spread  s_p = sqrt((s_0² + s_lambda²) / 2)     (s: each row's seed-to-seed standard deviation, n - 1)
    shown          when d > s_p
    not shown      when d <= s_p (a fall included)
    n/a (one seed) when either row has a single seed: it has no spread to compare with

The rule is one-sided (the SFSL is meant to raise both numbers) and a screen, not a significance test. Every
(table, classifier, lambda_sfsl) is listed, shown or not. Beside the spurious rate stand the pooled 95% Wilson
intervals of both rows (aggregate.py: every seed's images pooled).
"""

from __future__ import annotations

import math

EFFECT_METRICS = ("spurious_rate", "similarity")
SHOWN, NOT_SHOWN, ONE_SEED = "shown", "not shown", "n/a (one seed)"
NO_BASE, NOT_MEASURED = "n/a (no lambda_sfsl = 0 row)", "n/a (not measured)"
RULE = (
    "An effect counts as **shown** when the lambda_sfsl > 0 row's mean exceeds the lambda_sfsl = 0 row's mean "
    "(same table) by more than the pooled seed spread sqrt((s0² + s1²) / 2), s0 and s1 being the two rows' "
    "seed-to-seed standard deviations; **not shown** otherwise (a fall included); **n/a (one seed)** where a "
    "row has one seed. Rates come with the pooled 95% Wilson interval of each row (all seeds' images), similarities with the "
    "pooled 95% normal interval of the mean over all seeds' images."
)


POOLED = {
    "spurious_rate": "pooled",
    "similarity": "pooled_similarity",
}  # the row key of each metric's pooled interval


def pooled_spread(s0: float | None, s1: float | None) -> float | None:
    """sqrt((s0² + s1²) / 2), or None when either row has no seed-to-seed spread (one seed)."""
    if s0 is None or s1 is None:
        return None
    return math.sqrt((s0 * s0 + s1 * s1) / 2.0)


def judge(base: dict | None, row: dict | None) -> dict:
    """{difference, spread, verdict} of one metric: `base` and `row` are aggregate.py stats {mean, std, n} of
    the lambda_sfsl = 0 row and of a lambda_sfsl > 0 row (None: that row lacks the metric)."""
    if base is None or row is None or base["mean"] is None or row["mean"] is None:
        return {"difference": None, "spread": None, "verdict": NOT_MEASURED}
    difference = row["mean"] - base["mean"]
    spread = pooled_spread(base["std"], row["std"])
    if spread is None:
        return {"difference": difference, "spread": None, "verdict": ONE_SEED}
    return {
        "difference": difference,
        "spread": spread,
        "verdict": SHOWN if difference > spread else NOT_SHOWN,
    }


def _classifiers(trows: list[dict]) -> list[str]:
    return sorted({m.split("/", 1)[1] for r in trows for m in r["stats"] if m.startswith("spurious_rate/")})


def _effect(base: dict | None, r: dict, classifier: str, metric: str) -> dict:
    """One line: the lambda_sfsl row r against base (the table's lambda_sfsl = 0 row, or None)."""
    key = f"{metric}/{classifier}"
    stats, base_stats = r["stats"].get(key), (base or {}).get("stats", {}).get(key)
    out = {
        "lambda_sfsl": r["lambda_sfsl"],
        "classifier": classifier,
        "metric": metric,
        "mean_0": base_stats["mean"] if base_stats else None,
        "n_seeds_0": base_stats["n"] if base_stats else 0,
        "mean": stats["mean"] if stats else None,
        "n_seeds": stats["n"] if stats else 0,
        **judge(base_stats, stats),
        "pooled_0": (base or {}).get(POOLED[metric], {}).get(classifier),
        "pooled": r.get(POOLED[metric], {}).get(classifier),
    }
    if base is None:
        out["verdict"] = NO_BASE
    return out


def table_effects(trows: list[dict]) -> list[dict]:
    """Every (lambda_sfsl > 0, classifier, metric) of one table's rows (aggregate.py), in that order."""
    images = [r for r in trows if r["row"] == "images"]
    base = next((r for r in images if r["lambda_sfsl"] == 0), None)
    return [
        _effect(base, r, c, metric)
        for r in images
        if r["lambda_sfsl"] > 0
        for c in _classifiers(trows)
        for metric in EFFECT_METRICS
    ]


def effects(rows: list[dict]) -> list[dict]:
    """table_effects of every table, each line with its table's class and identity columns (for effects.csv)."""
    out = []
    for table in sorted({r["table"] for r in rows}):
        trows = [r for r in rows if r["table"] == table]
        first = trows[0]
        head = {
            k: first[k] for k in ("method_version", "class_index", "class_name", "class_file", "identity")
        }
        head["component"] = "" if first["component"] is None else first["component"]
        out += [{**head, **e} for e in table_effects(trows)]
    return out
