"""Results flow back: keep only the images reviewers accepted. `spurgen review filter <db> <folder>` copies the
accepted images of a folder (a run's generated/, or a dataset folder that `spurgen export` wrote) into a new
dataset folder whose manifest carries each image's vote counts (docs/review.md, 'Results').

`spurgen export review=<db>` does the same to the dataset it writes (restrict_dataset). Images are matched by
content hash, so a copy made by `spurgen export` matches the reviewed original."""

from __future__ import annotations

import json
from pathlib import Path

from spurgen.errors import SpurgenError
from spurgen.eval.imagesets import read_manifest
from spurgen.files import copy_atomic, manifest_files, remove_unlisted, write_json, write_jsonl
from spurgen.review.items import file_hash, safe_files
from spurgen.review.results import accepted
from spurgen.review.store import open_existing

RULE = "a majority says spurious_feature=yes and a majority class_object=no ('unsure' is not acceptance)"


def _images_and_manifest(folder: Path) -> tuple[list[Path], dict[str, dict]]:
    """The image files and their manifest records by file name; a dataset folder of `spurgen export`
    (images/ + manifest.jsonl with 'images/<name>' entries) is read as its images/."""
    if (folder / "images").is_dir() and (folder / "manifest.jsonl").is_file():
        manifest = {Path(k).name: v for k, v in read_manifest(folder).items()}
        return safe_files(folder / "images"), manifest
    return safe_files(folder), read_manifest(folder)


def accepted_votes(db: str | Path, min_votes: int) -> dict[str, dict]:
    """image hash -> vote record (results.accepted) of every image the review database accepts."""
    if min_votes < 1:
        raise SpurgenError(f"min_votes must be >= 1, got {min_votes}")
    store = open_existing(db)
    try:
        if store.mode != "review":
            raise SpurgenError(f"{db} holds a {store.mode}, not a review: it has no accept/reject answers")
        return {rec["image_hash"]: rec for rec in accepted(store.answers(), min_votes)}
    finally:
        store.close()


def _review_fields(rec: dict) -> dict:
    return {k: rec[k] for k in ("votes", "spurious_feature", "class_object", "image_hash")}


def restrict_dataset(db: str | Path, dataset: str | Path, min_votes: int) -> dict:
    """`spurgen export review=<db>`: keep in a dataset folder just written by `spurgen export` only the images
    reviewers accepted, each manifest record gaining `review` (its votes); the manifest is rewritten first,
    then the others' copies are removed, and dataset.json records the rule and the count."""
    dataset = Path(dataset)
    votes = accepted_votes(db, min_votes)
    kept, dropped = [], []
    for rec in read_manifest(dataset).values():
        hit = votes.get(file_hash(dataset / rec["file"]))
        if hit is None:
            dropped.append(dataset / rec["file"])
        else:
            kept.append({**rec, "review": _review_fields(hit)})
    write_jsonl(dataset / "manifest.jsonl", kept)
    for path in dropped:
        path.unlink()
    meta = json.loads((dataset / "dataset.json").read_text())
    meta.update(review_db=str(db), review_min_votes=min_votes, review_rule=RULE, num_exported=len(kept))
    write_json(dataset / "dataset.json", meta)
    return meta


def filter_folder(db: str | Path, folder: str | Path, out_dir: str | Path, min_votes: int) -> dict:
    """Copy the images of `folder` that reviewers accepted (results.accepted: a majority says the feature is
    shown and the class object is not, with >= min_votes votes; 'unsure' is not acceptance; images with no
    votes are left out) into out_dir/images with manifest.jsonl and dataset.json; return the summary."""
    folder, out_dir = Path(folder).expanduser(), Path(out_dir)
    if not folder.is_dir():
        raise SpurgenError(f"{folder} is not a folder")
    votes = accepted_votes(db, min_votes)
    paths, manifest = _images_and_manifest(folder)
    earlier = manifest_files(out_dir)  # a previous filter into out_dir: its images not accepted now must go
    out_dir.mkdir(parents=True, exist_ok=True)  # written even when nothing is accepted
    records = []
    for path in paths:
        rec = votes.get(file_hash(path))
        if rec is None:
            continue
        dest = out_dir / "images" / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy_atomic(path, dest)
        keep = {k: v for k, v in manifest.get(path.name, {}).items() if k not in ("file", "source")}
        records.append(
            {"file": f"images/{path.name}", "source": str(path), **keep, "review": _review_fields(rec)}
        )
    write_jsonl(out_dir / "manifest.jsonl", records)
    summary = {
        "source": str(folder),
        "review_db": str(db),
        "rule": RULE,
        "min_votes": min_votes,
        "num_images": len(paths),
        "num_accepted": len(records),
    }
    write_json(out_dir / "dataset.json", summary)
    remove_unlisted(out_dir, earlier, {rec["file"] for rec in records})
    return summary
