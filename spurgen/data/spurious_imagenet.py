"""The Spurious ImageNet layout (METHOD.md): images/<..>_<..>_<class index>_..._<component>/ per pair."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spurgen.data.images import IMAGE_EXTS
from spurgen.errors import SpurgenError


@dataclass(frozen=True)
class Pair:
    folder: Path
    class_index: int
    component: int
    num_images: int


def parse_folder_name(name: str) -> tuple[int, int] | None:
    """(class index, component) from a folder name: token 2 and the last token, split on '_'."""
    tokens = name.split("_")
    if len(tokens) < 4:
        return None
    try:
        return int(tokens[2]), int(tokens[-1])
    except ValueError:
        return None


def scan(images_dir: str | Path) -> list[Pair]:
    root = Path(images_dir).expanduser()
    if not root.is_dir():
        raise SpurgenError(f"Spurious ImageNet folder {root} does not exist")
    pairs = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        parsed = parse_folder_name(sub.name)
        if parsed is None:
            continue
        n = sum(1 for f in sub.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        pairs.append(Pair(sub, parsed[0], parsed[1], n))
    if not pairs:
        raise SpurgenError(
            f"{root} holds no Spurious ImageNet folders (names like x_y_<class index>_..._<component>)"
        )
    return pairs


def dataset_version(images_dir: str | Path) -> str | None:
    stamp = Path(images_dir).expanduser() / "timestamp.txt"
    return stamp.read_text().strip() if stamp.exists() else None


def class_pairs(images_dir: str | Path, class_index: int) -> list[Pair]:
    """Every (class, component) folder of class `class_index`, by component. Spurious ImageNet's official
    spurious score pools them all (its SpuriousDataset labels each image with token 2 of its folder name)."""
    return sorted((p for p in scan(images_dir) if p.class_index == class_index), key=lambda p: p.component)


def pair_of_folder(folder: str | Path, class_index: int) -> Pair | None:
    """The pair a folder inside an images/ tree holds, when its name parses and names class `class_index`
    (a run records its component folder, not the images/ folder); None for a plain folder."""
    folder = Path(folder).expanduser()
    parsed = parse_folder_name(folder.name)
    if parsed is None or parsed[0] != class_index:
        return None
    return next((p for p in scan(folder.parent) if p.folder.name == folder.name), None)


def select_folder(images_dir: str | Path, class_index: int, component: int | None) -> Path:
    """The folder of (class, component). component=None is fine only when the class has one component."""
    candidates = [p for p in scan(images_dir) if p.class_index == class_index]
    if not candidates:
        raise SpurgenError(f"Spurious ImageNet folder {images_dir} has no images of class {class_index}")
    listing = ", ".join(
        f"component {p.component} ({p.num_images} images, {p.folder.name})" for p in candidates
    )
    if component is None:
        if len(candidates) > 1:
            raise SpurgenError(
                f"class {class_index} has several Spurious ImageNet components: {listing}; "
                "choose one with target.component=<n>"
            )
        return candidates[0].folder
    chosen = [p for p in candidates if p.component == component]
    if not chosen:
        raise SpurgenError(f"class {class_index} has no component {component}; available: {listing}")
    return chosen[0].folder
