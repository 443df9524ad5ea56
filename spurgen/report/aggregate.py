"""Grouping a sweep's runs into tables: per (method version, class, run identity) a reference row, a baseline
row and one row per lambda_sfsl, each the mean and seed-to-seed spread over seeds; a seed counts once, and
runs that should agree but do not are listed (Sweep.conflicts).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

from spurgen.report.collect import Run, Sweep
from spurgen.report.titles import class_suffix

SETS = ("reference", "baseline", "images")  # row order within a table
DISTRIBUTION_METRICS = ("similarity", "kid", "diversity")  # per classifier, where metrics.json has them
VALUE_CHARS = 60  # a config value longer than this is cut in the table headings


def _stats(values: list[float]) -> dict:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(vals) / len(vals)
    # one seed has no seed-to-seed spread: None, not 0
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return {"mean": mean, "std": std, "n": len(vals)}


def _numbers(block: dict) -> dict[str, float]:
    """The report's numbers of one image set of one run: `spurious_rate/<c>`, and where measured
    `similarity/<c>`, `kid/<c>`, `diversity/<c>` (spurgen/eval/distribution.py); consistency."""
    out = {}
    for c, nums in block["per_classifier"].items():
        out[f"spurious_rate/{c}"] = nums["spurious_rate"]["value"]
        for key in DISTRIBUTION_METRICS:
            if key in nums:
                out[f"{key}/{c}"] = nums[key]["value"]
    out["consistency_all"] = block["consistency"]["all"]["value"]
    out["consistency_at_least_half"] = block["consistency"]["at_least_half"]["value"]
    return out


def _memorisation(memo: dict | None) -> dict[str, float]:
    """The memorisation check's nearest-reference PSNR of one image set (spurgen/eval/memorisation.py):
    `memorisation_psnr_median` and `memorisation_psnr_max` in dB; none for a set without the numbers (a
    single reference, an older run)."""
    psnr = (memo or {}).get("psnr_db")
    if not psnr:
        return {}
    return {"memorisation_psnr_median": psnr["median"], "memorisation_psnr_max": psnr["max"]}


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    def close(x, y) -> bool:
        if x is None or y is None:
            return x is y
        return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)

    return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)


def _first_difference(a: dict[str, float], b: dict[str, float]) -> str:
    for k in sorted(set(a) | set(b)):
        if not _same({k: a.get(k)}, {k: b.get(k)}):
            return f"{k} {a.get(k)} vs {b.get(k)}"
    return ""


def _groups(sweep: Sweep) -> dict[tuple, dict[int, tuple[Run, dict[str, float]]]]:
    """(version, class key, set, row identity, lambda or None) -> {seed: (run, numbers)}. A seed counts once:
    a second run of the same row, identity and seed is kept out, and listed in sweep.conflicts when its
    numbers differ (it should repeat the first)."""
    groups: dict[tuple, dict[int, tuple[Run, dict[str, float]]]] = defaultdict(dict)
    for r in sorted(sweep.runs, key=lambda r: str(r.folder)):
        for set_name in SETS:
            if set_name not in r.results:
                continue
            lam = r.lambda_sfsl if set_name == "images" else None
            key = (r.method_version, r.class_key, set_name, r.row_identity[set_name], lam)
            nums = _numbers(r.results[set_name]) | _memorisation(r.memorisation.get(set_name))
            if r.seed not in groups[key]:
                groups[key][r.seed] = (r, nums)
                continue
            first, first_nums = groups[key][r.seed]
            if set_name == "images" or not _same(first_nums, nums):
                sweep.conflicts.append(
                    f"{set_name} of {r.class_name}{class_suffix(r.class_key)}, seed {r.seed}, identity "
                    f"{r.row_identity[set_name]}: `{_rel(sweep, r)}` repeats `{_rel(sweep, first)}`"
                    + (
                        f" with other numbers ({_first_difference(first_nums, nums)})"
                        if nums != first_nums
                        else ""
                    )
                    + f"; the numbers of `{_rel(sweep, first)}` are used."
                )
    return groups


def _rel(sweep: Sweep, r: Run) -> str:
    try:
        return str(r.folder.relative_to(sweep.root))
    except ValueError:
        return str(r.folder)


def _gaps(nums: dict[str, float], trained: str | None) -> dict[str, float]:
    """The adversarial gap of one run (METHOD.md's transfer question): the training extractor's spurious rate
    minus each held-out classifier's, `adversarial_gap/<held-out>`; none when the extractor is not among the
    evaluated classifiers."""
    own = nums.get(f"spurious_rate/{trained}") if trained else None
    if own is None:
        return {}
    return {
        f"adversarial_gap/{m.split('/', 1)[1]}": own - v
        for m, v in nums.items()
        if m.startswith("spurious_rate/") and m != f"spurious_rate/{trained}" and v is not None
    }


def trained_extractor(runs: list[Run]) -> str | None:
    """The classifier name of the extractor that trained the SFSL in a table's runs (those with
    lambda_sfsl > 0 record it as used); a table's lambda_sfsl = 0 runs are read under the same name."""
    return next((r.extractor["name"] for r in runs if r.extractor and r.extractor.get("used")), None)


