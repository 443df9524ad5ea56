"""What each seed means (METHOD.md, Evaluation: "Seeds mean one thing").

- the training seed `seed` drives training noise only (timesteps, noise, latent samples, data order);
- the choice of references has its own seed, `data.reference_seed` (fixed by default);
- generation seeds derive from (training seed, image index) by `generation_seed`: disjoint across training
  seeds, and identical across lambda_sfsl and the baseline for one training seed, so comparisons are paired.
"""

from __future__ import annotations

# Image i of training seed s is drawn with seed s * GENERATION_STRIDE + i. A run may generate at most
# GENERATION_STRIDE images, so the seed ranges of two training seeds never overlap.
GENERATION_STRIDE = 1_000_000


def generation_seed(train_seed: int, index: int) -> int:
    """The noise seed of generated image `index` for training seed `train_seed` (both >= 0)."""
    if train_seed < 0 or not 0 <= index < GENERATION_STRIDE:
        raise ValueError(
            f"generation seeds need seed >= 0 and 0 <= image index < {GENERATION_STRIDE}, "
            f"got seed={train_seed}, index={index}"
        )
    return int(train_seed) * GENERATION_STRIDE + int(index)
