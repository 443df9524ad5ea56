"""The files spurgen writes and reads back. Every file it writes goes through here: written under a temporary
name in the same folder, then renamed, so a crash never leaves a half-written file that a rerun would take for a
complete one. Also: the images a dataset folder's manifest lists, the check that an output folder is writable,
and content fingerprints of files and weights folders."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin


def _tmp(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.tmp{suffix}")


def write_atomic(path: Path, text: str) -> None:
    """Write text to path (temporary file + rename)."""
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def _json_default(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else str(x)  # numpy scalars; paths and the rest as text


def _clean(obj: Any) -> Any:
    """NaN -> null, so the file is strict JSON."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def write_json(path: Path, data: dict) -> None:
    """Indented strict JSON (NaN as null; numpy scalars as numbers)."""
    write_atomic(path, json.dumps(_clean(data), indent=2, default=_json_default))


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    """One JSON object per line (an empty file for no records)."""
    lines = [json.dumps(_clean(r), default=_json_default) for r in records]
    write_atomic(path, "".join(line + "\n" for line in lines))


def write_csv(path: Path, rows: Sequence[dict], fields: Sequence[str]) -> None:
    """rows as CSV with a header of `fields`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())


def png_info(meta: dict) -> PngImagePlugin.PngInfo:
    """PNG text chunks: strings as they are, anything else as JSON."""
    info = PngImagePlugin.PngInfo()
    for k, v in meta.items():
        info.add_text(str(k), v if isinstance(v, str) else json.dumps(v))
    return info


def save_png_atomic(im: Image.Image, path: Path, meta: dict | None = None) -> None:
    """A PNG (with `meta` as text chunks); the folder is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    im.save(tmp, format="PNG", pnginfo=png_info(meta) if meta else None)
    os.replace(tmp, path)


def save_figure_atomic(fig: Any, path: Path, dpi: int = 100) -> Path:
    """A matplotlib figure (format from the file's suffix)."""
    path = Path(path)
    tmp = _tmp(path, path.suffix)
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    return path


def copy_atomic(src: Path, dest: Path) -> None:
    """Copy a file (temporary copy + rename)."""
    dest = Path(dest)
    tmp = _tmp(dest)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def manifest_files(out_dir: Path) -> set[str]:
    """The images/<name> files an earlier manifest.jsonl in `out_dir` lists (a dataset folder that export or
    review filter wrote); empty when there is none."""
    manifest = Path(out_dir) / "manifest.jsonl"
    if not manifest.is_file():
        return set()
    files = set()
    for line in manifest.read_text().splitlines():
        try:
            name = json.loads(line).get("file")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(name, str) and name.startswith("images/") and "/" not in name[len("images/") :]:
            files.add(name)
    return files


def remove_unlisted(out_dir: Path, earlier: set[str], now: set[str]) -> None:
    """After a dataset folder's new manifest is written: remove the files the earlier manifest listed and the
    new one does not (files it never listed, the user's own, stay), so the folder matches its manifest."""
    for stale in earlier - now:
        (Path(out_dir) / stale).unlink(missing_ok=True)


def output_folder(path: str | Path, flag: str = "--out") -> Path:
    """`path` created (with parents) and shown to be writable, or a SpurgenError naming `flag`: commands call it
    before any heavy work, so a folder they cannot write costs one line, not a traceback after minutes."""
    from spurgen.errors import SpurgenError

    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".spurgen_write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise SpurgenError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def folder_fingerprint(folder: str | Path, edge: int = 1 << 20) -> str:
    """What a local weights folder holds, cheaply and by content: the sha256 of its manifest.json when it has
    one (the mini world's records every file's sha256), else a sha256 over each file's relative name, size and
    first and last `edge` bytes (a few MiB read even for a 4 GB Stable Diffusion folder). Copying or touching
    the files keeps it; rewriting them with other weights changes it."""
    folder = Path(folder)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return "manifest:" + sha256_file(manifest)[:16]
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with open(path, "rb") as fh:
            digest.update(fh.read(edge))
            if size > 2 * edge:
                fh.seek(size - edge)
                digest.update(fh.read(edge))
            elif size > edge:
                digest.update(fh.read())
    return "files:" + digest.hexdigest()[:16]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (weights files run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
