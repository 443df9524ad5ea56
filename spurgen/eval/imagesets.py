"""The image sets an evaluation compares: generated (with manifest.jsonl), reference (a plain folder or a
Spurious ImageNet images/ folder), baseline, and ImageNet validation images of the target class."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from spurgen.data import spurious_imagenet
from spurgen.data.images import IMAGE_EXTS, list_images
from spurgen.errors import SpurgenError

MANIFEST = "manifest.jsonl"
GENERATE_JSON = "generate.json"


@dataclass
class ImageSet:
    name: str
    folder: Path
    paths: list[Path]
    records: list[dict] = field(default_factory=list)  # manifest record per image ({} when unknown)

    @property
    def templates(self) -> list[str | None]:
        return [r.get("template") for r in self.records] if self.records else [None] * len(self.paths)


def read_manifest(folder: Path) -> dict[str, dict]:
    """file name -> record, from folder/manifest.jsonl (empty if absent)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return {}
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise SpurgenError(f"{path} line {n} is not valid JSON") from None
            out[rec["file"]] = rec
    return out


def read_generate_json(folder: Path) -> dict:
    path = Path(folder) / GENERATE_JSON
    return json.loads(path.read_text()) if path.exists() else {}


def load_folder(name: str, folder: str | Path) -> ImageSet:
    """Every image directly inside `folder`, with its manifest record when there is one. Checked cheaply
    (file headers only) so a folder nothing can be read from fails before any classifier is built."""
    folder = Path(folder).expanduser()
    paths = _image_files(folder)
    unreadable = [p.name for p in paths if not _readable(p)]
    if unreadable:
        more = f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""
        raise SpurgenError(f"cannot read image {folder / unreadable[0]}{more}: not an image file")
    manifest = read_manifest(folder)
    return ImageSet(name, folder, paths, [manifest.get(p.name, {}) for p in paths])


def _image_files(folder: Path) -> list[Path]:
    try:
        return list_images(folder)
    except SpurgenError as exc:
        others = sorted(
            p.name
            for p in (folder.iterdir() if folder.is_dir() else [])
            if p.is_file() and not p.name.startswith(".") and p.name not in (MANIFEST, GENERATE_JSON)
        )
        if not others:
            raise
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise SpurgenError(f"{exc}; its files ({listed}) are not images") from None


def _readable(path: Path) -> bool:
    """The file opens as an image (the header only: nothing is decoded)."""
    try:
        with Image.open(path):
            return True
    except Image.DecompressionBombError:
        return True  # an image, too large to decode: loading it says so (spurgen.data.images.load_rgb)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_EXTS for p in folder.iterdir())


def load_reference(folder: str | Path, class_index: int, component: int | None) -> ImageSet:
    """A plain folder, or a Spurious ImageNet images/ folder (the class's component folder is chosen)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SpurgenError(f"reference folder {folder} does not exist")
    if not _has_images(folder) and any(p.is_dir() for p in folder.iterdir()):
        folder = spurious_imagenet.select_folder(folder, class_index, component)
    return load_folder("reference", folder)


@dataclass
class ReferencePool:
    """Spurious ImageNet's images of the target class over all its components: the official spurious score
    pools them (METHOD.md, 'Evaluation'), while the reference set holds one component's images."""

    component: int  # the reference set's own component
    components: list[int]  # the class's components with images, ascending (the reference set's too)
    others: ImageSet | None  # the images of the other components; None when the class has only one


def reference_pool(reference: ImageSet, class_index: int) -> ReferencePool | None:
    """The pool of the reference set's class, when its folder is a component folder of a Spurious ImageNet
    images/ tree; None for a plain reference folder (no components: the pooled score is the set's own)."""
    pair = spurious_imagenet.pair_of_folder(reference.folder, class_index)
    if pair is None:
        return None
    # an empty folder adds nothing to the pool
    pairs = [p for p in spurious_imagenet.class_pairs(reference.folder.parent, class_index) if p.num_images]
    other_sets = [
        load_folder("reference_other_components", p.folder)
        for p in pairs
        if p.folder.name != pair.folder.name
    ]
    others = None
    if other_sets:
        paths = [path for s in other_sets for path in s.paths]
        others = ImageSet("reference_other_components", reference.folder.parent, paths, [{} for _ in paths])
    return ReferencePool(pair.component, [p.component for p in pairs], others)


def load_imagenet_val(folder: str | Path, class_index: int) -> ImageSet:
    """A folder of validation images of class k; or an ImageNet val/ tree with a <wnid>/ subfolder."""
    folder = Path(folder).expanduser()
    if folder.is_dir() and not _has_images(folder):
        from timm.data import ImageNetInfo

        wnid = ImageNetInfo().index_to_label_name(class_index)
        if (folder / wnid).is_dir():
            folder = folder / wnid
    return load_folder("imagenet_val", folder)
