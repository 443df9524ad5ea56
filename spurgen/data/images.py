"""Reading image files robustly: any common format, EXIF orientation applied, always RGB."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from spurgen.errors import SpurgenError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name. Raises SpurgenError if missing or empty."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise SpurgenError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise SpurgenError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise SpurgenError(f"image folder {folder} holds no images ({', '.join(IMAGE_EXTS)})")
    return files


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image, apply its EXIF orientation, convert RGBA/LA/P/L/CMYK to RGB (alpha onto white)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except Image.DecompressionBombError as exc:
        raise SpurgenError(
            f"cannot read image {path}: {exc} (PIL refuses images this large: downscale it)"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SpurgenError(f"cannot read image {path}: {exc}") from None
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


def warn_if_small(im: Image.Image, resolution: int, path: Path) -> None:
    if min(im.size) < resolution:
        warnings.warn(
            f"{path.name} is {im.size[0]}x{im.size[1]}, smaller than the training resolution {resolution}: "
            "it is upscaled (bicubic), which blurs it",
            stacklevel=2,
        )
