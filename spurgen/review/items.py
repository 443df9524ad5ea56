"""The images a review or study shows: found once at start-up in the configured folders and served only by
opaque id, so no path from a request ever reaches the file system (docs/review.md, 'Guarantees and threat model').

A run folder gives its generated/ set (and baseline/, reference sets added by name); an image folder is one
set. A file whose real path leaves its folder (a symlink out of it) is never listed, nor is a file that does
not decode as an image. Each item records its content hash, size and mtime, so a file changed after start-up
is detected and refused rather than served under its old id.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from spurgen.data.images import IMAGE_EXTS
from spurgen.errors import SpurgenError
from spurgen.eval.imagesets import read_generate_json, read_manifest
from spurgen.files import sha256_file
from spurgen.review.store import ImageRef

BROWSER_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


@dataclass
class Item:
    """One image: its opaque id, content hash, set, file (resolved, inside root) and what the page may show."""

    id: str  # set once the database (its salt) is open: opaque_id
    hash: str
    set_name: str
    path: Path
    root: Path
    info: dict = field(default_factory=dict)  # prompt, template, predictions (review mode only)
    media: str = "application/octet-stream"  # of the decoded format, whatever the file's suffix
    stat: tuple[int, int] = (0, 0)  # (size, mtime_ns) when read

    @property
    def ref(self) -> ImageRef:
        return ImageRef(self.hash, self.set_name, self.path.name)

    def unchanged(self) -> bool:
        """The file still has the size and mtime it had when read, and still lies inside its folder."""
        try:
            st = self.path.stat()
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == self.stat and inside(self.path, self.root)


def file_hash(path: Path) -> str:
    return sha256_file(path)


def bytes_hash(data: bytes) -> str:
    """The same hash as file_hash, of bytes already read."""
    return hashlib.sha256(data).hexdigest()


# what PIL raises for a file it cannot decode (not an image, truncated, a decompression bomb)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def read_image(path: Path) -> tuple[bytes, str, tuple[int, int]] | None:
    """(the file's bytes, the media type of its decoded format, (size, mtime_ns)), or None for a file that
    does not decode fully as an image a browser shows."""
    try:
        st = path.stat()
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.load()
    except DECODE_ERRORS:
        return None
    if fmt not in BROWSER_FORMATS:
        return None
    return data, Image.MIME[fmt], (st.st_size, st.st_mtime_ns)


def opaque_id(salt: str, content_hash: str) -> str:
    """An id that names neither the file nor its set (salted per database, stable across restarts)."""
    return hashlib.sha256(f"{salt}:{content_hash}".encode()).hexdigest()[:20]


def inside(path: Path, root: Path) -> bool:
    """path's real location (symlinks followed) lies in root's real location."""
    try:
        path.resolve(strict=True).relative_to(root.resolve(strict=True))
        return True
    except (OSError, ValueError):
        return False


def safe_files(folder: Path) -> list[Path]:
    """Image files directly in folder whose real path stays inside it, sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") and p.is_file() and inside(p, folder)
    )


def resolve_sets(path: str | Path, extra: dict[str, str], study: bool) -> dict[str, Path]:
    """set name -> folder. A run folder gives generated/ (and, in a study, baseline/ when present); any
    other folder is one set named after itself; `extra` (name -> folder, --set) is added."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise SpurgenError(f"{root} is not a folder (give a run folder or a folder of images)")
    sets: dict[str, Path] = {}
    if (root / "generated").is_dir():
        sets["generated"] = root / "generated"
        if study and (root / "baseline").is_dir():
            sets["baseline"] = root / "baseline"
    else:
        sets[root.name or "images"] = root
    for name, folder in extra.items():
        if not Path(folder).expanduser().is_dir():
            raise SpurgenError(f"--set {name}={folder}: not a folder")
        sets[name] = Path(folder).expanduser()
    return sets


def read_predictions(folder: Path) -> dict[str, dict]:
    """file name -> record of <run>/eval/predictions.jsonl for a run's generated/ folder ({} when none)."""
    path = folder.parent / "eval" / "predictions.jsonl"
    if folder.name != "generated" or not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[rec["file"]] = rec
    return out


def top3(record: dict, target: int | None) -> list[dict]:
    """Every classifier's top-3 as [{classifier, top: [{name, p, target}]}] for the review page."""
    from spurgen import imagenet

    out = []
    for name, c in (record.get("classifiers") or {}).items():
        top = [
            {"name": imagenet.short_name(int(k)), "p": round(float(p), 3), "target": int(k) == target}
            for k, p in list(zip(c["top5"], c["top5_p"], strict=False))[:3]
        ]
        out.append({"classifier": name, "top": top})
    return out


def load_items(sets: dict[str, Path], predictions: bool) -> tuple[list[Item], list[Path]]:
    """(every readable image of every set, once per content hash, the first set that holds it winning; the
    files skipped because they do not decode as images). Ids are left to assign_ids."""
    items: dict[str, Item] = {}
    skipped: list[Path] = []
    for set_name, folder in sets.items():
        root = folder.resolve()
        manifest = read_manifest(root)
        preds = read_predictions(root) if predictions else {}
        target = read_generate_json(root).get("class_index")
        for p in safe_files(root):
            found = read_image(p)
            if found is None:
                skipped.append(p)
                continue
            data, media, stat = found
            h = bytes_hash(data)
            rec = manifest.get(p.name, {})
            info = {k: rec.get(k) for k in ("prompt", "template")}
            if predictions and p.name in preds:
                info["predictions"] = top3(preds[p.name], target)
            items.setdefault(h, Item("", h, set_name, p.resolve(), root, info, media, stat))
    return list(items.values()), skipped


def assign_ids(items: list[Item], salt: str) -> list[Item]:
    """Give every item its opaque id under the database's salt."""
    for item in items:
        item.id = opaque_id(salt, item.hash)
    return items
