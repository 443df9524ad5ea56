PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: help install browser test test-fast lint format run bench bench-peer bench-gpu mini-weights mini-robust mini-references clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: browser  ## create .venv and install spurgen (editable) with its dev extras
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=24" --quiet
	$(PY) -m pip install -e ".[dev]"

# The review page's browser test (tests/test_review.py) drives Debian's chromium + chromium-driver. As root with
# apt (CI, these machines) they are installed here; elsewhere the test skips and says what to install.
browser:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromedriver >/dev/null; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; \
	fi

test:  ## run every test, slow ones included (offline, CPU; under 12 minutes on 2 cores); prints the 15 slowest
	$(PY) -m pytest -q --durations=15

test-fast:  ## the tests not marked slow (under 2 minutes on 2 cores; nothing trains past a few steps)
	$(PY) -m pytest -q -m "not slow" --durations=15

lint:  ## ruff check and format check
	$(PY) -m ruff check spurgen tests experiments
	$(PY) -m ruff format --check spurgen tests experiments

format:  ## ruff format and fix
	$(PY) -m ruff format spurgen tests experiments
	$(PY) -m ruff check --fix spurgen tests experiments

run:  ## the default run, the mini world: train -> generate -> evaluate
	$(PY) -m spurgen.run

bench:  ## benchmark suite (docs/benchmarks/BENCHMARKS.md) and the default run's step, piece by piece (STEP_BREAKDOWN.md)
	$(PY) experiments/bench.py --out docs/benchmarks
	$(PY) -m experiments.step_breakdown --out docs/benchmarks

# diffusers' train_dreambooth.py is not shipped: get it once (docs/performance.md), then
#   make bench-peer DREAMBOOTH_SCRIPT=/tmp/train_dreambooth.py
bench-peer:  ## spurgen's lambda=0 step against diffusers' train_dreambooth.py (PEER_RATIO.md; needs DREAMBOOTH_SCRIPT=path)
	@test -n "$(DREAMBOOTH_SCRIPT)" || { echo "make bench-peer needs DREAMBOOTH_SCRIPT=<path to diffusers' examples/dreambooth/train_dreambooth.py> (docs/performance.md says how to get it)"; exit 2; }
	$(PY) -m experiments.peer_ratio --dreambooth-script "$(DREAMBOOTH_SCRIPT)" --out docs/benchmarks

bench-gpu:  ## SD 1.5's architecture at 512² in bf16 on a CUDA GPU (writes docs/benchmarks/BENCHMARKS_GPU.md)
	$(PY) experiments/bench_gpu.py --out docs/benchmarks

mini-weights:  ## recreate the mini world's shipped weights (spurgen/assets/mini; about an hour on 2 CPU cores)
	$(PY) -m experiments.mini_world.pretrain --part all --out spurgen/assets/mini --figure docs/mini_autoencoder.png

# One thread: 45 minutes of training, then the gate (about 8 minutes on a loaded machine), under an hour.
# The gate's verdict is in spurgen/assets/mini/robust/manifest.json: commit the weights only if it passed.
mini-robust:  ## the robust mini extractor, adversarially fine-tuned Lite0 (spurgen/assets/mini/robust; 48 min on 1 thread)
	$(PY) -m experiments.mini_world.robust_lite --minutes 45 --out spurgen/assets/mini/robust --figure docs/mini_robust_gradients.png

mini-references:  ## re-pick the mini world's reference crops (spurgen/assets/mini/references)
	$(PY) -m experiments.mini_world.pick_references --out spurgen/assets/mini/references

clean:  ## remove run outputs and caches
	rm -rf outputs multirun .pytest_cache
