"""Each method's rates against the cost of making N images (issue 28): per table and lambda_sfsl, the mean over
seeds of run.json's `cost` (spurgen/stages/train.py, spurgen/stages/generate.py) beside the spurious rate of
the classifier that is the run's feature extractor and the mean rate of the held-out classifiers.

    cost(N) = fine-tuning + N · per-image generation         (wall seconds; images through the extractor f)

N = 32 is what a default run makes; N = 1,000 extrapolates the measured per-image cost and is labelled so.
Runs without a cost record (made before it existed) count as missing, never as free.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from spurgen.report.collect import Run, Sweep

SIZES = (32, 1000)  # N images; the second is extrapolated


def _cost(run: Run) -> dict | None:
    path = run.folder / "run.json"
    if not path.is_file():
        return None
    cost = json.loads(path.read_text()).get("cost") or {}
    tune, gen = cost.get("fine_tuning"), cost.get("generation")
    if not tune or not gen or not gen.get("images"):
        return None
    per = gen["per_image"]
    return {
        "tune_seconds": float(tune["seconds"]),
        "tune_passes": int(tune["extractor_forward"]) + int(tune["extractor_backward"]),
        "image_seconds": float(per["seconds"]),
        "image_passes": float(per["extractor_forward"]) + float(per["extractor_backward"]),
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def cost_rows(sweep: Sweep, rows: list[dict]) -> list[dict]:
    """One row per (table, lambda_sfsl) of generated images: the method, the mean cost over the seeds that have
    one, cost(N) for each N in SIZES, and the training extractor's and the held-out classifiers' mean rates."""
    runs: dict[tuple, dict[int, Run]] = defaultdict(dict)
    for r in sorted(sweep.runs, key=lambda r: str(r.folder)):
        if "images" in r.results:
            runs[(r.table, r.lambda_sfsl)].setdefault(r.seed, r)  # a seed counts once
    known = [(r["extractor"] or {}).get("name") for r in rows if r["row"] == "images" and r.get("extractor")]
    default_f = max(set(known) - {None}, key=known.count, default=None)  # the sweep's extractor, by majority
    out = []
    for row in (r for r in rows if r["row"] == "images"):
        seeds = runs.get((row["table"], row["lambda_sfsl"]), {})
        costs = [c for c in (_cost(r) for r in seeds.values()) if c is not None]
        first = next(iter(seeds.values()), None)
        # the table's training extractor (aggregate.trained_extractor: its lambda_sfsl = 0 rows too); a method
        # that never ran f (dreambooth, textual inversion) is still read under the sweep's extractor
        f_name = (
            row.get("trained_extractor")
            or (first.config.get("feature_extractor.name") if first else None)
            or (row["extractor"] or {}).get("name")
            or default_f
        )
        rates = {
            k.split("/", 1)[1]: v["mean"] for k, v in row["stats"].items() if k.startswith("spurious_rate/")
        }
        held = [v for c, v in rates.items() if c != f_name and v is not None]
        mean = {
            k: _mean([c[k] for c in costs])
            for k in ("tune_seconds", "tune_passes", "image_seconds", "image_passes")
        }
        entry = {
            "table": row["table"],
            "class_name": row.get("class_file") or row["class_name"],  # the pair: two pairs may share a class
            "method": (first.config.get("method.name") if first else None) or "sfsl",
            "strength": first.config.get("method.guidance.strength") if first else None,
            "lambda_sfsl": row["lambda_sfsl"],
            "seeds_with_cost": len(costs),
            "seeds": len(row["seeds"]),
            "extractor": f_name,
            "rate_extractor": rates.get(f_name),
            "rate_held_out": _mean(held),
            **mean,
        }
        for n in SIZES:
            ok = costs and mean["image_seconds"] is not None
            entry[f"seconds_{n}"] = mean["tune_seconds"] + n * mean["image_seconds"] if ok else None
            entry[f"passes_{n}"] = mean["tune_passes"] + n * mean["image_passes"] if ok else None
        out.append(entry)
    return out


def _num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _label(e: dict) -> str:
    """`sfsl λ=0.1`, `guidance s=10`, `sfsl_guidance λ=0.1 s=3`: what tells two points of one class apart."""
    label = e["method"]
    if e["method"] in ("sfsl", "textual_inversion", "sfsl_guidance"):
        label += f" λ={e['lambda_sfsl']:g}"
    if e.get("strength") is not None:
        label += f" s={e['strength']:g}"
    return label


def cost_figures(sweep: Sweep, rows: list[dict], out: Path) -> dict[str, Path]:
    """Per class, `figures/cost_<class>.png`: the extractor's rate against the seconds for 32 and for 1,000 images
    (extrapolated), and the held-out rate against the extractor's, one point per method (and lambda_sfsl). A
    point far below the diagonal fools the extractor more than the held-out classifiers: the adversarial gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    plain = FuncFormatter(lambda x, _: f"{x:g}")  # 40, 50, 100, 200: no 4x10^1

    entries = [e for e in cost_rows(sweep, rows) if e["rate_extractor"] is not None]
    figures: dict[str, Path] = {}
    for cls in sorted({e["class_name"] for e in entries}):
        mine = [e for e in entries if e["class_name"] == cls]
        color = {_label(e): f"C{k % 10}" for k, e in enumerate(mine)}  # one colour per point, in every panel
        fig, axes = plt.subplots(1, 3, figsize=(12.6, 4.2))
        for ax, n in zip(axes[:2], SIZES, strict=True):
            for e in (m for m in mine if m[f"seconds_{n}"] is not None):
                ax.scatter(e[f"seconds_{n}"], e["rate_extractor"], color=color[_label(e)])
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(LogLocator(subs=(2, 5)))
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(plain)
            extrapolated = " (extrapolated)" if n != SIZES[0] else ""
            ax.set(xlabel=f"seconds for {n:,} images{extrapolated}", ylabel="spurious rate: extractor",
                   ylim=(-0.05, 1.05))  # fmt: skip
        for e in (m for m in mine if m["rate_held_out"] is not None):
            axes[2].scatter(e["rate_extractor"], e["rate_held_out"], color=color[_label(e)])
        axes[2].plot([0, 1], [0, 1], ls=":", color="grey")
        axes[2].set(xlabel="spurious rate: extractor", ylabel="spurious rate: held out (mean)", xlim=(-0.05, 1.05),
                    ylim=(-0.05, 1.05))  # fmt: skip
        handles = [plt.Line2D([], [], marker="o", ls="", color=c) for c in color.values()]
        fig.legend(handles, list(color), loc="lower center", ncol=min(len(color), 7), fontsize=8)
        fig.suptitle(f"{sweep.root.name}: {cls}, rate against cost (mean over seeds)", fontsize=9)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        path = out / "figures" / f"cost_{cls.replace(' ', '_')}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        figures[f"cost:{cls}"] = path
    return figures


