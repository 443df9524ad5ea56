"""Write the documented several-seed figures that a run prints beside its own table (spurgen/eval/documented.py).

    python -m experiments.seed_figures multirun/mini_pairs/<timestamp> --machine "<cpu model>, idle" \
        --source "docs/mini_world.md, experiment=mini_pairs" [--out spurgen/assets/mini/seed_figures.json]

It reads the sweep's runs (spurgen.report.collect) and groups them as the sweep report does (one row per method
version, class, run identity and lambda_sfsl; its baseline row). Each run's config is composed again from its
own command-line overrides (.hydra/overrides.yaml) with today's code; the entry's identity is that config's, and
the script stops if today's composition differs from what the run saved in any key the run had (a key the run
did not have yet is listed, e.g. a config group added since). So an entry names exactly the settings that
`spurgen run <those overrides>` composes today.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from spurgen.eval.documented import METRICS, figures_path
from spurgen.files import write_json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path, help="a sweep folder (multirun/<experiment>/<timestamp>)")
    p.add_argument("--machine", required=True, help="the machine the sweep ran on, as the docs name it")
    p.add_argument("--source", required=True, help="where the docs show these figures")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: the runs' own)")
    p.add_argument("--out", type=Path, default=None, help=f"default: spurgen/assets/{figures_path().name}")
    return p.parse_args(argv)


def recomposed_identity(folder: Path) -> tuple[str, list[str]]:
    """(today's run identity of the run's overrides, keys today's config has that the run's saved one lacks);
    raises ValueError naming the first key whose value differs."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from spurgen.config import CONF_DIR, register_configs, register_resolvers
    from spurgen.identity import flat_config, run_identity
    from spurgen.report.collect import load_yaml

    register_configs()
    register_resolvers()
    overrides = [
        o for o in load_yaml(folder / ".hydra" / "overrides.yaml") or [] if not o.startswith("hydra")
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        today = compose("config", overrides=overrides)
    saved = flat_config(OmegaConf.create(load_yaml(folder / ".hydra" / "config.yaml")))
    now = flat_config(today)
    for key in sorted(saved):
        if key not in now or json.dumps(now[key], default=str) != json.dumps(saved[key], default=str):
            raise ValueError(
                f"{folder}: {key} was {saved[key]!r}, today's config has {now.get(key, '<unset>')!r}"
            )
    return run_identity(today), sorted(set(now) - set(saved))


def _spread(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None}
    return {
        "mean": statistics.fmean(vals),
        "min": min(vals),
        "max": max(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else None,
        "values": vals,
    }


def per_classifier(runs: list, set_name: str) -> dict[str, dict]:
    """Classifier -> metric -> mean/min/max/std over the runs (one per seed) of one image set."""
    out: dict[str, dict] = {}
    classifiers = sorted({c for r in runs for c in r.results[set_name]["per_classifier"]})
    for c in classifiers:
        out[c] = {}
        for m in METRICS:
            vals = [
                ((r.results[set_name]["per_classifier"].get(c) or {}).get(m) or {}).get("value") for r in runs
            ]
            out[c][m] = _spread(vals)
    return out


def build_entries(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    from spurgen.report.collect import collect

    sweep = collect(sweep_dir)
    if sweep.problems:
        raise ValueError("; ".join(f"{where}: {why}" for where, why in sweep.problems))
    groups: dict[tuple, list] = {}
    new_keys: set[str] = set()
    identity_of: dict[str, str] = {}
    for r in sweep.runs:
        today, added = recomposed_identity(r.folder)
        new_keys.update(added)
        if identity_of.setdefault(r.identity, today) != today:
            raise ValueError(f"runs of identity {r.identity} compose to two identities today")
        groups.setdefault((r.method_version, r.class_key[1], today, r.lambda_sfsl), []).append(r)
    entries = []
    for (version, class_file, identity, lam), runs in sorted(groups.items()):
        seeds = sorted({r.seed for r in runs})
        if len(seeds) != len(runs):
            raise ValueError(f"{class_file} lambda {lam}: a seed appears twice")
        # the baseline: the same pair's runs that made one, at any lambda (it does not depend on lambda)
        base_runs = [
            r for r in sweep.runs
            if r.class_key[1] == class_file and identity_of[r.identity] == identity and "baseline" in r.results
        ]  # fmt: skip
        entries.append({
            "method_version": version,
            "class_file": class_file,
            "class_index": runs[0].class_key[0],
            "identity": identity,
            "lambda_sfsl": lam,
            "seeds": seeds,
            "images": per_classifier(runs, "images"),
            "baseline": per_classifier(base_runs, "baseline") if base_runs else None,
            "baseline_seeds": sorted(r.seed for r in base_runs),
        })  # fmt: skip
    return entries, sorted(new_keys)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        entries, new_keys = build_entries(args.sweep)
    except (ValueError, FileNotFoundError) as exc:
        print(f"seed_figures: error: {exc}", file=sys.stderr)
        return 2
    threads = args.threads
    if threads is None:
        from spurgen.report.collect import collect, load_yaml

        saved = {
            (load_yaml(r.folder / ".hydra" / "config.yaml") or {}).get("threads")
            for r in collect(args.sweep).runs
        }
        threads = saved.pop() if len(saved) == 1 else None
    out = args.out or figures_path()
    write_json(out, {
        "source": args.source,
        "sweep": args.sweep.name,
        "machine": args.machine,
        "threads": threads,
        "keys_added_since": new_keys,
        "entries": entries,
    })  # fmt: skip
    print(
        f"{len(entries)} entries -> {out}"
        + (f" (keys the runs lacked: {', '.join(new_keys)})" if new_keys else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
