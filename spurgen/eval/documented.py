"""The documented several-seed figures of a setting, printed beside one run's own table.

One seed of a mini run moves a lot (docs/mini_world.md, "Evidence per pair"), so a run whose setting the docs
measured over several seeds prints those figures under its own table: the mean, the smallest and the largest
value over the seeds, per classifier, for the generated images and the baseline.

The figures ship in spurgen/assets/mini/seed_figures.json, written by experiments/seed_figures.py from a sweep's
run folders. An entry holds one (method version, class file, run identity, lambda_sfsl): a run sees the
figures only when all four are its own, so a number from other settings is never shown beside its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIGURES = "mini/seed_figures.json"  # under spurgen/assets
METRICS = ("spurious_rate", "similarity")


def figures_path() -> Path:
    from spurgen.config import asset_path

    return Path(asset_path(FIGURES))


def find_entry(
    method_version: str, class_file: str | None, identity: str, lambda_sfsl: float, path: Path | None = None
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the file's header, the entry) for this setting, or None when the figures do not cover it."""
    path = figures_path() if path is None else path
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    for entry in doc.get("entries", []):
        if (
            str(entry["method_version"]) == str(method_version)
            and entry["class_file"] == class_file
            and entry["identity"] == identity
            and float(entry["lambda_sfsl"]) == float(lambda_sfsl)
        ):
            return {k: v for k, v in doc.items() if k != "entries"}, entry
    return None


def _cell(stats: dict | None, digits: int) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    return f"{stats['mean']:.{digits}f} [{stats['min']:.{digits}f}, {stats['max']:.{digits}f}]"


def seed_table(header: dict[str, Any], entry: dict[str, Any], result: dict) -> str:
    """The documented figures beside this run's: per classifier, this run's rate and similarity of its
    generated images, then the documented mean [min, max] over the seeds, for the generated images and the
    baseline."""
    seeds = entry["seeds"]
    images = (result.get("results") or {}).get("images", {}).get("per_classifier", {})
    head = ["classifier", "this run: rate", "sim", f"{len(seeds)} seeds: rate", "sim", "baseline rate", "sim"]
    rows = [head]
    for c in entry["images"]:
        mine = images.get(c, {})
        rate = mine.get("spurious_rate", {}).get("value")
        sim = (mine.get("similarity") or {}).get("value")
        doc, base = entry["images"][c], (entry.get("baseline") or {}).get(c, {})
        rows.append([
            c,
            "-" if rate is None else f"{rate:.2f}",
            "-" if sim is None else f"{sim:.3f}",
            _cell(doc.get("spurious_rate"), 2), _cell(doc.get("similarity"), 3),
            _cell(base.get("spurious_rate"), 2), _cell(base.get("similarity"), 3),
        ])  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    where = (
        f"{header.get('machine', 'an unnamed machine')}, {header.get('threads', '?')} torch thread(s) per run"
    )
    return "\n".join([
        f"documented figures for this setting ({header.get('source', 'docs')}): mean [min, max] over seeds "
        f"{', '.join(str(s) for s in seeds)}; {where}; two-thread runs are not bitwise reproducible",
        *lines,
    ])  # fmt: skip


def documented_lines(
    method_version: str,
    class_file: str | None,
    identity: str,
    lambda_sfsl: float,
    result: dict,
    path: Path | None = None,
) -> str | None:
    """The table for a run's setting (its identities come from spurgen/identity.py) and its evaluation
    result, or None when no figures cover the setting."""
    found = find_entry(method_version, class_file, identity, lambda_sfsl, path)
    return None if found is None else seed_table(*found, result)
