"""Do a mini generator's captions give images the classifier sees as their subject? (docs/mini_world.md)

    python -m experiments.mini_world.subjects --pipeline spurgen/assets/mini --out docs/benchmarks/generator_probe/shipped.json

For each caption of the corpus's training photos, `per_caption` images are generated (DDIM 20 steps, guidance
4, seed 0: model=mini's generation settings) and labelled by EfficientNet-Lite0. An image is a
hit when its top-1 label is among the `top` labels Lite0 gives most often to crops of that caption's own
photos. Comparing label sets, not ImageNet classes, works for captions such as "a photo of a texture" that no
ImageNet class names: it asks whether the classifier sees the generated image as it sees the photos. Lite0
is the mini world's SFSL extractor; both autoencoder recipes use no Lite0 at all.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

from experiments.mini_world import corpus, lite
from spurgen.errors import SpurgenError
from spurgen.files import write_json
from spurgen.torch_threads import torch_threads

PHOTO_CROPS = 48
PHOTO_SEED = 11


def captions() -> dict[str, list[str]]:
    """{caption: names of the training photos it covers}, sorted by caption."""
    table: dict[str, list[str]] = collections.defaultdict(list)
    for p in corpus.photos("train"):
        table[corpus.caption(p.subject)].append(p.name)
    return dict(sorted(table.items()))


@torch.no_grad()
def photo_labels(model, names: list[str], top: int) -> list[int]:
    """The `top` labels Lite0 gives most often to PHOTO_CROPS seeded crops of the photos `names`."""
    images, _ = corpus.sample_crops(names, PHOTO_CROPS, seed=[PHOTO_SEED])
    counts = collections.Counter(lite.top1(model, corpus.to_tensor(images).add(1).div(2), 0).tolist())
    return sorted(c for c, _ in counts.most_common(top))


@torch.no_grad()
def subject_agreement(pipe, model, per_caption: int = 8, top: int = 5, seed: int = 0) -> dict:
    """{"captions": {caption: {"photo_labels", "generated", "hits"}}, "hits", "images", "rate"}."""
    rows, hits = {}, 0
    for caption, names in captions().items():
        labels = photo_labels(model, names, top)
        images = pipe([caption] * per_caption, height=corpus.SIZE, width=corpus.SIZE, num_inference_steps=20,
                      guidance_scale=4.0, output_type="pt", generator=torch.Generator().manual_seed(seed)).images  # fmt: skip
        generated = lite.top1(model, images, 0).tolist()
        row_hits = sum(c in labels for c in generated)
        rows[caption] = {"photo_labels": labels, "generated": generated, "hits": row_hits}
        hits += row_hits
    images_total = per_caption * len(rows)
    return {"captions": rows, "hits": hits, "images": images_total, "rate": round(hits / images_total, 4)}


def load_pipeline(folder: Path):
    """A plain StableDiffusionPipeline from `folder`, float32, without safety checker."""
    from diffusers import StableDiffusionPipeline

    if not (folder / "model_index.json").is_file():
        raise SpurgenError(f"--pipeline {folder}: no diffusers pipeline folder (model_index.json is missing)")
    pipe = StableDiffusionPipeline.from_pretrained(
        folder,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        dtype=torch.float32,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.mini_world.subjects", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--pipeline", type=Path, required=True, help="a mini StableDiffusionPipeline folder")
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    parser.add_argument("--per-caption", type=int, default=8)
    args = parser.parse_args(argv)
    if args.per_caption < 1:
        parser.error("--per-caption must be at least 1")
    try:
        with torch_threads(1):  # one thread: the recorded labels replay exactly
            result = subject_agreement(load_pipeline(args.pipeline), lite.load_lite(0), args.per_caption)
    except SpurgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    result["pipeline"] = str(args.pipeline)
    for caption, row in result["captions"].items():
        print(f"{caption:24s} hits {row['hits']}/{args.per_caption}  generated {row['generated']}")
    print(f"subject agreement: {result['hits']}/{result['images']} = {result['rate']:.2f}")
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
