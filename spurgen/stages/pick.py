"""Pick reference images for a spurious pair from any folder of photos (`spurgen pick`).

Candidates are every whole photo and `crops_per_photo` seeded random square crops of each (side = a scale times
the photo's short side). Each candidate is scored exactly as it is written (cut, optionally resized to `size`)
through the evaluation's preprocessing (spurgen.eval.predict: bicubic resize to each classifier's input size, no
crop; METHOD.md's one rule). A candidate qualifies when at least `min_classifiers` classifiers give the target
top-1. Qualifying candidates are ranked by agreement (how many classifiers give the target top-1), then by the
lowest target probability across the classifiers, and taken greedily while diverse: no two on one photo overlap by
IoU > max_iou, and no two have a feature cosine > max_cosine (features: phi of the first classifier, its pooled
features, FrozenImageModel.features). Everything is written to a temporary sibling folder and renamed at the end,
so a pick that fails leaves nothing.
"""

from __future__ import annotations

import base64
import html
import io
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spurgen import imagenet
from spurgen.data.images import load_rgb
from spurgen.errors import SpurgenError
from spurgen.eval.predict import prep_key, resize_image, to_tensor
from spurgen.files import write_atomic, write_json
from spurgen.models.extractors import FrozenImageModel

Box = tuple[int, int, int, int]  # (top, left, height, width) in the photo's pixels


@dataclass(frozen=True)
class PickSettings:
    n: int = 5
    min_classifiers: int = 3
    scales: tuple[float, ...] = (1.0, 0.6, 0.35)
    crops_per_photo: int = 96
    whole: bool = True  # the whole photos are candidates too
    size: int | None = None  # side of the written crops in pixels; None: the crop's own pixels
    seed: int = 0
    max_iou: float = 0.5
    max_cosine: float = 0.95
    batch_size: int = 32


@dataclass
class Scores:
    """The candidates' scores: one row per candidate."""

    sources: list[str]  # file name inside the folder
    boxes: list[Box]
    p: np.ndarray  # (N, C) p_c(k | x) per classifier
    rank: np.ndarray  # (N, C) the target's rank per classifier, 1 = top-1
    features: np.ndarray  # (N, D) phi of the first classifier

    @property
    def agreement(self) -> np.ndarray:  # (N,) classifiers with the target top-1
        return (self.rank == 1).sum(1)

    @property
    def p_min(self) -> np.ndarray:  # (N,) the lowest target probability across the classifiers
        return self.p.min(1)


