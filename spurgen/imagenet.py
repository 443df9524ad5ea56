"""ImageNet-1k class names (from timm's bundled label list, so it works offline)."""

from __future__ import annotations

from functools import lru_cache

NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def _info():
    from timm.data import ImageNetInfo

    return ImageNetInfo()


def class_name(index: int) -> str:
    """Full label list entry, e.g. 94 -> 'hummingbird'; 281 -> 'tabby, tabby cat'."""
    if not 0 <= index < NUM_CLASSES:
        raise ValueError(f"ImageNet class index must be in 0..{NUM_CLASSES - 1}, got {index}")
    return _info().index_to_description(index)


def short_name(index: int) -> str:
    """First synonym of the label, e.g. 281 -> 'tabby'."""
    return class_name(index).split(",")[0].strip()


def synonyms(index: int) -> list[str]:
    return [s.strip() for s in class_name(index).split(",") if s.strip()]
