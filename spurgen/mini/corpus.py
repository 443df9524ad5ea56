"""The mini world's photo corpus: photos that installed packages ship, one caption per subject, and
deterministic random crops (docs/mini_world.md has the table of sources and licences).

The split keeps the experiment honest (issue 12):
- `reference`: scikit-image's `moon`, the photo the default references come from. None of its crops is in
  any pre-training; its concept noun ("texture") is the caption of three other photos (brick, gravel,
  grass), so the class prompt "a photo of a texture" means something the model learned elsewhere.
- `heldout`: photos no part is trained on, kept to measure the autoencoder (and later the generator).
- `train`: the photos whose crops pre-train the mini parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np

from spurgen.errors import SpurgenError

Split = Literal["train", "heldout", "reference"]
SIZE = 64  # output side of every crop, in pixels
SCALES = (1.0, 0.6, 0.35)  # crop side as a fraction of the photo's short side
SKIMAGE = "scikit-image 0.26 (skimage/data)"
MPL = "matplotlib (mpl-data/sample_data)"


@dataclass(frozen=True)
class Photo:
    """One packaged photo: where it comes from, its licence, its subject and its split."""

    name: str
    file: str  # file name inside the package's data folder
    package: str
    subject: str  # the caption noun: "a photo of a <subject>"
    licence: str
    source: str
    split: Split


PHOTOS: tuple[Photo, ...] = (
    Photo(
        "chelsea",
        "chelsea.png",
        SKIMAGE,
        "cat",
        "CC0 (photographer Stefan van der Walt)",
        "scikit-image",
        "train",
    ),
    Photo(
        "astronaut",
        "astronaut.png",
        SKIMAGE,
        "person",
        "public domain (NASA)",
        "NASA Great Images, https://flic.kr/p/r9qvLn",
        "train",
    ),
    Photo(
        "grace_hopper",
        "grace_hopper.jpg",
        MPL,
        "person",
        "public domain (U.S. Navy photo)",
        "matplotlib sample data",
        "train",
    ),
    Photo(
        "camera", "camera.png", SKIMAGE, "person", "CC0 (photographer Lav Varshney)", "scikit-image", "train"
    ),
    Photo(
        "rocket",
        "rocket.jpg",
        SKIMAGE,
        "rocket",
        "public domain (SpaceX)",
        "https://www.flickr.com/photos/spacexphotos/16511594820",
        "train",
    ),
    Photo(
        "coins",
        "coins.png",
        SKIMAGE,
        "coin",
        "no known copyright restrictions",
        "Brooklyn Museum open collection",
        "train",
    ),
    Photo(
        "horse",
        "horse.png",
        SKIMAGE,
        "horse",
        "CC0 (Andreas Preuss, openclipart)",
        "http://openclipart.org/detail/158377/horse-by-marauder",
        "train",
    ),
    Photo("brick", "brick.png", SKIMAGE, "texture", "CC0", "CC0Textures Bricks25", "train"),
    Photo("gravel", "gravel.png", SKIMAGE, "texture", "CC0", "CC0Textures Gravel04", "train"),
    Photo("grass", "grass.png", SKIMAGE, "texture", "CC0", "DeviantArt linolafett Grass-01", "train"),
    Photo(
        "hubble_deep_field",
        "hubble_deep_field.jpg",
        SKIMAGE,
        "galaxy",
        "public domain (NASA)",
        "hubblesite.org release 2012-37",
        "train",
    ),
    Photo(
        "retina",
        "retina.jpg",
        SKIMAGE,
        "retina",
        "CC0 1.0",
        "Wikimedia Commons, Fundus_photograph_of_normal_left_eye.jpg",
        "train",
    ),
    Photo(
        "ihc",
        "ihc.png",
        SKIMAGE,
        "tissue",
        "no known copyright restrictions",
        "scikit-image (immunohistochemistry)",
        "train",
    ),
    Photo(
        "coffee",
        "coffee.png",
        SKIMAGE,
        "cup",
        "CC0 (photographer Rachel Michetti)",
        "scikit-image",
        "heldout",
    ),
    Photo(
        "motorcycle_left",
        "motorcycle_left.png",
        SKIMAGE,
        "motorcycle",
        "not stated (Middlebury 2014 stereo datasets, research use)",
        "Scharstein et al., GCPR 2014",
        "heldout",
    ),
    Photo(
        "microaneurysms",
        "microaneurysms.png",
        SKIMAGE,
        "retina",
        "CC0 (Andreas Maier)",
        "https://www5.cs.fau.de/research/data/fundus-images/",
        "heldout",
    ),
    Photo(
        "moon",
        "moon.png",
        SKIMAGE,
        "texture",
        "not stated in scikit-image (shipped in its BSD-3 package)",
        "scikit-image",
        "reference",
    ),
)

REFERENCE_PHOTO = "moon"
REFERENCE_CONCEPT = "texture"


def caption(subject: str) -> str:
    """The one caption of a subject (the class-prompt form of METHOD.md: "a photo of a <concept>")."""
    return f"a photo of a {subject}"


def photos(split: Split | None = None) -> tuple[Photo, ...]:
    """The corpus's photos, in table order, optionally of one split."""
    return tuple(p for p in PHOTOS if split is None or p.split == split)