# --- the selection rule (pure functions) ---


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (top, left, height, width)."""
    h = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    w = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = h * w
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def cosine_matrix(features: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, N) pairwise cosine similarities."""
    f = features.astype(np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return f @ f.T


def ranking(agreement: np.ndarray, p_min: np.ndarray, min_classifiers: int) -> list[int]:
    """Indices of the qualifying candidates (agreement >= min_classifiers), best first: by agreement, then by
    the lowest probability; ties keep candidate order."""
    keys = sorted(range(len(agreement)), key=lambda i: (-int(agreement[i]), -float(p_min[i]), i))
    return [i for i in keys if agreement[i] >= min_classifiers]


def diverse(order: Sequence[int], scores: Scores, s: PickSettings) -> list[int]:
    """Take candidates in `order` while no two on one photo overlap by IoU > s.max_iou and no two have feature
    cosine > s.max_cosine; stop at s.n."""
    sources, boxes = scores.sources, scores.boxes
    cos = cosine_matrix(scores.features) if len(scores.features) else np.zeros((0, 0))
    chosen: list[int] = []
    for i in order:
        if any(sources[i] == sources[j] and iou(boxes[i], boxes[j]) > s.max_iou for j in chosen):
            continue
        if any(cos[i, j] > s.max_cosine for j in chosen):
            continue
        chosen.append(i)
        if len(chosen) == s.n:
            break
    return chosen


# --- candidates and scores ---


Photo = tuple[Path, tuple[int, int]]  # a file and its (height, width)


def read_photos(files: Sequence[Path]) -> list[Photo]:
    """Every photo decoded once to prove it reads (then let go: a folder may not fit in memory), with its size;
    or one SpurgenError naming the unreadable files."""
    photos, bad = [], []
    for f in files:
        try:
            im = load_rgb(f)
            photos.append((f, (im.height, im.width)))
        except SpurgenError:
            bad.append(f.name)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise SpurgenError(
            f"{len(bad)} of {len(files)} files in {files[0].parent} cannot be read as images: {shown} "
            "(remove them or convert them)"
        )
    return photos


def candidate_boxes(
    heights_widths: Sequence[tuple[int, int]], target: int, s: PickSettings
) -> list[list[Box]]:
    """Per photo: the whole photo (when s.whole), then s.crops_per_photo random squares. One numpy PCG64
    generator seeded [seed, target] draws them photo after photo in folder order: each square's scale, then its
    top, then its left, uniform (the mini world's corpus.crop_box, so its moon crops come out again)."""
    rng = np.random.default_rng([s.seed, target])
    out = []
    for h, w in heights_widths:
        boxes: list[Box] = [(0, 0, h, w)] if s.whole else []
        for _ in range(s.crops_per_photo):
            side = max(1, round(float(rng.choice(s.scales)) * min(h, w)))
            top = int(rng.integers(0, h - side + 1))
            left = int(rng.integers(0, w - side + 1))
            boxes.append((top, left, side, side))
        out.append(boxes)
    return out


def cut(photo: Image.Image, box: Box, size: int | None) -> Image.Image:
    """The box of the photo as it is written: resized (bicubic) to size x size unless size is None."""
    top, left, h, w = box
    patch = photo.crop((left, top, left + w, top + h))
    if size is not None and patch.size != (size, size):
        patch = patch.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
    return patch


@torch.inference_mode()
def score_images(
    models: Sequence[FrozenImageModel], images: Sequence[Image.Image], target: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p (N, C), rank (N, C), features of models[0] (N, D)) with the evaluation's preprocessing."""
    device = models[0].mean.device
    keys = {prep_key(m, crop=False) for m in models}
    resized: dict[tuple, list[torch.Tensor]] = {k: [] for k in keys}
    for im in images:  # one full-size tensor at a time: crops of large photos are large
        t = to_tensor(im)
        for size, interp, crop_pct in keys:
            resized[(size, interp, crop_pct)].append(resize_image(t, size, interp, None))
    p_cols, rank_cols, feats = [], [], None
    for j, m in enumerate(models):
        x = torch.stack(resized[prep_key(m, crop=False)]).to(device)  # (B, 3, S, S)
        xm = m.prepare(x)
        if m.channels_last:
            xm = xm.contiguous(memory_format=torch.channels_last)
        f, logits = m.forward_prepared(xm)
        probs = logits.float().softmax(1)
        pt = probs[:, target]
        p_cols.append(pt.cpu().numpy())
        rank_cols.append((1 + (probs > pt[:, None]).sum(1)).cpu().numpy())
        if j == 0:
            feats = f.float().cpu().numpy()
    return np.stack(p_cols, 1), np.stack(rank_cols, 1), feats


def score_candidates(
    models: Sequence[FrozenImageModel],
    photos: Sequence[Photo],
    target: int,
    s: PickSettings,
) -> Scores:
    """Every candidate of every photo, scored in batches (only a batch of crops is in memory at once)."""
    boxes = candidate_boxes([hw for _, hw in photos], target, s)
    sources, all_boxes, ps, ranks, feats = [], [], [], [], []
    for (f, _), bx in zip(photos, boxes, strict=True):
        im = load_rgb(f)
        for start in range(0, len(bx), s.batch_size):
            part = bx[start : start + s.batch_size]
            p, r, ft = score_images(models, [cut(im, b, s.size) for b in part], target)
            ps.append(p)
            ranks.append(r)
            feats.append(ft)
            sources += [f.name] * len(part)
            all_boxes += part
    return Scores(sources, all_boxes, np.concatenate(ps), np.concatenate(ranks), np.concatenate(feats))


# --- the command's work ---


def describe(scores: Scores, i: int) -> str:
    """One candidate in a few words: source, box, agreement and each classifier's target probability."""
    p = "/".join(f"{float(x):.3f}" for x in scores.p[i])
    return f"{scores.sources[i]} box {list(scores.boxes[i])} agreement {int(scores.agreement[i])} p {p}"


def pick(
    models: Sequence[FrozenImageModel],
    photos: Sequence[Photo],
    out_dir: str | Path,
    target: int,
    s: PickSettings,
    command: str,
) -> dict:
    """Score, select and write the references of the photos (spurgen.data.images.list_images, read_photos; see the module
    docstring); return selection.json's content. Fewer than s.n diverse qualifying candidates: a SpurgenError
    naming the best ones, and nothing written."""
    scores = score_candidates(models, photos, target, s)
    order = ranking(scores.agreement, scores.p_min, s.min_classifiers)
    chosen = diverse(order, scores, s)
    if len(chosen) < s.n:
        best = chosen or list(np.lexsort((-scores.p_min, -scores.agreement))[:3])
        raise SpurgenError(
            f"only {len(chosen)} of {len(scores.sources)} candidates qualify and are diverse ({len(order)} "
            f"qualify before the diversity rule; need n={s.n} with >= {s.min_classifiers} of {len(models)} "
            f"classifiers top-1 = {target}); best: " + "; ".join(describe(scores, int(i)) for i in best[:3])
        )
    names = [m.name for m in models]
    record = {"command": command, "folder": str(photos[0][0].parent)}
    record |= selection_record(names, target, s, scores, chosen, len(order))
    write_folder(Path(out_dir), photos, scores, chosen, record, s.size)
    return record


def selection_record(
    names: Sequence[str], target: int, s: PickSettings, scores: Scores, chosen: list[int], num_qualifying: int
) -> dict:
    """selection.json (less the command and folder): how the references were picked and every chosen crop's
    figures; `names` are the classifiers', in the columns' order."""
    stem_counts: dict[str, int] = {}
    crops = []
    for i in chosen:
        stem = Path(scores.sources[i]).stem
        n = stem_counts[stem] = stem_counts.get(stem, -1) + 1
        crops.append(
            {
                "file": f"{stem}_{n:02d}.png",
                "source": scores.sources[i],
                "box": list(scores.boxes[i]),
                "agreement": int(scores.agreement[i]),
                "p": {c: round(float(scores.p[i, j]), 4) for j, c in enumerate(names)},
                "rank": {c: int(scores.rank[i, j]) for j, c in enumerate(names)},
                "p_min": round(float(scores.p_min[i]), 4),
            }
        )
    cos = cosine_matrix(scores.features[chosen])
    return {
        "target": {"index": target, "name": imagenet.short_name(target)},
        "classifiers": list(names),
        "feature_classifier": names[0],
        "rule": (
            "a candidate qualifies when >= min_classifiers classifiers give the target top-1; ranked by "
            "agreement, then by the lowest target probability; taken while no two on one photo overlap by IoU > "
            "max_iou and no two have feature cosine > max_cosine (features: feature_classifier's pooled phi)"
        ),
        "box_format": "[top, left, height, width] in the source photo's pixels",
        "n": s.n,
        "min_classifiers": s.min_classifiers,
        "scales": list(s.scales),
        "crops_per_photo": s.crops_per_photo,
        "whole_photos": s.whole,
        "size": s.size,
        "seed": s.seed,
        "max_iou": s.max_iou,
        "max_cosine": s.max_cosine,
        "preprocessing": "bicubic resize to each classifier's input size, no crop (spurgen.eval.predict)",
        "num_photos": len(set(scores.sources)),
        "num_candidates": len(scores.sources),
        "num_qualifying": num_qualifying,
        "max_pairwise_cosine": round(float(np.max(cos - 2 * np.eye(len(chosen)))), 4)
        if len(chosen) > 1
        else None,
        "crops": crops,
    }


def write_folder(
    out_dir: Path,
    photos: Sequence[Photo],
    scores: Scores,
    chosen: list[int],
    record: dict,
    size: int | None,
) -> None:
    """The crops, selection.json and contact_sheet.html, written to a temporary sibling folder that then takes
    out_dir's place (out_dir must be missing or empty)."""
    paths = {f.name: f for f, _ in photos}
    tmp = out_dir.parent / f".{out_dir.name}.pick-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        images = []
        for i, crop in zip(chosen, record["crops"], strict=True):
            im = cut(load_rgb(paths[scores.sources[i]]), scores.boxes[i], size)
            im.save(tmp / crop["file"])
            images.append(im)
        write_json(tmp / "selection.json", record)
        contact_sheet(tmp / "contact_sheet.html", images, record)
        if out_dir.exists():
            out_dir.rmdir()  # empty: checked before any work
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def contact_sheet(path: Path, images: Sequence[Image.Image], record: dict) -> None:
    """One card per reference: the image, its source and box, and each classifier's probability and rank."""
    cards = []
    for im, crop in zip(images, record["crops"], strict=True):
        thumb = im.copy()
        thumb.thumbnail((160, 160))
        buf = io.BytesIO()
        thumb.save(buf, format="PNG")
        uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        rows = "".join(
            f"<div>{'&#10003;' if crop['rank'][c] == 1 else '&middot;'} <i>{html.escape(c)}</i>: "
            f"p {crop['p'][c]:.3f}, rank {crop['rank'][c]}</div>"
            for c in record["classifiers"]
        )
        cap = html.escape(f"{crop['file']} | {crop['source']} {crop['box']} | agreement {crop['agreement']}")
        cards.append(f'<div class="c"><img src="{uri}"><div class="n">{cap}</div>{rows}</div>')
    t = record["target"]
    title = f"spurgen pick: {len(cards)} references for {t['index']} {t['name']}"
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font:12px sans-serif}.c{display:inline-block;width:260px;vertical-align:top;margin:6px;"
        "border:1px solid #ccc;padding:4px}.n{color:#555}</style></head><body>"
        f"<h2>{html.escape(title)}</h2><p>{html.escape(record['rule'])}; max_iou {record['max_iou']}, "
        f"max_cosine {record['max_cosine']}. &#10003; = top-1 is the target. Check that no image shows the "
        "class object itself.</p>" + "".join(cards) + "</body></html>"
    )
    write_atomic(path, page)
