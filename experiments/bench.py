"""spurgen's benchmark suite: `make bench` writes BENCHMARKS.md.

    python experiments/bench.py                      # both sizes, 20 repeats (about 10 minutes on 2 cores)
    python experiments/bench.py --smoke --out /tmp/b  # one repeat, tiny only (the test)

Times: configurations of one section run interleaved (round-robin, order rotated each repeat) after a
warm-up, and each is reported as median [p10, p90] over the repeats. Peak memory: every configuration runs
again in a fresh child (forked from a server that only imported the libraries), whose ru_maxrss is read;
"added" is the peak minus the child's resident size after building its parts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `experiments` importable when run as a file (and in the forkserver children)
from experiments import bench_sections as sections  # noqa: E402
from experiments.bench_report import write_report  # noqa: E402


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int | None = None
) -> dict[str, dict]:
    """Round-robin timing; returns name -> {median, p10, p90, mean, n} in seconds."""
    names = list(fns)
    for _ in range(1 if warmup is None and repeats > 1 else warmup or 0):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {n: sections.summarize(v) for n, v in times.items()}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(size: str, kind: str, name: str, steps: int, queue) -> None:
    import resource

    torch.set_num_threads(2)
    run = sections.memory_job(size, kind, name)  # builds the parts
    before = _rss_mib()
    for _ in range(steps):
        run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"peak_mib": peak, "added_mib": peak - before})


def peak_memory(
    jobs: list[tuple[str, str, str]], steps: int, fresh: bool = True
) -> dict[tuple[str, str, str], dict]:
    """fresh=False (the smoke test) runs the same code in this process: no server start-up. (Forking a
    process whose OpenMP pool has run can hang the child, so there is no fork path.)"""
    out = {}
    if not fresh:
        import queue as queue_mod

        for job in jobs:
            q: queue_mod.Queue = queue_mod.Queue()
            _child(*job, steps, q)
            out[job] = q.get()
        return out
    ctx = mp.get_context("forkserver")
    for job in jobs:
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(*job, steps, q))
        p.start()
        try:
            out[job] = q.get(timeout=600)
        finally:
            p.join()
    return out


def machine() -> dict:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.is_available(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="one repeat, tiny size only (the test)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--sizes", default="tiny,proportional")
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks"), help="for BENCHMARKS.md, bench.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    repeats = 1 if args.smoke else args.repeats
    sizes = ["tiny"] if args.smoke else args.sizes.split(",")
    mp.set_forkserver_preload(["torch", "diffusers", "transformers", "timm", "lightning", "spurgen.module"])
    t0 = time.time()
    results: dict = {"machine": machine(), "repeats": repeats, "sizes": {}}
    n_mem = 1 if args.smoke else 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        r: dict = {}
        plan = [
            (
                "costs",
                "cost ratios",
                lambda s=size: sections.cost_ratios(s, interleaved, 3 if args.smoke else 7),
            ),
            (
                "step",
                "(a) training step, SFSL settings",
                lambda s=size: sections.training_steps(s, interleaved, repeats, smoke=args.smoke),
            ),
            (
                "run",
                "(a) training run, t drawn as in training",
                lambda s=size: sections.training_run(s, repeats, smoke=args.smoke),
            ),
            ("term", "SFSL term alone", lambda s=size: sections.sfsl_terms(s, interleaved, repeats)),
            ("framework", "(b) Lightning fit vs plain loop", lambda s=size: sections.framework(s, repeats)),
            (
                "eval",
                "(c) evaluation",
                lambda s=size: sections.evaluation(s, interleaved, repeats, smoke=args.smoke),
            ),
            (
                "gen",
                "(d) generation",
                lambda s=size: sections.generation(s, interleaved, repeats, smoke=args.smoke),
            ),
            ("fidelity", "fidelity", lambda s=size: sections.fidelity(s, smoke=args.smoke)),
            (
                "memory",
                "peak memory (fresh children)",
                lambda s=size: {
                    f"{k}/{n}": v
                    for (_, k, n), v in peak_memory(
                        sections.memory_jobs(s, args.smoke), n_mem, not args.smoke
                    ).items()
                },
            ),
        ]
        for key, title, fn in plan:
            t1 = time.time()
            r[key] = fn()
            print(f"[bench] {size}: {title}: {time.time() - t1:.1f} s", flush=True)
            (out / "bench.partial.json").write_text(
                json.dumps(results | {"sizes": {**results["sizes"], size: r}}, indent=2, default=str)
            )
        results["sizes"][size] = r
    results["seconds"] = round(time.time() - t0, 1)
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "bench.partial.json").unlink(missing_ok=True)  # progress file of an unfinished run
    cmd = "python experiments/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(results, out / "BENCHMARKS.md", cmd.strip())
    print(f"[bench] done in {results['seconds']} s: {out / 'BENCHMARKS.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
