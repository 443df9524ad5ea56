"""One sweep's extractor arms side by side (docs/mini_world.md, "Robust extractor"): per class file and
lambda_sfsl, each arm's (the extractor that trained the SFSL) spurious rates under every classifier, pooled over
the seeds with their 95% Wilson intervals, its adversarial gap against the classifiers no arm trained with, and
KID and diversity under those classifiers.

    python -m experiments.extractor_arms multirun/mini_robust/<time> [--out arms.md]

An arm is a report table (spurgen/report/aggregate.py) whose runs trained through one extractor; its
lambda_sfsl = 0 row is read under that extractor too. "Held out by every arm" are the classifiers that trained
no arm: for experiment=mini_robust, Lite1 and Lite2 (each Lite0 is also held out for the other arm, and has its
own column).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cell(pooled: dict | None) -> str:
    if not pooled:
        return "–"
    return f"{pooled['rate']:.2f} [{pooled['ci'][0]:.2f}, {pooled['ci'][1]:.2f}]"


def _stat(s: dict | None, digits: int = 3) -> str:
    if not s or s["mean"] is None:
        return "–"
    spread = "" if s["std"] is None else f" ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}{spread}"


def _mean_stat(stats: dict, keys: list[str]) -> dict | None:
    """The mean over classifiers of per-classifier (mean, std) cells: mean of means, root mean square of stds."""
    cells = [stats[k] for k in keys if k in stats and stats[k]["mean"] is not None]
    if not cells:
        return None
    stds = [c["std"] for c in cells if c["std"] is not None]
    return {
        "mean": sum(c["mean"] for c in cells) / len(cells),
        "std": (sum(s * s for s in stds) / len(stds)) ** 0.5 if len(stds) == len(cells) else None,
    }


def arm_rows(root: Path) -> tuple[list[dict], list[str], list[str]]:
    """(rows, classifiers, held out by every arm): one row per (class file, lambda_sfsl, arm), sorted so that
    the arms of one class file and lambda_sfsl sit together."""
    from spurgen.report import aggregate, collect

    rows = [r for r in aggregate(collect(root)) if r["row"] == "images" and r.get("trained_extractor")]
    classifiers = sorted({c for r in rows for c in r["pooled"]})
    arms = sorted({r["trained_extractor"] for r in rows})
    held = [c for c in classifiers if c not in arms]
    out = []
    for r in rows:
        s = r["stats"]
        out.append(
            {
                "class_file": r.get("class_file") or r["class_name"],
                "lambda_sfsl": r["lambda_sfsl"],
                "arm": r["trained_extractor"],
                "seeds": r["seeds"],
                "rates": {c: r["pooled"].get(c) for c in classifiers},
                "gap_held_out": _mean_stat(s, [f"adversarial_gap/{c}" for c in held]),
                "kid_held_out": _mean_stat(s, [f"kid/{c}" for c in held]),
                "diversity_held_out": _mean_stat(s, [f"diversity/{c}" for c in held]),
            }
        )
    out.sort(key=lambda e: (e["class_file"], e["lambda_sfsl"], arms.index(e["arm"])))
    return out, classifiers, held


def markdown(root: Path) -> str:
    rows, classifiers, held = arm_rows(root)
    if not rows:
        return f"No generated rows with a training extractor in {root}.\n"
    names = ", ".join(held) or "none"
    head = ["class file", "λ", "SFSL through", "seeds", *[f"rate {c}" for c in classifiers],
            f"gap to held out ({names})", "KID (held out)", "diversity (held out)"]  # fmt: skip
    lines = [
        f"Extractor arms of `{root}`: spurious rates pooled over the seeds (95% Wilson interval); the training "
        "extractor's rate is in bold. Gap: the training extractor's rate minus the held-out rate, per seed, "
        f"averaged over the classifiers held out by every arm ({names}), mean ± seed std; KID and diversity "
        "under the same classifiers (mean over them of each one's mean ± seed std).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for e in rows:
        rates = [
            f"**{_cell(e['rates'][c])}**" if c == e["arm"] else _cell(e["rates"][c]) for c in classifiers
        ]
        cells = [e["class_file"], f"{e['lambda_sfsl']:g}", e["arm"], " ".join(map(str, e["seeds"])), *rates,
                 _stat(e["gap_held_out"], 2), _stat(e["kid_held_out"], 4), _stat(e["diversity_held_out"], 3)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.extractor_arms", description=__doc__.splitlines()[0]
    )
    p.add_argument("sweep", type=Path, help="a sweep folder (multirun/<experiment>/<time>)")
    p.add_argument("--out", type=Path, default=None, help="write the table here as well as printing it")
    args = p.parse_args(argv)
    if not args.sweep.is_dir():
        print(f"error: {args.sweep} is not a folder", file=sys.stderr)
        return 2
    from spurgen.errors import SpurgenError

    try:
        text = markdown(args.sweep)
    except SpurgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