def cost_lines(
    sweep: Sweep, rows: list[dict], figures: dict[str, Path] | None = None, out_dir: Path | None = None
) -> list[str]:
    """report.md's section: rates against the cost of N = 32 and N = 1,000 images, per method and class, and
    each class's cost figure (cost_figures) when drawn."""
    entries = cost_rows(sweep, rows)
    if not entries:
        return []
    head = [
        "class file", "method", "lambda_sfsl", "seeds (with cost)", "rate: extractor", "rate: held out",
        "fine-tuning s", "s per image", "s for 32", "s for 1,000 (extrapolated)", "f passes for 32",
        "f passes for 1,000 (extrapolated)",
    ]  # fmt: skip
    lines = [
        "## Rate against cost",
        "",
        "cost(N) = fine-tuning + N × the measured per-image generation (wall seconds on the machine each run "
        "used; images through the feature extractor f, forward + backward), mean over the seeds with a cost "
        "record. Rate: extractor is the spurious rate of the classifier the method trains or guides with; held "
        "out is the mean over the others.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for e in sorted(
        entries, key=lambda e: (e["class_name"], e["method"], e["lambda_sfsl"] or 0, e["strength"] or 0)
    ):
        cells = [
            e["class_name"], _label(e), f"{e['lambda_sfsl']:g}", f"{e['seeds']} ({e['seeds_with_cost']})",
            _num(e["rate_extractor"], 2), _num(e["rate_held_out"], 2), _num(e["tune_seconds"], 1),
            _num(e["image_seconds"], 3), _num(e["seconds_32"], 1), _num(e["seconds_1000"], 1),
            _num(e["passes_32"]), _num(e["passes_1000"]),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for key, path in sorted((figures or {}).items()):
        if key.startswith("cost:") and out_dir is not None:
            lines += [
                f"![rate against cost, held-out against extractor rate]({path.relative_to(out_dir)})",
                "",
            ]
    return lines