def _row(
    table: tuple, run: Run, set_name: str, lam: float | None, per_seed: dict, trained: str | None = None
) -> dict:
    version, class_key, identity = table
    if set_name == "images" and trained:  # per seed, so the gap's spread is the seeds' spread
        per_seed = {s: (r, nums | _gaps(nums, trained)) for s, (r, nums) in per_seed.items()}
    metrics = sorted({m for _, nums in per_seed.values() for m in nums})
    return {
        "method_version": version,
        "table": table,
        "class_index": class_key[0],
        "class_name": run.class_name,
        "class_file": class_key[1],
        "component": None if class_key[2] < 0 else class_key[2],
        "identity": identity,
        "row": set_name,
        "row_identity": run.row_identity[set_name],
        "lambda_sfsl": lam,
        "seeds": sorted(per_seed),
        "extractor": run.extractor if set_name == "images" else None,
        "trained_extractor": trained if set_name == "images" else None,
        "stats": {m: _stats([nums.get(m) for _, nums in per_seed.values()]) for m in metrics},
        "pooled": _pooled(set_name, per_seed),
        "pooled_similarity": _pooled_similarity(set_name, per_seed),
    }


def _pooled(set_name: str, per_seed: dict) -> dict[str, dict]:
    """Per classifier: the spurious rate of all seeds' images pooled, with its 95% Wilson interval (the
    interval of the images; the seed-to-seed std is the spread of the training runs)."""
    from spurgen.eval.metrics import wilson_interval

    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for run, _ in per_seed.values():
        for c, nums in run.results[set_name]["per_classifier"].items():
            rate = nums["spurious_rate"]
            if "n" not in rate:  # a hand-made or foreign metrics.json: no image counts to pool
                continue
            n = int(rate["n"])
            counts[c][0] += int(rate.get("count", round(rate["value"] * n)))
            counts[c][1] += n
    return {
        c: {"rate": k / n, "ci": list(wilson_interval(k, n)), "count": k, "n": n}
        for c, (k, n) in counts.items()
        if n
    }


def _pooled_similarity(set_name: str, per_seed: dict) -> dict[str, dict]:
    """Per classifier: the similarity cos(phi(x), m) of all seeds' images pooled, the mean over every image with
    its 95% normal interval mean ± 1.96 sqrt(v / N), v the variance of all N images' cosines, made from each
    run's mean, std and count: v = (sum (n_i - 1) s_i² + sum n_i (m_i - m)²) / (N - 1). Like the rates' Wilson
    interval, it is the interval of the images; the seed-to-seed std is the spread of the training runs."""
    parts: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for run, _ in per_seed.values():
        for c, nums in run.results[set_name]["per_classifier"].items():
            sim = nums.get("similarity") or {}
            if sim.get("std") is not None and sim.get("n"):
                parts[c].append((float(sim["value"]), float(sim["std"]), int(sim["n"])))
    out = {}
    for c, runs in parts.items():
        total = sum(n for _, _, n in runs)
        if total < 2:
            continue
        mean = sum(m * n for m, _, n in runs) / total
        within = sum((n - 1) * sd**2 for _, sd, n in runs)
        between = sum(n * (m - mean) ** 2 for m, _, n in runs)
        half = 1.959964 * math.sqrt((within + between) / (total - 1) / total)
        out[c] = {"mean": mean, "ci": [mean - half, mean + half], "n": total}
    return out


def aggregate(sweep: Sweep) -> list[dict]:
    """Rows in report order: per table (version, class, identity) a reference row, a baseline row and one row
    per lambda_sfsl. Reference and baseline rows are shared by every table whose runs have their identity
    (they do not depend on lambda_sfsl, nor on the training settings)."""
    groups = _groups(sweep)
    tables: dict[tuple, list[Run]] = defaultdict(list)
    for r in sweep.runs:
        tables[r.table].append(r)
    rows = []
    for table in sorted(tables):
        first, trained = tables[table][0], trained_extractor(tables[table])
        version, class_key, _ = table
        for set_name in ("reference", "baseline"):
            per_seed = groups.get((version, class_key, set_name, first.row_identity[set_name], None))
            if per_seed:
                rows.append(_row(table, first, set_name, None, per_seed))
        for lam in sorted({r.lambda_sfsl for r in tables[table]}):
            per_seed = groups.get((version, class_key, "images", first.identity, lam))
            if per_seed:
                of_lam = next(r for r in tables[table] if r.lambda_sfsl == lam)
                rows.append(_row(table, of_lam, "images", lam, per_seed, trained))
    return rows


def table_differences(sweep: Sweep) -> dict[tuple, list[str]]:
    """Per table, `key=value` for each config key whose value is not the same in every table of its method
    version (a diff of the flattened configs the identities hash)."""
    configs: dict[tuple, dict[str, Any]] = {}
    for r in sorted(sweep.runs, key=lambda r: str(r.folder)):
        configs.setdefault(r.table, r.config)
    out: dict[tuple, list[str]] = {}
    for version in {t[0] for t in configs}:
        mine = {t: c for t, c in configs.items() if t[0] == version}
        keys = sorted({k for c in mine.values() for k in c})
        varying = [
            k for k in keys if len({json.dumps(c.get(k, "<unset>"), default=str) for c in mine.values()}) > 1
        ]
        for t, c in mine.items():
            out[t] = [f"{k}={_short(c.get(k, '<unset>'))}" for k in varying]
    return out


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"
