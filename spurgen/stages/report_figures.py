"""The sweep report's figures: spurious rate against lambda_sfsl per classifier; per class, reference images
beside the baseline's and each lambda_sfsl's generated images."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from spurgen.data.images import IMAGE_EXTS  # noqa: E402

PER_ROW = 6


def rate_vs_lambda(rows: list[dict], path: Path, title: str) -> Path | None:
    """One panel per classifier: mean spurious rate (error bar: seed-to-seed std) against lambda_sfsl, a line
    per class; the baseline as a dotted line. x is symlog so lambda_sfsl = 0 has a place."""
    classifiers = sorted(
        {m.split("/", 1)[1] for r in rows for m in r["stats"] if m.startswith("spurious_rate/")}
    )
    if not classifiers:
        return None
    fig, axes = plt.subplots(1, len(classifiers), figsize=(4.2 * len(classifiers), 3.6), squeeze=False)
    classes = sorted({(r["class_index"], r["class_name"]) for r in rows})
    for ax, c in zip(axes[0], classifiers, strict=True):
        for k, (index, name) in enumerate(classes):
            color = f"C{k % 10}"
            tuned = [r for r in rows if r["class_index"] == index and r["row"] == "images"]
            pts = [(r["lambda_sfsl"], r["stats"].get(f"spurious_rate/{c}")) for r in tuned]
            pts = [(x, s) for x, s in sorted(pts) if s and s["mean"] is not None]
            if pts:
                ax.errorbar(
                    [x for x, _ in pts],
                    [s["mean"] for _, s in pts],
                    yerr=[s["std"] or 0.0 for _, s in pts],  # one seed: no spread
                    marker="o",
                    capsize=3,
                    color=color,
                    label=f"{name} ({index})",
                )
            for r in rows:
                s = r["stats"].get(f"spurious_rate/{c}")
                if r["class_index"] == index and r["row"] == "baseline" and s and s["mean"] is not None:
                    ax.axhline(s["mean"], color=color, linestyle=":", linewidth=1)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("lambda_sfsl")
        ax.set_ylabel("spurious rate")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(c)
    axes[0][0].legend(fontsize=7, title="dotted: baseline", title_fontsize=7)
    return _save(fig, path, title)


def _save(fig, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _images(folder: Path | None, n: int = PER_ROW) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)[:n]


def class_grid(rows_of_images: list[tuple[str, list[Path]]], path: Path, title: str) -> Path | None:
    """A row of images per labelled set (reference, baseline, lambda_sfsl = ...)."""
    rows_of_images = [(label, ims) for label, ims in rows_of_images if ims]
    if not rows_of_images:
        return None
    n_rows, n_cols = len(rows_of_images), max(len(ims) for _, ims in rows_of_images)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.4 * n_cols + 1.4, 1.4 * n_rows + 0.4), squeeze=False)
    for i, (label, ims) in enumerate(rows_of_images):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(ims):
                with Image.open(ims[j]) as im:
                    ax.imshow(im.convert("RGB"))
            else:
                ax.axis("off")
        axes[i][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    return _save(fig, path, title)
