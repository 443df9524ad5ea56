"""How far sampling-time guidance moves each image from its unguided twin (docs/methods.md).

    python -m experiments.guidance_perturbation multirun/mini_methods/<time> [--out perturbation.json]

A guidance run (method=guidance, conf/method/) writes generated/ (guided) and baseline/ (the same prompt, seeds
and sampler, unguided), image for image. Per run: the median over its images of the PSNR (dB, pixels in [0, 1])
between the guided image and its twin, and of the largest absolute pixel difference (of 255). Printed per class
and method, one value per seed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from spurgen.files import write_json


def twin_distance(guided: Path, unguided: Path) -> tuple[float, float]:
    """(PSNR dB, largest absolute difference of 255) between two RGB images of one size."""
    a = np.asarray(Image.open(guided).convert("RGB"), dtype=np.float64) / 255.0
    b = np.asarray(Image.open(unguided).convert("RGB"), dtype=np.float64) / 255.0
    mse = float(((a - b) ** 2).mean())
    return (100.0 if mse == 0 else 10.0 * np.log10(1.0 / mse)), float(np.abs(a - b).max() * 255.0)


def run_distances(run: Path) -> dict | None:
    """The run's medians, or None when it is not a guidance run with both image sets."""
    import yaml

    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text()) if (run / ".hydra").is_dir() else None
    method = (cfg or {}).get("method") or {}
    if not method.get("guidance") or not (run / "baseline").is_dir():
        return None
    pairs = [(p, run / "baseline" / p.name) for p in sorted((run / "generated").glob("*.png"))]
    pairs = [(g, u) for g, u in pairs if u.is_file()]
    if not pairs:
        return None
    dists = [twin_distance(g, u) for g, u in pairs]
    return {
        "class_file": (cfg.get("target") or {}).get("file"),
        "method": method.get("name"),
        "strength": method["guidance"].get("strength"),
        "seed": cfg.get("seed"),
        "images": len(dists),
        "psnr_db_median": statistics.median(d[0] for d in dists),
        "max_abs_diff_median": statistics.median(d[1] for d in dists),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not args.sweep.is_dir():
        print(f"guidance_perturbation: error: not a folder: {args.sweep}", file=sys.stderr)
        return 2
    rows = [r for run in sorted(args.sweep.iterdir()) if run.is_dir() and (r := run_distances(run))]
    by: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by[(r["class_file"], r["method"], r["strength"])].append(r)
    for (cls, method, strength), rs in sorted(by.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        rs.sort(key=lambda r: r["seed"])
        psnr = " / ".join(f"{r['psnr_db_median']:.1f}" for r in rs)
        diff = " / ".join(f"{r['max_abs_diff_median']:.0f}" for r in rs)
        print(f"{cls} {method} s={strength}: PSNR to the unguided twin {psnr} dB, largest difference {diff} of 255 "
              f"(medians over images; seeds {', '.join(str(r['seed']) for r in rs)})")  # fmt: skip
    if args.out:
        write_json(args.out, {"command": "python -m experiments.guidance_perturbation " + " ".join(argv or sys.argv[1:]),
                              "runs": rows})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
