"""Results flow back: keep only the images reviewers accepted. `spurgen review filter <db> <folder>` copies the
accepted images of a folder (a run's generated/, or a dataset folder that `spurgen export` wrote) into a new
dataset folder whose manifest carries each image's vote counts (docs/review.md, 'Filtering by human labels').

Images are matched by content hash, so a copy made by `spurgen export` matches the reviewed original."""

from __future__ import annotations

from pathlib import Path

from spurgen.errors import SpurgenError
from spurgen.eval.imagesets import read_manifest
from spurgen.io import copy_atomic, write_json, write_jsonl
from spurgen.review.items import file_hash, safe_files
from spurgen.review.results import accepted
from spurgen.review.store import open_existing


def _images_and_manifest(folder: Path) -> tuple[list[Path], dict[str, dict]]:
    """The image files and their manifest records by file name; a dataset folder of `spurgen export`
    (images/ + manifest.jsonl with 'images/<name>' entries) is read as its images/."""
    if (folder / "images").is_dir() and (folder / "manifest.jsonl").is_file():
        manifest = {Path(k).name: v for k, v in read_manifest(folder).items()}
        return safe_files(folder / "images"), manifest
    return safe_files(folder), read_manifest(folder)


def filter_folder(db: str | Path, folder: str | Path, out_dir: str | Path, min_votes: int) -> dict:
    """Copy the images of `folder` that reviewers accepted (results.accepted: a majority says the feature is
    shown and the class object is not, with >= min_votes votes; 'unsure' is not acceptance; images with no
    votes are left out) into out_dir/images with manifest.jsonl and dataset.json; return the summary."""
    folder, out_dir = Path(folder).expanduser(), Path(out_dir)
    if not folder.is_dir():
        raise SpurgenError(f"{folder} is not a folder")
    if min_votes < 1:
        raise SpurgenError(f"--min-votes must be >= 1, got {min_votes}")
    store = open_existing(db)
    try:
        if store.mode != "review":
            raise SpurgenError(f"{db} holds a {store.mode}, not a review: it has no accept/reject answers")
        votes = {rec["image_hash"]: rec for rec in accepted(store.answers(), min_votes)}
    finally:
        store.close()
    paths, manifest = _images_and_manifest(folder)
    records = []
    for path in paths:
        rec = votes.get(file_hash(path))
        if rec is None:
            continue
        dest = out_dir / "images" / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy_atomic(path, dest)
        keep = {k: v for k, v in manifest.get(path.name, {}).items() if k not in ("file", "source")}
        review = {k: rec[k] for k in ("votes", "spurious_feature", "class_object", "image_hash")}
        records.append({"file": f"images/{path.name}", "source": str(path), **keep, "review": review})
    write_jsonl(out_dir / "manifest.jsonl", records)
    summary = {
        "source": str(folder),
        "review_db": str(db),
        "rule": "majority spurious_feature=yes and class_object=no ('unsure' is not acceptance)",
        "min_votes": min_votes,
        "num_images": len(paths),
        "num_accepted": len(records),
    }
    write_json(out_dir / "dataset.json", summary)
    return summary
