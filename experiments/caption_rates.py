"""How often the Lite classifiers already call each captioned corpus photo the spurious class
(docs/mini_world.md, "What the baseline row measures").

    python -m experiments.caption_rates --out docs/benchmarks/generator_probe/caption_rates.json

For every photo under a caption (the training photos and the reference photo), `--crops` random 64-px crops
(corpus.sample_crops, seed [seed]) are labelled by EfficientNet-Lite0/1/2, and the share whose top-1 is
`--class-index` (default 111, nematode: the mini world's spurious class) is reported per photo and per caption
(the mean over the caption's training photos: the generator's corpus draws its photos uniformly; the reference
photo, which pre-training never sees, is reported per photo only). A faithful generator's
class-prompt images inherit the class prompt's caption rate, so this is what the un-fine-tuned baseline row
of the mini world's experiment can be expected to show, whatever the generator's quality.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from experiments.mini_world import corpus, lite, subjects
from spurgen.errors import SpurgenError
from spurgen.files import write_json
from spurgen.torch_threads import torch_threads


def rates(names: list[str], class_index: int, crops: int, seed: int, variants: list[int]) -> dict:
    """{"photos": {name: {lite<v>: rate}}, "captions": {caption: {lite<v>: mean over its photos}}}."""
    models = {v: lite.load_lite(v) for v in variants}
    per_photo = {}
    for name in names:
        images, _ = corpus.sample_crops([name], crops, seed=[seed])
        x = corpus.to_tensor(images) / 2 + 0.5
        with torch.no_grad():
            per_photo[name] = {
                f"lite{v}": round(float((lite.top1(m, x, v) == class_index).float().mean()), 4)
                for v, m in models.items()
            }
    # over training photos only (what the generator learned), grouped as the generator probe groups them
    by_caption = {cap: [n for n in members if n in per_photo] for cap, members in subjects.captions().items()}
    by_caption = {cap: members for cap, members in by_caption.items() if members}
    per_caption = {
        cap: {
            k: round(sum(per_photo[n][k] for n in members) / len(members), 4) for k in per_photo[members[0]]
        }
        for cap, members in by_caption.items()
    }
    return {"photos": per_photo, "captions": per_caption, "caption_photos": by_caption}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python experiments/caption_rates.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--class-index", type=int, default=111, help="ImageNet class index (default 111, nematode)"
    )
    parser.add_argument("--crops", type=int, default=32, help="crops per photo")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--photos", default=None, help="comma-separated photo names (default: every captioned "
                        "training photo and the reference photo)")  # fmt: skip
    parser.add_argument("--variants", default="0,1,2", help="EfficientNet-Lite variants, comma-separated")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if not 0 <= args.class_index < 1000:
        parser.error(f"--class-index must be an ImageNet class index (0-999), not {args.class_index}")
    if args.crops < 1:
        parser.error(f"--crops must be at least 1, not {args.crops}")
    try:
        variants = [int(v) for v in args.variants.split(",")]
    except ValueError:
        parser.error(f"--variants takes comma-separated integers, not {args.variants!r}")
    if not set(variants) <= {0, 1, 2}:
        parser.error(f"--variants takes 0, 1 and/or 2, not {args.variants!r}")
    if args.photos is None:
        names = [p.name for p in corpus.photos("train") + corpus.photos("reference")]
    else:
        names = [n.strip() for n in args.photos.split(",") if n.strip()]
    try:
        for name in names:
            corpus.photo(name)  # an unknown name is a one-line error
        with torch_threads(2):
            result = rates(names, args.class_index, args.crops, args.seed, variants)
    except SpurgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    command = "python experiments/caption_rates.py " + " ".join(sys.argv[1:] if argv is None else argv)
    record = {
        "command": command,
        "class_index": args.class_index,
        "crops": args.crops,
        "seed": args.seed,
        **result,
    }
    for cap, row in result["captions"].items():
        print(f"{cap:<26} " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()))
    if args.out is not None:
        write_json(args.out, record)
        print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
