"""Blinding for study mode: every image, whatever its set, is re-encoded to one size and one format with no
metadata, so neither the file format, the size, nor spurgen's PNG text chunks (prompt, seed) tell a reviewer
which set it came from (docs/review.md, 'Study mode')."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

FORMAT = "JPEG"
MEDIA_TYPE = "image/jpeg"


def reencode(source: Path | bytes, size: int, quality: int = 92) -> bytes:
    """The image (a file, or its bytes) centre-cropped to a square, resized to size x size (bicubic), as a
    baseline JPEG in RGB with no EXIF, ICC profile, comment or text chunk."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        im = ImageOps.exif_transpose(im)  # a camera's orientation tag is applied, then dropped
        rgb = im.convert("RGB")
    square = ImageOps.fit(rgb, (size, size), method=Image.Resampling.BICUBIC)
    clean = Image.new("RGB", square.size)
    clean.paste(square)  # a fresh image: no .info carried over from the source
    buf = io.BytesIO()
    clean.save(buf, format=FORMAT, quality=quality, optimize=False, progressive=False)
    return buf.getvalue()
