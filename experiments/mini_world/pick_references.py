"""Pick the mini world's spurious pair and its reference crops, and say how they were picked:

    python -m experiments.mini_world.pick_references --out spurgen/assets/mini/references

1. Every photo that no part was pre-trained on (the corpus's heldout and reference splits) is labelled by
   EfficientNet-Lite0/1/2 (centre square at 64 px, each model's own resize): a spurious pair is a photo
   whose label all three agree on while the labelled object is not in the photo.
2. For the chosen photo (the corpus's REFERENCE_PHOTO, the moon: a lunar surface labelled *nematode*) a
   pool of seeded crops is drawn at the corpus's scales; a crop qualifies when every Lite model gives the
   class top-1. The `count` qualifying crops with the highest lowest probability across the three models
   are kept, at most one per overlapping region (boxes may overlap by at most `max_overlap` of their area).
3. The crops are written as PNGs with selection.json: each crop's box, its probabilities, the candidates'
   table and the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from experiments.mini_world import corpus, lite
from spurgen.errors import SpurgenError
from spurgen.files import output_folder, write_atomic

REFERENCE_CLASS = 111  # nematode: what Lite0/1/2 call the moon (docs/mini_world.md)
POOL = 96
COUNT = 5
SEED = 0
MAX_OVERLAP = 0.5


@torch.no_grad()
def probabilities(models: dict[int, torch.nn.Module], images: np.ndarray) -> dict[int, torch.Tensor]:
    """Softmax over the 1000 classes per Lite variant for (N, 64, 64, 3) uint8 images (lite.top1's rule)."""
    x = corpus.to_tensor(images).add(1).div(2)
    mean = torch.tensor(lite.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(lite.STD).view(1, 3, 1, 1)
    out = {}
    for v, model in models.items():
        size = lite.INPUT_SIZE[v]
        y = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        out[v] = model((y - mean) / std).softmax(1)
    return out


def candidates_table(models: dict[int, torch.nn.Module]) -> list[dict]:
    """Each photo outside pre-training: its centre square's top-1 and probability per Lite variant."""
    rows = []
    for p in corpus.photos("heldout") + corpus.photos("reference"):
        full = corpus.load_photo(p.name)
        probs = probabilities(models, corpus.cut(full, corpus.centre_box(full))[None])
        top = {f"lite{v}": [int(pr[0].argmax()), round(float(pr[0].max()), 3)] for v, pr in probs.items()}
        rows.append({"photo": p.name, "caption": corpus.caption(p.subject), "top1": top})
    return rows


def _overlap(a: tuple, b: tuple) -> float:
    """Intersection area over the smaller box's area, for square boxes (top, left, side)."""
    h = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    w = max(0, min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1]))
    return h * w / min(a[2], b[2]) ** 2


def pick(models: dict, photo: str, target: int, args: argparse.Namespace) -> list[dict]:
    """The qualifying crops of `photo`, best first, spread out (see the module docstring)."""
    images, crops = corpus.sample_crops([photo], args.pool, seed=[args.seed, target])
    probs = probabilities(models, images)
    top1_ok = torch.stack([p.argmax(1) == target for p in probs.values()]).all(0)
    lowest = torch.stack([p[:, target] for p in probs.values()]).min(0).values
    order = [int(i) for i in lowest.argsort(descending=True) if top1_ok[i]]
    chosen: list[dict] = []
    for i in order:
        if any(_overlap(crops[i].box, c["box"]) > args.max_overlap for c in chosen):
            continue
        chosen.append(
            {
                "index": i,
                "box": list(crops[i].box),
                "image": images[i],
                "p": {f"lite{v}": round(float(p[i, target]), 3) for v, p in probs.items()},
            }
        )
        if len(chosen) == args.count:
            break
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.mini_world.pick_references", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="folder; the crops go to <out>/<photo>/")
    parser.add_argument("--photo", default=corpus.REFERENCE_PHOTO)
    parser.add_argument("--target", type=int, default=REFERENCE_CLASS, help="ImageNet class index")
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--pool", type=int, default=POOL)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--max-overlap", type=float, default=MAX_OVERLAP)
    args = parser.parse_args(argv)
    if args.count < 1 or args.pool < args.count:
        parser.error("--count must be at least 1 and --pool at least --count")
    if args.photo in {p.name for p in corpus.photos("train")}:
        parser.error(f"--photo {args.photo} is in the pre-training split: its crops would be memorised")
    return args


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    args = parse_args(argv)
    try:
        folder = output_folder(args.out / args.photo)
    except SpurgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    models = {v: lite.load_lite(v) for v in (0, 1, 2)}
    table = candidates_table(models)
    chosen = pick(models, args.photo, args.target, args)
    if len(chosen) < args.count:
        print(
            f"error: only {len(chosen)} of {args.pool} crops of {args.photo} are class {args.target} for all "
            f"three Lite models (need {args.count}): no spurious pair holds up here",
            file=sys.stderr,
        )
        return 1
    for old in folder.glob("*.png"):
        old.unlink()
    for n, c in enumerate(chosen):
        Image.fromarray(c.pop("image")).save(folder / f"{args.photo}_{n:02d}.png")
    record = {
        "command": "python -m experiments.mini_world.pick_references "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "photo": args.photo,
        "target": args.target,
        "rule": "all three Lite top-1 = target; highest lowest probability first; boxes overlap <= max_overlap",
        "pool": args.pool,
        "seed": args.seed,
        "max_overlap": args.max_overlap,
        "crops": chosen,
        "candidates": table,
    }
    write_atomic(folder / "selection.json", json.dumps(record, indent=2) + "\n")
    for row in table:
        print(row["photo"], row["top1"])
    print(f"{len(chosen)} crops of {args.photo} -> {folder}:", [c["p"] for c in chosen])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
