"""The sweep report: every run's eval/metrics.json and .hydra/config.yaml -> report.md, report.csv, figures.

One table per (method version, class, run identity): the class is its ImageNet index, class file and
component; the identity (spurgen/identity.py) is the resolved config less seed, lambda_sfsl, the target, paths,
logging and keys that cannot change results. Rows are lambda_sfsl, plus a reference and a baseline row, each
with an identity of its own; numbers are the mean over seeds with the seed-to-seed standard deviation and the
number of seeds. Runs of different identities are never counted as seeds of one another: each table names the
config keys in which its runs differ from the other tables. Two runs that should agree (the same row, identity
and seed) but do not are listed, never dropped silently; so are runs that failed or that the sweep planned but
never started. Runs of one identity that started from different base weights (metrics.json "model_weights")
are split into tables of their own.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spurgen.errors import SpurgenError

SETS = ("reference", "baseline", "images")  # row order within a table
VALUE_CHARS = 60  # a config value longer than this is cut in the table headings


@dataclass
class Run:
    folder: Path
    class_name: str
    class_key: tuple[int, str, int]  # (ImageNet index, class file or "", component or -1)
    lambda_sfsl: float
    seed: int
    method_version: str
    tiny: bool
    identity: str  # the run identity (spurgen/identity.py)
    row_identity: dict[str, str]  # set -> identity of that row: images (= identity), baseline, reference
    config: dict[str, Any]  # the flattened config the identity hashes (for the differences between tables)
    results: dict  # metrics.json "results": set -> numbers
    sets: dict  # metrics.json "sets": set -> {folder, num_images}
    extractor: dict | None = None  # metrics.json "extractor": what trained the SFSL (run.json's record)
    marks: dict = field(default_factory=dict)  # metrics.json "model_marks": what the model preset declares
    weights: str | None = None  # metrics.json "model_weights": the base weights by content (None: older runs)

    @property
    def table(self) -> tuple:
        return (self.method_version, self.class_key, self.identity)


@dataclass
class Sweep:
    root: Path
    runs: list[Run] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (run folder or planned overrides, why)
    conflicts: list[str] = field(default_factory=list)  # runs that should agree but do not


def _load_yaml(path: Path):
    with open(path) as f:
        return yaml.safe_load(f)


def _read_run(folder: Path) -> Run:
    """One run, or raises ValueError saying what is wrong with it."""
    from omegaconf import OmegaConf

    from spurgen import identity as ident

    cfg = OmegaConf.create(_load_yaml(folder / ".hydra" / "config.yaml") or {})
    metrics_file = folder / "eval" / "metrics.json"
    if not metrics_file.exists():
        raise ValueError(f"no eval/metrics.json ({_last_error(folder)})")
    try:
        metrics = json.loads(metrics_file.read_text())
        target = metrics["target"]
        index, file, component = ident.class_key(cfg)
        component = component if component is not None else target.get("component")
        run_id = ident.run_identity(cfg)
        return Run(
            folder,
            str(OmegaConf.select(cfg, "target.name", default=None) or target["name"]),
            (
                int(target["index"]) if index is None else index,
                file or "",
                -1 if component is None else component,
            ),
            float(cfg["lambda_sfsl"]),
            int(cfg["seed"]),
            str(metrics.get("method_version", "unknown")),
            bool(metrics.get("model_is_tiny_random")),
            run_id,
            {
                "images": run_id,
                "baseline": ident.baseline_identity(cfg),
                "reference": ident.reference_identity(cfg),
            },
            ident.flat_config(cfg),
            metrics["results"],
            metrics.get("sets") or {},
            metrics.get("extractor"),
            metrics.get("model_marks") or {},
            metrics.get("model_weights"),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"unreadable eval/metrics.json or config ({type(exc).__name__}: {exc})") from None


def _last_error(folder: Path) -> str:
    log = folder / "run.log"
    if log.exists():
        lines = [ln for ln in log.read_text(errors="ignore").splitlines() if "error" in ln.lower()]
        if lines:
            return "run.log: " + lines[-1].strip()[:200]
    return "the run failed or has not finished"


def _planned(root: Path) -> list[frozenset[str]] | None:
    """Each job's task overrides as the sweep planned them (multirun.yaml), or None if unknown."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        hydra_cfg = (_load_yaml(root / "multirun.yaml") or {})["hydra"]
        params = [f"{k}={v}" for k, v in ((hydra_cfg.get("sweeper") or {}).get("params") or {}).items()]
        parsed = OverridesParser.create().parse_overrides(params + list(hydra_cfg["overrides"]["task"]))
        return [frozenset(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception:  # noqa: BLE001 - an unknown sweep plan only means missing runs cannot be listed
        return None


def collect(root: str | Path) -> Sweep:
    """Read every run under a sweep folder (any depth: a folder with .hydra/config.yaml is a run)."""
    from spurgen.config import register_resolvers

    register_resolvers()  # saved configs hold ${spurgen_eq:...} and the like
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SpurgenError(f"sweep folder {root} does not exist")
    folders = sorted(p.parent.parent for p in root.rglob(".hydra/config.yaml") if p.parent.parent != root)
    if not folders:
        raise SpurgenError(
            f"{root} holds no runs (no sub-folder with .hydra/config.yaml): is it a sweep folder?"
        )
    sweep = Sweep(root)
    seen: set[frozenset[str]] = set()
    for folder in folders:
        ov = folder / ".hydra" / "overrides.yaml"
        if ov.exists():
            seen.add(frozenset(_load_yaml(ov) or []))
        try:
            sweep.runs.append(_read_run(folder))
        except (ValueError, OSError, yaml.YAMLError) as exc:
            sweep.problems.append((str(folder.relative_to(root)), str(exc)))
    _split_unlike_weights(sweep.runs)
    for job in _planned(root) or []:
        if job not in seen:
            sweep.problems.append(
                (",".join(sorted(job)), "planned by the sweep but never started (no folder)")
            )
    return sweep


def _split_unlike_weights(runs: list[Run]) -> None:
    """Runs of one config identity that started from different base weights (a model folder regenerated or
    replaced between runs: the config, and so the identity, cannot tell) are not seeds of one experiment.
    Where an identity's runs disagree on `weights`, each gets `model.weights` in its config and the weights
    in its identities (images and baseline rows: both depend on the base model), so they fall into separate
    tables that name the difference. Identities whose runs agree are left as they are."""
    seen: dict[str, set[str | None]] = defaultdict(set)
    for r in runs:
        seen[r.identity].add(r.weights)
    for r in runs:
        if len(seen[r.identity]) < 2:
            continue
        tag = f"+{r.weights or 'unrecorded'}"
        r.config = {**r.config, "model.weights": r.weights or "<unrecorded>"}
        r.row_identity = {
            **r.row_identity,
            "images": r.identity + tag,
            "baseline": r.row_identity["baseline"] + tag,
        }
        r.identity += tag


def _stats(values: list[float]) -> dict:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(vals) / len(vals)
    # one seed has no seed-to-seed spread: None, not 0
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return {"mean": mean, "std": std, "n": len(vals)}


def _numbers(block: dict) -> dict[str, float]:
    """The report's numbers of one image set of one run: `spurious_rate/<c>`, `similarity/<c>`, consistency."""
    out = {}
    for c, nums in block["per_classifier"].items():
        out[f"spurious_rate/{c}"] = nums["spurious_rate"]["value"]
        if "similarity" in nums:
            out[f"similarity/{c}"] = nums["similarity"]["value"]
    out["consistency_all"] = block["consistency"]["all"]["value"]
    out["consistency_at_least_half"] = block["consistency"]["at_least_half"]["value"]
    return out


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
            nums = _numbers(r.results[set_name])
            if r.seed not in groups[key]:
                groups[key][r.seed] = (r, nums)
                continue
            first, first_nums = groups[key][r.seed]
            if set_name == "images" or not _same(first_nums, nums):
                sweep.conflicts.append(
                    f"{set_name} of {r.class_name}{_class_suffix(r.class_key)}, seed {r.seed}, identity "
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


def _class_suffix(key: tuple[int, str, int]) -> str:
    index, file, component = key
    return (
        f" ({index}"
        + (f", {file}" if file else "")
        + (f", component {component}" if component >= 0 else "")
        + ")"
    )


def _row(table: tuple, run: Run, set_name: str, lam: float | None, per_seed: dict) -> dict:
    version, class_key, identity = table
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
        "stats": {m: _stats([nums.get(m) for _, nums in per_seed.values()]) for m in metrics},
        "pooled": _pooled(set_name, per_seed),
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
        first = tables[table][0]
        version, class_key, _ = table
        for set_name in ("reference", "baseline"):
            per_seed = groups.get((version, class_key, set_name, first.row_identity[set_name], None))
            if per_seed:
                rows.append(_row(table, first, set_name, None, per_seed))
        for lam in sorted({r.lambda_sfsl for r in tables[table]}):
            per_seed = groups.get((version, class_key, "images", first.identity, lam))
            if per_seed:
                of_lam = next(r for r in tables[table] if r.lambda_sfsl == lam)
                rows.append(_row(table, of_lam, "images", lam, per_seed))
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


def _fmt(s: dict | None) -> str:
    if not s or s["mean"] is None:
        return "–"
    if s["std"] is None:
        return f"{s['mean']:.3f} (n={s['n']})"
    return f"{s['mean']:.3f} ± {s['std']:.3f} (n={s['n']})"


def _row_label(r: dict) -> str:
    return f"lambda_sfsl={r['lambda_sfsl']:g}" if r["row"] == "images" else r["row"]


def table_title(class_name: str, table: tuple) -> str:
    """`hummingbird (94, hummingbird_feeder) · identity 45f5b3897553` (the class file and component where
    known)."""
    return f"{class_name}{_class_suffix(table[1])} · identity {table[2]}"


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
            grid = figures.get(f"grid:{_table_id(table)}")
            lines += ["", f"![reference beside generated]({grid.relative_to(out_dir)})" if grid else "", ""]
    lines += ["## Missing or failed runs", ""]
    lines += [f"- `{where}`: {why}" for where, why in sweep.problems] or ["None."]
    if sweep.conflicts:
        lines += ["", "## Repeated runs (one seed counts once)", ""]
        lines += [f"- {c}" for c in sweep.conflicts]
    return "\n".join(lines) + "\n"


def _table_id(table: tuple) -> str:
    version, (index, file, component), identity = table
    return f"{version}:{index}:{file}:{component}:{identity}"


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


def _figures(sweep: Sweep, rows: list[dict], out: Path) -> dict[str, Path]:
    """The rate-vs-lambda figure of each method version and the image grid of each table."""
    from spurgen.eval.figures import class_grid, rate_vs_lambda

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
        version, (index, _, _), identity = table
        alone = sum(1 for t in tables if t[0] == version and t[1][0] == index) == 1
        name = f"images_{index}_v{version}.png" if alone else f"images_{index}_{identity[:8]}_v{version}.png"
        title = f"{table_title(truns[0].class_name, table)}: reference, baseline, generated"
        grid = class_grid(_grid_rows(truns, sweep.runs), out / "figures" / name, title)
        if grid:
            figures[f"grid:{_table_id(table)}"] = grid
    return figures


def write_report(
    root: str | Path, out_dir: str | Path | None = None, to_wandb: bool = False
) -> dict[str, Path]:
    """Collect, aggregate and write report.md, report.csv and figures/ (into the sweep folder by default)."""
    import csv

    from spurgen.io import output_folder

    sweep = collect(root)
    out = output_folder(out_dir or sweep.root, "--out")  # one line, before any figure is drawn
    rows = aggregate(sweep)
    figures = _figures(sweep, rows, out)
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


def _training_group(root: Path) -> str:
    """The W&B group the sweep's training runs got (spurgen.sweep.sweep_group): <experiment>-<folder>."""
    for hydra_yaml in sorted(root.glob("*/.hydra/hydra.yaml")):
        try:
            choices = (yaml.safe_load(hydra_yaml.read_text()) or {})["hydra"]["runtime"]["choices"]
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            continue
        experiment = choices.get("experiment")
        if experiment and experiment != "null" and experiment not in root.name:
            return f"{experiment}-{root.name}"
        return root.name
    return root.name


def _wandb_project(sweep: Sweep) -> tuple[str, str | None]:
    """The W&B project and entity the sweep's runs logged to (their saved logger config), so that the
    report run sits beside them; spurgen's default project when no run says."""
    for run in sorted(sweep.runs, key=lambda r: str(r.folder)):
        saved = _load_yaml(run.folder / ".hydra" / "config.yaml") or {}
        logger = saved.get("logger") or {}
        if logger.get("project"):
            return str(logger["project"]), logger.get("entity")
    return "spurgen", None


def push_wandb(sweep: Sweep, lines: list[dict], figures: dict[str, Path]) -> None:
    """The table and figures as one W&B run (job_type report) in the sweep's group."""
    import wandb

    from spurgen.loggers import wandb_mode

    project, entity = _wandb_project(sweep)
    run = wandb.init(
        project=project,
        entity=entity,
        group=_training_group(sweep.root),
        job_type="report",
        name=f"report-{sweep.root.name}",
        dir=str(sweep.root),
        mode=wandb_mode("auto"),
        reinit="finish_previous",
    )
    cols = list(lines[0]) if lines else ["metric"]
    # W&B tables need one type per column: a column mixing numbers and text (lambda_sfsl is "" on the
    # reference and baseline rows) becomes text
    mixed = {c for c in cols if len({isinstance(ln[c], str) for ln in lines if ln[c] is not None}) > 1}
    data = [[str(ln[c]) if c in mixed and ln[c] is not None else ln[c] for c in cols] for ln in lines]
    payload = {"report/table": wandb.Table(columns=cols, data=data)}
    payload.update({f"report/{k.replace(':', '_')}": wandb.Image(str(p)) for k, p in figures.items()})
    if sweep.problems:
        payload["report/problems"] = wandb.Table(
            columns=["run", "why"], data=[list(p) for p in sweep.problems]
        )
    run.log(payload)
    run.finish()
