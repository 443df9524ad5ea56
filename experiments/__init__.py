"""Benchmarks, probes and the mini world's weight recreation: code that measures or remakes what spurgen ships,
kept out of the package (the wheel holds what a run needs). Run from the repository root:
`python -m experiments.<module>`, or `python experiments/bench.py` for the benchmark suite.

experiments/conf/ holds the configs whose `_target_` is here (the SD-1.5-proportional benchmark model); add it to
spurgen's config search path with SPURGEN_CONFIG_PATH=experiments/conf.
"""
