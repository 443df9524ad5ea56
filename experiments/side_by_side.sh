#!/bin/bash
# The default run (`python -m spurgen.run seed=<s>`) of two checkouts, back to back on one machine: seeds 0, 1, 2,
# each seed old then new, wall time of the whole command into OUT/times.txt, each run's folder OUT/<old|new><s>
# (docs/performance.md, "The default run in half the time"; docs/benchmarks/default_run_side_by_side.json).
#   PY=.venv/bin/python experiments/side_by_side.sh OLD_CHECKOUT NEW_CHECKOUT OUT_DIR
# Run it on an otherwise idle machine: the ratio of two runs is only fair when nothing else shares the cores.
set -u
OLD=$(realpath "$1"); NEW=$(realpath "$2"); OUT=$(realpath -m "$3"); PY=$(realpath "${PY:-$(command -v python)}")
mkdir -p "$OUT"
src() { if [ "$1" = old ]; then echo "$OLD"; else echo "$NEW"; fi; }
# each checkout first makes its own prior images (a one-step train), so every timed run finds them cached
for v in old new; do
  (cd "$(src $v)" && PYTHONPATH="$(src $v)" "$PY" -m spurgen.run trainer.max_steps=1 "stages=[train]" \
    hydra.run.dir="$OUT/warm_$v" > "$OUT/warm_$v.log" 2>&1)
done
for s in 0 1 2; do
  for v in old new; do
    d="$OUT/$v$s"; rm -rf "$d"
    start=$(date +%s.%N)
    (cd "$(src $v)" && PYTHONPATH="$(src $v)" "$PY" -m spurgen.run seed=$s hydra.run.dir="$d" > "$d.log" 2>&1)
    echo "$v $s $(echo "$(date +%s.%N) - $start" | bc)" >> "$OUT/times.txt"
  done
done
