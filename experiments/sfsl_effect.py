"""Does the SFSL raise similarity under its training extractor by more than seed-to-seed spread?

    python -m experiments.sfsl_effect --seeds 0,1,2,3,4 --lambdas 0,1 --out /tmp/sfsl_effect.json \
        trainer.max_steps=100 threads=1

Runs `spurgen run` once per (lambda_sfsl, seed) with the given overrides (each run in its own folder under
--work). Per run it measures what the SFSL optimises, cos(phi(x0_hat), m) of the trained model's one-step
predictions of the noised references under the training extractor (experiments/probe.py), and, when the run
evaluated, reads eval/metrics.json: the generated images' similarity under every classifier and their
spurious rates. Prints per lambda the values per seed, mean and spread (max - min over seeds).
tests/test_mini_world.py's margin comes from these numbers, measured with its own settings (its EFFECT
overrides and threads=1; docs/mini_world.md, "The effect test and its seed spread", has the command).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from experiments.probe import probe_run
from spurgen.files import write_json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="spurgen config overrides for every run")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--lambdas", default="0,1")
    parser.add_argument("--work", type=Path, default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
        args.lambdas = [float(x) for x in args.lambdas.split(",")]
    except ValueError:
        parser.error("--seeds and --lambdas are comma-separated numbers")
    return args


def one_run(overrides: list[str], lam: float, seed: int, folder: Path) -> dict:
    """The run's probe, its metrics (flat keys, when it evaluated) and its wall time."""
    from spurgen.cli.run import main as run_main

    start = time.perf_counter()
    rc = run_main([*overrides, f"lambda_sfsl={lam}", f"seed={seed}", f"hydra.run.dir={folder}"])
    if rc != 0:
        raise SystemExit(f"run lambda_sfsl={lam} seed={seed} failed with exit code {rc}")
    seconds = round(time.perf_counter() - start, 1)
    probe = probe_run(folder)
    metrics_file = folder / "eval" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())["metrics"] if metrics_file.exists() else {}
    metrics["predicted_similarity/mean"] = sum(probe.values()) / len(probe)
    metrics.update({f"predicted_similarity/t{t}": v for t, v in probe.items()})
    return {"seed": seed, "seconds": seconds, "metrics": metrics}


def summarise(runs: list[dict], prefix: str) -> dict:
    """Per metric key starting with `prefix`: values per seed, mean and spread (max - min)."""
    keys = sorted({k for r in runs for k in r["metrics"] if k.startswith(prefix)})
    out = {}
    for k in keys:
        values = [r["metrics"][k] for r in runs if k in r["metrics"]]
        out[k] = {"values": values, "mean": sum(values) / len(values), "spread": max(values) - min(values)}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="spurgen-sfsl-effect-"))
    result: dict = {
        "command": "python experiments/sfsl_effect.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "overrides": args.overrides,
        "per_lambda": {},
    }
    for lam in args.lambdas:
        runs = [one_run(args.overrides, lam, s, work / f"lambda_{lam}" / f"seed_{s}") for s in args.seeds]
        result["per_lambda"][str(lam)] = {
            "runs": runs,
            "predicted_similarity": summarise(runs, "predicted_similarity/"),
            "similarity": summarise(runs, "eval/similarity/"),
            "spurious_rate": summarise(runs, "eval/spurious_rate/"),
        }
    for lam, r in result["per_lambda"].items():
        for k, v in {**r["predicted_similarity"], **r["similarity"], **r["spurious_rate"]}.items():
            print(f"lambda_sfsl={lam} {k}: mean {v['mean']:.4f} spread {v['spread']:.4f} "
                  f"values {[round(x, 4) for x in v['values']]}")  # fmt: skip
    if args.out:  # strict JSON, written atomically (a NaN ratio becomes null)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
