"""The report's figures: the rate-vs-lambda figure of each method version and the image grid of each table
(drawn by spurgen/eval/figures.py)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from spurgen.report.collect import Run, Sweep
from spurgen.report.titles import table_id, table_title


def _grid_rows(table_runs: list[Run], all_runs: list[Run]) -> list[tuple[str, list[Path]]]:
    """Reference, baseline and one generated row per lambda_sfsl (the lowest seed's run) for one table; the
    reference and baseline images may come from another table's runs of the same row identity."""
    from spurgen.eval.figures import images_of as _images

    first = table_runs[0]
    out = []
    for set_name in ("reference", "baseline"):
        same = [
            r
            for r in sorted(all_runs, key=lambda r: (r.seed, str(r.folder)))
            if r.method_version == first.method_version
            and r.class_key == first.class_key
            and r.row_identity[set_name] == first.row_identity[set_name]
            and set_name in r.sets
        ]
        out.append((set_name, _images(Path(same[0].sets[set_name]["folder"]) if same else None)))
    runs = sorted(table_runs, key=lambda r: (r.seed, r.lambda_sfsl, str(r.folder)))
    for lam in sorted({r.lambda_sfsl for r in runs}):
        pick = next(r for r in runs if r.lambda_sfsl == lam)
        out.append((f"lambda_sfsl={lam:g}\nseed {pick.seed}", _images(pick.folder / "generated")))
    return out


def _stem(table: tuple, tables: list[tuple]) -> str:
    """A table's figure name: its class index, then, only where another table of its method version shares
    the index, its class file and component (two pairs of one class) and its identity (two settings)."""
    version, key, identity = table
    index, file, component = key
    same_index = [t for t in tables if t[0] == version and t[1][0] == index]
    if len(same_index) == 1:
        return f"{index}_v{version}"
    name = f"{index}"
    if len({t[1] for t in same_index}) > 1:
        name += (f"_{file}" if file else "") + (f"_c{component}" if component >= 0 else "")
    if sum(1 for t in same_index if t[1] == key) > 1:
        name += f"_{identity[:8]}"
    return f"{name}_v{version}"


def figures(sweep: Sweep, rows: list[dict], out: Path) -> dict[str, Path]:
    """The rate-vs-lambda figure of each method version; per table its image grid and its similarity, KID and
    diversity against lambda_sfsl."""
    from spurgen.eval.figures import class_grid, measures_vs_lambda, rate_vs_lambda

    figures: dict[str, Path] = {}
    tables: dict[tuple, list[Run]] = defaultdict(list)
    for r in sweep.runs:
        tables[r.table].append(r)
    for version in sorted({r.method_version for r in sweep.runs}):
        fig = rate_vs_lambda(
            [r for r in rows if r["method_version"] == version],
            out / "figures" / f"spurious_rate_vs_lambda_v{version}.png",
            f"{sweep.root.name}: spurious rate vs lambda_sfsl (method version {version})",
        )
        if fig:
            figures[f"rate:{version}"] = fig
    for table, truns in sorted(tables.items()):
        stem = _stem(table, list(tables))
        name = f"images_{stem}.png"
        title = f"{table_title(truns[0].class_name, table)}: reference, baseline, generated"
        grid = class_grid(_grid_rows(truns, sweep.runs), out / "figures" / name, title)
        if grid:
            figures[f"grid:{table_id(table)}"] = grid
        title = f"{table_title(truns[0].class_name, table)}: similarity, KID, diversity"
        measures = measures_vs_lambda(
            [r for r in rows if r["table"] == table], out / "figures" / f"measures_{stem}.png", title
        )
        if measures:
            figures[f"measures:{table_id(table)}"] = measures
    return figures
