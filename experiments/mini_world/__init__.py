"""The mini world's weight recreation: a photo corpus from installed packages, the pre-training of the small
parts that ship in spurgen/assets/mini/, their gate and probes (docs/mini_world.md). Its numbers show the
mechanism, not Stable Diffusion results. A run needs none of this: it loads the shipped folder.

Run from the repository root, e.g. `python -m experiments.mini_world.pretrain --part all` (`make mini-weights`).
"""

from pathlib import Path

# the shipped weights of this checkout, which the recreation commands write by default
ASSET_DIR = Path(__file__).resolve().parents[2] / "spurgen" / "assets" / "mini"
