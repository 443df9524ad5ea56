"""Recreate the autoencoder's colour photos (split `autoencoder` of experiments.mini_world.corpus) from
their Debian packages: each photo shrunk (Lanczos) to a short side of 256 px and saved as JPEG quality 92 into
experiments/mini_world/photos/, with a NOTICE naming each file's source and licence.

    apt-get download mate-backgrounds plasma-workspace-wallpapers
    dpkg -x mate-backgrounds_*.deb pkgs && dpkg -x plasma-workspace-wallpapers_*.deb pkgs
    python -m experiments.mini_world.debian_photos --root pkgs

--root is a folder the packages were extracted into (or / where they are installed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.mini_world import corpus

SHORT_SIDE = 256  # 64-px crops at the smallest scale (0.35) still come from 90 px of photo
QUALITY = 92


def package_path(root: Path, package: tuple[str, str], file: str) -> Path:
    return root / package[1].lstrip("/") / file


def shrink(src: Path, dst: Path) -> None:
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        scale = SHORT_SIDE / min(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        im.save(dst, quality=QUALITY)


def notice() -> str:
    lines = [
        "Photos in this folder: 256-px copies of Debian desktop backgrounds, used only to train the mini",
        "autoencoder (experiments/mini_world/corpus.py, split `autoencoder`). Each keeps its own licence:",
        "",
    ]
    for p in corpus.photos("autoencoder"):
        lines.append(f"{p.file}: {p.licence}; from {p.source}")
    lines += [
        "",
        "GPL-2+: https://www.gnu.org/licenses/old-licenses/gpl-2.0.html",
        "LGPL-3: https://www.gnu.org/licenses/lgpl-3.0.html",
        "CC-BY-SA-4.0: https://creativecommons.org/licenses/by-sa/4.0/",
        "Full-size originals (the preferred form for modification): the Debian packages named above.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.mini_world.debian_photos", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--root", type=Path, default=Path("/"), help="where the packages were extracted")
    parser.add_argument("--out", type=Path, default=corpus.PHOTO_DIR)
    args = parser.parse_args(argv)
    table = {name: (file, package) for name, file, package, *_ in corpus.DEBIAN_PHOTOS}
    missing = [
        str(package_path(args.root, pkg, f))
        for f, pkg in table.values()
        if not package_path(args.root, pkg, f).is_file()
    ]
    if missing:
        print(
            f"error: {len(missing)} photo(s) missing under --root {args.root}, e.g. {missing[0]}; "
            "extract mate-backgrounds and plasma-workspace-wallpapers there (dpkg -x)",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (file, package) in table.items():
        shrink(package_path(args.root, package, file), args.out / f"{name}.jpg")
    (args.out / "NOTICE").write_text(notice())
    print(f"wrote {len(table)} photos and NOTICE to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
