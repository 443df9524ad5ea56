"""Which reference images a run trains on: a plain folder, a Spurious ImageNet pair, or the demo images."""

from __future__ import annotations

import random
from pathlib import Path

from spurgen.data import spurious_imagenet
from spurgen.data.images import list_images
from spurgen.errors import SpurgenError


def reference_folder(
    reference_dir: str | None,
    spurious_imagenet_dir: str | None,
    class_index: int,
    component: int | None,
    demo_dir: str | None = None,
) -> Path:
    if reference_dir:
        return Path(reference_dir).expanduser()
    if spurious_imagenet_dir:
        return spurious_imagenet.select_folder(spurious_imagenet_dir, class_index, component)
    if demo_dir:
        return Path(demo_dir)
    raise SpurgenError(
        f"no reference images for class {class_index}: pick some with `spurgen pick <folder of photos> "
        f"class={class_index} out_dir=<refs>` and set data.reference_dir=<refs>, or set "
        "data.spurious_imagenet_dir=<Spurious ImageNet images/ folder> (with target.component if needed)"
    )


def select_references(folder: Path, num: int, seed: int, names: list[str] | None = None) -> list[Path]:
    """`num` files picked deterministically from the seed (or the named files, in order)."""
    files = list_images(folder)
    if names:
        by_name = {f.name: f for f in files}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise SpurgenError(f"target.reference_files not found in {folder}: {', '.join(missing)}")
        files = [by_name[n] for n in names]
    if num > len(files):
        raise SpurgenError(
            f"data.num_references={num} but {folder} holds only {len(files)} usable images; "
            f"lower data.num_references to at most {len(files)}"
        )
    if names:
        return files[:num]
    return sorted(random.Random(seed).sample(files, num))
