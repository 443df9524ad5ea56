"""The mini world's photo corpus: photos that installed packages ship, one caption per subject, and
deterministic random crops (docs/mini_world.md has the table of sources and licences).

The split keeps the experiment honest:
- `reference`: scikit-image's `moon`, the photo the default references come from. None of its crops is in
  any pre-training; its concept noun ("texture") is the caption of two other photos (brick, gravel), so
  the class prompt "a photo of a texture" means something the model learned elsewhere. Grass is "a lawn", not
  "a texture": Lite0/1/2 call most grass crops nematode (experiments/caption_rates.py), which would put the
  un-fine-tuned baseline at the experiment's answer.
- `heldout`: photos no part is trained on, kept to measure the autoencoder (and later the generator).
- `train`: the photos whose crops pre-train the mini parts.
- `autoencoder`: colour photos from Debian desktop-background packages that only the autoencoder trains on
  (never captioned, never seen by the UNet or text encoder). spurgen ships 256-px copies of them in
  experiments/mini_world/photos/ (`python -m experiments.mini_world.debian_photos` recreates them from the
  packages).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np

from spurgen.errors import SpurgenError

Split = Literal["train", "autoencoder", "heldout", "reference"]
SIZE = 64  # output side of every crop, in pixels
SCALES = (1.0, 0.6, 0.35)  # crop side as a fraction of the photo's short side
SKIMAGE = "scikit-image 0.26 (skimage/data)"
MPL = "matplotlib (mpl-data/sample_data)"
SHIPPED = "spurgen (experiments/mini_world/photos: 256-px copies)"
PHOTO_DIR = Path(__file__).resolve().parent / "photos"  # pre-training data: not in the package


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
    Photo("grass", "grass.png", SKIMAGE, "lawn", "CC0", "DeviantArt linolafett Grass-01", "train"),
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

# Colour photos from two Debian packages, for the autoencoder only (split `autoencoder`). Each entry: name,
# the file in the package, the package and version, what it shows, the licence and its holder.
MATE = ("mate-backgrounds 1.26.0-1", "/usr/share/backgrounds/mate/nature")
PLASMA = ("plasma-workspace-wallpapers 4:5.27.5-2", "/usr/share/wallpapers")
DEBIAN_PHOTOS: tuple[tuple[str, str, tuple[str, str], str, str], ...] = (
    ("aqua", "Aqua.jpg", MATE, "water drop", "GPL-2+ (2008 Charles Barbin)"),
    ("blinds", "Blinds.jpg", MATE, "leaf", "GPL-2+ (2008 Lennart Poettering, Andrea Cimitan)"),
    ("dune", "Dune.jpg", MATE, "dune grass", "GPL-2+ (2007 Marco Cogoni, 2008 Hylke Bons)"),
    ("fresh_flower", "FreshFlower.jpg", MATE, "flower", "GPL-2+ (2005 Jens Ansorg)"),
    ("garden", "Garden.jpg", MATE, "flower", "GPL-2+ (2008 Charles Barbin)"),
    (
        "green_meadow",
        "GreenMeadow.jpg",
        MATE,
        "grass",
        "GPL-2+ (2005 Timothy Schellhase, 2008 Lapo Calamandrei)",
    ),
    ("lady_bird", "LadyBird.jpg", MATE, "ladybird", "GPL-2+ (2008 Charles Barbin)"),
    ("rain_drops", "RainDrops.jpg", MATE, "leaves", "GPL-2+ (2008 blackcombwhistler07)"),
    ("storm", "Storm.jpg", MATE, "sky", "GPL-2+ (2008 Sergey Nazarov)"),
    ("two_wings", "TwoWings.jpg", MATE, "dandelion seeds", "GPL-2+ (2008 Charles Barbin, Hylke Bons)"),
    ("wood", "Wood.jpg", MATE, "wood", "GPL-2+ (2008 Jean-Francois Fortin Tam)"),
    ("yellow_flower", "YellowFlower.jpg", MATE, "flower", "GPL-2+ (2008 Charles Barbin)"),
    ("by_the_water", "BytheWater/contents/images/2560x1440.jpg", PLASMA, "lake", "LGPL-3 (Maciej Wiklo)"),
    ("cold_ripple", "ColdRipple/contents/images/2560x1440.jpg", PLASMA, "pier", "LGPL-3 (Risto Saukonpaa)"),
    ("colorful_cups", "ColorfulCups/contents/images/2560x1600.jpg", PLASMA, "cups", "LGPL-3 (Dmitri Popov)"),
    ("darkest_hour", "DarkestHour/contents/images/2560x1440.jpg", PLASMA, "lake", "LGPL-3 (Risto Saukonpaa)"),
    ("evening_glow", "EveningGlow/contents/images/2560x1440.jpg", PLASMA, "boats", "LGPL-3 (Ian Hex)"),
    ("fallen_leaf", "FallenLeaf/contents/images/2560x1440.jpg", PLASMA, "leaf", "LGPL-3 (Martin Klapetek)"),
    ("grey", "Grey/contents/images/2560x1440.jpg", PLASMA, "building", "LGPL-3 (Sigi Sagi)"),
    (
        "one_stands_out",
        "OneStandsOut/contents/images/2560x1440.jpg",
        PLASMA,
        "moss",
        "LGPL-3 (Risto Saukonpaa)",
    ),
    ("path", "Path/contents/images/2560x1440.jpg", PLASMA, "forest", "LGPL-3 (Risto Saukonpaa)"),
    ("shell", "Shell/contents/images/5120x2880.jpg", PLASMA, "beach", "CC-BY-SA-4.0 (Lucas Andrade)"),
    ("kite", "Kite/contents/images/2560x1440.jpg", PLASMA, "kite", "LGPL-3 (Risto Saukonpaa)"),
    ("summer_1am", "summer_1am/contents/images/2560x1440.jpg", PLASMA, "lake", "LGPL-3 (Risto Saukonpaa)"),
)


def debian_source(package: tuple[str, str], file: str) -> str:
    """Where a Debian photo comes from: "Debian <package> <version>: <path in the package>"."""
    return f"Debian {package[0]}: {package[1]}/{file}"


PHOTOS = PHOTOS + tuple(
    Photo(name, f"{name}.jpg", SHIPPED, subject, licence, debian_source(package, file), "autoencoder")
    for name, file, package, subject, licence in DEBIAN_PHOTOS
)

REFERENCE_PHOTO = "moon"
REFERENCE_CONCEPT = "texture"


def caption(subject: str) -> str:
    """The one caption of a subject (the class-prompt form of METHOD.md: "a photo of a <concept>")."""
    return f"a photo of a {subject}"


def photos(split: Split | None = None) -> tuple[Photo, ...]:
    """The corpus's photos, in table order, optionally of one split."""
    return tuple(p for p in PHOTOS if split is None or p.split == split)


def captioned_photos() -> tuple[Photo, ...]:
    """The photos of the generator's corpus (train, held-out and reference): those with a caption. The
    autoencoder's photos are never captioned, so their subjects are not words of the tokenizer."""
    return tuple(p for p in PHOTOS if p.split != "autoencoder")


def photo(name: str) -> Photo:
    """The photo called `name`; a one-line error lists the names on a typo."""
    for p in PHOTOS:
        if p.name == name:
            return p
    raise SpurgenError(f"mini corpus: no photo {name!r}; photos: {', '.join(p.name for p in PHOTOS)}")


def _data_dir(package: str) -> Path:
    if package == SHIPPED:
        return PHOTO_DIR
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
    return {s: [p.name for p in photos(s)] for s in ("train", "autoencoder", "heldout", "reference")}
