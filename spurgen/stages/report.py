"""The sweep report: every run's eval/metrics.json and .hydra/config.yaml -> report.md, report.csv, figures.

Rows are class x lambda_sfsl, plus a reference row and a baseline row per class; numbers are the mean over the
runs (seeds) with the seed-to-seed standard deviation and the number of seeds. Runs with different method
versions are never averaged together (a section each). Runs that failed, or that the sweep planned but never
started, are listed, never dropped silently.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from spurgen.errors import SpurgenError

SETS = ("reference", "baseline", "images")  # row order within a class


@dataclass
class Run:
    folder: Path
    class_name: str
    class_index: int
    lambda_sfsl: float
    seed: int
    method_version: str
    tiny: bool
    results: dict  # metrics.json "results": set -> numbers
    sets: dict  # metrics.json "sets": set -> {folder, num_images}


@dataclass
class Sweep:
    root: Path
    runs: list[Run] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (run folder or planned overrides, why)


def _load_yaml(path: Path):
    with open(path) as f:
        return yaml.safe_load(f)


def _read_run(folder: Path) -> Run:
    """One run, or raises ValueError saying what is wrong with it."""
    cfg = _load_yaml(folder / ".hydra" / "config.yaml") or {}
    metrics_file = folder / "eval" / "metrics.json"
    if not metrics_file.exists():
        raise ValueError(f"no eval/metrics.json ({_last_error(folder)})")
    try:
        metrics = json.loads(metrics_file.read_text())
        target = cfg["target"]
        return Run(
            folder,
            str(target.get("name") or metrics["target"]["name"]),
            int(metrics["target"]["index"]),
            float(cfg["lambda_sfsl"]),
            int(cfg["seed"]),
            str(metrics.get("method_version", "unknown")),
            bool(metrics.get("model_is_tiny_random")),
            metrics["results"],
            metrics.get("sets") or {},
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
    for job in _planned(root) or []:
        if job not in seen:
            sweep.problems.append(
                (",".join(sorted(job)), "planned by the sweep but never started (no folder)")
            )
    return sweep


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


def aggregate(runs: list[Run]) -> list[dict]:
    """Rows (method_version, class, row kind, lambda) with {metric: stats}, in report order. Reference and
    baseline numbers come once per seed (they do not depend on lambda_sfsl)."""
    groups: dict[tuple, dict[int | tuple, dict[str, float]]] = defaultdict(dict)
    for r in runs:
        for set_name in SETS:
            if set_name not in r.results:
                continue
            lam = r.lambda_sfsl if set_name == "images" else None
            key = (r.method_version, r.class_index, r.class_name, set_name, lam)
            # one entry per seed for reference/baseline; per run for the fine-tuned rows
            entry = r.seed if set_name != "images" else (r.seed, str(r.folder))
            groups[key].setdefault(entry, _numbers(r.results[set_name]))
    rows = []
    order = sorted(groups, key=lambda k: (k[0], k[1], SETS.index(k[3]), -1 if k[4] is None else k[4]))
    for key in order:
        per_seed = list(groups[key].values())
        metrics = sorted({m for nums in per_seed for m in nums})
        seeds = sorted({e if isinstance(e, int) else e[0] for e in groups[key]})
        version, index, name, set_name, lam = key
        rows.append(
            {
                "method_version": version,
                "class_index": index,
                "class_name": name,
                "row": set_name,
                "lambda_sfsl": lam,
                "seeds": seeds,
                "stats": {m: _stats([nums.get(m) for nums in per_seed]) for m in metrics},
            }
        )
    return rows


def _fmt(s: dict | None) -> str:
    if not s or s["mean"] is None:
        return "–"
    if s["std"] is None:
        return f"{s['mean']:.3f} (n={s['n']})"
    return f"{s['mean']:.3f} ± {s['std']:.3f} (n={s['n']})"


def _row_label(r: dict) -> str:
    return f"lambda_sfsl={r['lambda_sfsl']:g}" if r["row"] == "images" else r["row"]


def csv_lines(rows: list[dict]) -> list[dict]:
    """Long form: one line per row and metric."""
    out = []
    for r in rows:
        for metric, s in r["stats"].items():
            out.append(
                {
                    "method_version": r["method_version"],
                    "class_index": r["class_index"],
                    "class_name": r["class_name"],
                    "row": r["row"],
                    "lambda_sfsl": "" if r["lambda_sfsl"] is None else r["lambda_sfsl"],
                    "metric": metric,
                    "mean": s["mean"],
                    "std": s["std"],
                    "n_seeds": s["n"],
                    "seeds": " ".join(map(str, r["seeds"])),
                }
            )
    return out


def markdown(sweep: Sweep, rows: list[dict], figures: dict[str, Path], out_dir: Path) -> str:
    versions = sorted({r["method_version"] for r in rows})
    lines = [f"# spurgen sweep report: {sweep.root}", ""]
    if any(r.tiny for r in sweep.runs):
        lines += [
            "> **TINY RANDOM MODELS** in some runs: these numbers check the plumbing and mean nothing.",
            "",
        ]
    lines += [
        f"{len(sweep.runs)} runs read, {len(sweep.problems)} missing or failed. Cells: mean ± seed-to-seed "
        "std (n = seeds). Reference and baseline rows do not depend on lambda_sfsl (one value per seed). "
        "Similarity: cos(phi(x), m) averaged over the classifiers (per classifier in report.csv).",
        "",
    ]
    if len(versions) > 1:
        lines += [
            f"> **Method versions differ** ({', '.join(versions)}): each has its own section; they are "
            "never averaged together.",
            "",
        ]
    for version in versions:
        vrows = [r for r in rows if r["method_version"] == version]
        lines += [f"## Method version {version}", ""]
        fig = figures.get(f"rate:{version}")
        if fig:
            lines += [f"![spurious rate vs lambda_sfsl]({fig.relative_to(out_dir)})", ""]
        for index, name in sorted({(r["class_index"], r["class_name"]) for r in vrows}):
            crows = [r for r in vrows if r["class_index"] == index]
            classifiers = sorted(
                {m.split("/", 1)[1] for r in crows for m in r["stats"] if m.startswith("spurious_rate/")}
            )
            head = [
                "row",
                *[f"spurious rate {c}" for c in classifiers],
                "consistency all",
                "consistency ≥ half",
                "similarity",
            ]
            lines += [f"### {name} ({index})", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for r in crows:
                sims = [
                    s["mean"]
                    for m, s in r["stats"].items()
                    if m.startswith("similarity/") and s["mean"] is not None
                ]
                sim = f"{sum(sims) / len(sims):.3f}" if sims else "–"
                cells = [
                    _row_label(r),
                    *[_fmt(r["stats"].get(f"spurious_rate/{c}")) for c in classifiers],
                    _fmt(r["stats"].get("consistency_all")),
                    _fmt(r["stats"].get("consistency_at_least_half")),
                    sim,
                ]
                lines.append("| " + " | ".join(cells) + " |")
            grid = figures.get(f"grid:{version}:{index}")
            lines += ["", f"![reference beside generated]({grid.relative_to(out_dir)})" if grid else "", ""]
    lines += ["## Missing or failed runs", ""]
    lines += [f"- `{where}`: {why}" for where, why in sweep.problems] or ["None."]
    return "\n".join(lines) + "\n"


def _grid_rows(runs: list[Run]) -> list[tuple[str, list[Path]]]:
    """Reference, baseline and one generated row per lambda_sfsl (the lowest seed's run) for one class."""
    from spurgen.stages.report_figures import _images

    runs = sorted(runs, key=lambda r: (r.seed, r.lambda_sfsl))
    ref = next((Path(r.sets["reference"]["folder"]) for r in runs if "reference" in r.sets), None)
    base = next((Path(r.sets["baseline"]["folder"]) for r in runs if "baseline" in r.sets), None)
    out = [("reference", _images(ref)), ("baseline", _images(base))]
    for lam in sorted({r.lambda_sfsl for r in runs}):
        first = next(r for r in runs if r.lambda_sfsl == lam)
        out.append((f"lambda_sfsl={lam:g}\nseed {first.seed}", _images(first.folder / "generated")))
    return out


def write_report(
    root: str | Path, out_dir: str | Path | None = None, to_wandb: bool = False
) -> dict[str, Path]:
    """Collect, aggregate and write report.md, report.csv and figures/ (into the sweep folder by default)."""
    import csv

    from spurgen.stages.report_figures import class_grid, rate_vs_lambda

    sweep = collect(root)
    out = Path(out_dir).expanduser() if out_dir else sweep.root
    rows = aggregate(sweep.runs)
    figures: dict[str, Path] = {}
    for version in sorted({r.method_version for r in sweep.runs}):
        vrows = [r for r in rows if r["method_version"] == version]
        fig = rate_vs_lambda(
            vrows,
            out / "figures" / f"spurious_rate_vs_lambda_v{version}.png",
            f"{sweep.root.name}: spurious rate vs lambda_sfsl (method version {version})",
        )
        if fig:
            figures[f"rate:{version}"] = fig
        for index in sorted({r.class_index for r in sweep.runs if r.method_version == version}):
            cruns = [r for r in sweep.runs if r.method_version == version and r.class_index == index]
            grid = class_grid(
                _grid_rows(cruns),
                out / "figures" / f"images_{index}_v{version}.png",
                f"{cruns[0].class_name} ({index}): reference, baseline, generated",
            )
            if grid:
                figures[f"grid:{version}:{index}"] = grid
    out.mkdir(parents=True, exist_ok=True)
    lines = csv_lines(rows)
    with open(out / "report.csv", "w", newline="") as f:
        fields = [
            "method_version",
            "class_index",
            "class_name",
            "row",
            "lambda_sfsl",
            "metric",
            "mean",
            "std",
            "n_seeds",
            "seeds",
        ]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(lines)
    (out / "report.md").write_text(markdown(sweep, rows, figures, out))
    paths = {"report.md": out / "report.md", "report.csv": out / "report.csv", **figures}
    if to_wandb:
        push_wandb(sweep, lines, figures)
    return paths


def _training_group(root: Path) -> str:
    """The W&B group the sweep's training runs got (spurgen.sweep.sweep_group): <experiment>-<folder>."""
    import yaml

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


def push_wandb(sweep: Sweep, lines: list[dict], figures: dict[str, Path]) -> None:
    """The table and figures as one W&B run (job_type report) in the sweep's group."""
    import wandb

    from spurgen.loggers import wandb_mode

    run = wandb.init(
        project="spurgen",
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