def photo(name: str) -> Photo:
    """The photo called `name`; a one-line error lists the names on a typo."""
    for p in PHOTOS:
        if p.name == name:
            return p
    raise SpurgenError(f"mini corpus: no photo {name!r}; photos: {', '.join(p.name for p in PHOTOS)}")


def _data_dir(package: str) -> Path:
    if package == MPL:
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data"
    try:
        import skimage
    except ImportError:
        raise SpurgenError("the mini corpus needs scikit-image: pip install scikit-image==0.26.0") from None
    return Path(skimage.__file__).parent / "data"


@cache
def load_photo(name: str) -> np.ndarray:
    """The photo as (H, W, 3) uint8 RGB; grey photos are repeated over the three channels."""
    from PIL import Image

    p = photo(name)
    path = _data_dir(p.package) / p.file
    if not path.is_file():
        raise SpurgenError(f"mini corpus: {path} is missing; reinstall {p.package.split(' (')[0]}")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    arr.setflags(write=False)
    return arr


def crop_box(rng: np.random.Generator, height: int, width: int, scales: Sequence[float] = SCALES) -> tuple:
    """A square box (top, left, side): side = a random scale times the short side, position uniform."""
    side = max(1, round(float(rng.choice(scales)) * min(height, width)))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    return top, left, side


def cut(image: np.ndarray, box: tuple, size: int = SIZE) -> np.ndarray:
    """The box of `image` resized (bicubic, antialiased) to size x size: (size, size, 3) uint8."""
    from PIL import Image

    top, left, side = box
    patch = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(patch.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None))


def centre_box(image: np.ndarray) -> tuple:
    """The largest centred square (the view the classifiers' labels in docs/mini_world.md use)."""
    h, w = image.shape[:2]
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side


@dataclass(frozen=True)
class Crop:
    """Where a crop came from: the photo, the box and the caption."""

    photo: str
    box: tuple
    caption: str


def sample_crops(
    names: Sequence[str],
    n: int,
    seed: int | Sequence[int],
    scales: Sequence[float] = SCALES,
    size: int = SIZE,
) -> tuple[np.ndarray, list[Crop]]:
    """`n` crops drawn uniformly over `names` with numpy's PCG64 seeded by `seed` (an int or a list of
    ints such as [seed, step]): (n, size, size, 3)
    uint8 and what each crop is. The same arguments give the same crops on every machine."""
    if not names:
        raise SpurgenError("mini corpus: no photos to crop")
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    crops = []
    for i in range(n):
        name = names[int(rng.integers(len(names)))]
        image = load_photo(name)
        box = crop_box(rng, *image.shape[:2], scales=scales)
        out[i] = cut(image, box, size)
        crops.append(Crop(name, box, caption(photo(name).subject)))
    return out, crops


def to_tensor(images: np.ndarray):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1], the autoencoder's range."""
    import torch

    return torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def split_table() -> dict[str, list[str]]:
    """The split, written into the manifest: split -> photo names."""
    return {s: [p.name for p in photos(s)] for s in ("train", "heldout", "reference")}
