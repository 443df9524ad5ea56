"""Run a Python training program and record when each optimiser step ends (experiments/peer_ratio.py).

    python -m experiments.step_stamps OUT.json -m spurgen.run [overrides...]
    python -m experiments.step_stamps OUT.json path/to/train_dreambooth.py [args...]

A global post-hook on every torch optimiser's step (torch.optim.optimizer.register_optimizer_step_post_hook)
appends the wall clock (time.perf_counter) and the process's CPU time (time.process_time, all its threads) each
time an optimiser step returns, in the same process as the program, which then runs as `__main__` unchanged.
Consecutive stamps delimit one whole training iteration of any loop with one optimiser step per iteration,
whatever the loop does between steps (data, forward, backward, logging, a framework's own work): both
spurgen (Lightning calls step with the forward and backward inside its closure) and a plain accelerate loop are
timed the same way. OUT.json ({"wall": [...], "cpu": [...]}, seconds) is written when the program exits.
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    if len(argv) < 2:  # noqa: PLR2004 - OUT.json and the program
        raise SystemExit(__doc__)
    out, program = Path(argv[0]), argv[1:]
    from torch.optim.optimizer import register_optimizer_step_post_hook

    stamps: dict[str, list[float]] = {"wall": [], "cpu": []}

    def after_step(optimizer, args, kwargs) -> None:  # noqa: ARG001 - the hook's signature
        stamps["wall"].append(time.perf_counter())
        stamps["cpu"].append(time.process_time())

    register_optimizer_step_post_hook(after_step)
    atexit.register(lambda: out.write_text(json.dumps(stamps)))
    if program[0] == "-m":
        sys.argv = [program[1], *program[2:]]
        runpy.run_module(program[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(program)
        sys.path.insert(0, str(Path(program[0]).resolve().parent))  # as `python script.py` does
        runpy.run_path(program[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
