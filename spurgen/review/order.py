"""Which image a reviewer sees next: each reviewer has their own order, seeded by (seed, reviewer name), and
images still short of `min_reviewers_per_image` reviewers come first so that reviewers overlap and their
agreement can be measured (docs/review.md)."""

from __future__ import annotations

import hashlib
import random


def reviewer_seed(seed: int, reviewer: str) -> int:
    """A stable 64-bit seed of (seed, reviewer): the same name gets the same order after a restart."""
    digest = hashlib.sha256(f"{seed}\0{reviewer}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def reviewer_order(hashes: list[str], reviewer: str, seed: int) -> list[str]:
    """The image hashes in the reviewer's own shuffled order (independent of the order given)."""
    order = sorted(hashes)
    random.Random(reviewer_seed(seed, reviewer)).shuffle(order)
    return order


def queue(order: list[str], mine: set[str], counts: dict[str, int], min_reviewers: int) -> list[str]:
    """What is left for the reviewer, next first: images they have not answered that fewer than
    min_reviewers reviewers have answered, the least-reviewed first, ties in the reviewer's own order."""
    left = [h for h in order if h not in mine and counts.get(h, 0) < min_reviewers]
    rank = {h: i for i, h in enumerate(order)}
    return sorted(left, key=lambda h: (counts.get(h, 0), rank[h]))
