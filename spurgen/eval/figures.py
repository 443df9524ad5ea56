"""The sweep report's figures: spurious rate against lambda_sfsl per classifier; per table (class and run
identity), reference images beside the baseline's and each lambda_sfsl's generated images."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from spurgen.data.images import IMAGE_EXTS  # noqa: E402

PER_ROW = 6


def _line_labels(rows: list[dict]) -> dict[tuple, str]:
    """A legend label per table: the class, plus its file, component and identity where a class has several
    tables."""
    tables = sorted({r["table"] for r in rows})
    labels = {}
    for t in tables:
        r = next(r for r in rows if r["table"] == t)
        label = f"{r['class_name']} ({r['class_index']})"
        if sum(1 for u in tables if u[1][0] == t[1][0]) > 1:
            label += "".join(f" {x}" for x in (r["class_file"], r["component"]) if x not in ("", None))
            label += f" [{r['identity'][:6]}]"
        labels[t] = label
    return labels


def _panel(ax, rows: list[dict], classifier: str, labels: dict[tuple, str]) -> None:
    """One classifier: a line per table (mean, error bar = seed-to-seed std), the pooled images' 95% Wilson
    interval as a band, its baseline dotted."""
    metric = f"spurious_rate/{classifier}"
    for k, (table, label) in enumerate(labels.items()):
        color = f"C{k % 10}"
        mine = [r for r in rows if r["table"] == table]
        pts = [(r["lambda_sfsl"], r["stats"].get(metric)) for r in mine if r["row"] == "images"]
        pts = [(x, s) for x, s in sorted(pts, key=lambda p: p[0]) if s and s["mean"] is not None]
        if pts:
            ax.errorbar(
                [x for x, _ in pts],
                [s["mean"] for _, s in pts],
                yerr=[s["std"] or 0.0 for _, s in pts],  # one seed: no spread
                marker="o",
                capsize=3,
                color=color,
                label=label,
            )
            wilson = [
                (r["lambda_sfsl"], r.get("pooled", {}).get(classifier)) for r in mine if r["row"] == "images"
            ]
            wilson = sorted((x, w) for x, w in wilson if w)
            if wilson:
                ax.fill_between([x for x, _ in wilson], [w["ci"][0] for _, w in wilson],
                                [w["ci"][1] for _, w in wilson], color=color, alpha=0.15, linewidth=0)  # fmt: skip
        for r in mine:
            s = r["stats"].get(metric)
            if r["row"] == "baseline" and s and s["mean"] is not None:
                ax.axhline(s["mean"], color=color, linestyle=":", linewidth=1)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(left=-0.002)  # lambda >= 0: no negative ticks
    ax.set_xlabel("lambda_sfsl")
    ax.set_ylabel("spurious rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(classifier)


def rate_vs_lambda(rows: list[dict], path: Path, title: str) -> Path | None:
    """One panel per classifier: mean spurious rate (error bar: seed-to-seed std) against lambda_sfsl, a line
    per table (class and run identity); each table's baseline as a dotted line. x is symlog so lambda_sfsl = 0
    has a place."""
    classifiers = sorted(
        {m.split("/", 1)[1] for r in rows for m in r["stats"] if m.startswith("spurious_rate/")}
    )
    if not classifiers:
        return None
    fig, axes = plt.subplots(1, len(classifiers), figsize=(4.2 * len(classifiers), 3.6), squeeze=False)
    labels = _line_labels(rows)
    for ax, c in zip(axes[0], classifiers, strict=True):
        _panel(ax, rows, c, labels)
    axes[0][0].legend(
        fontsize=7, title="bars: seed std; band: pooled 95% Wilson; dotted: baseline", title_fontsize=7
    )
    return _save(fig, path, title)


MEASURES = (
    ("similarity", "similarity cos(phi, m)"),
    ("kid", "KID to the references"),
    ("diversity", "diversity"),
)


def _measure_panel(ax, rows: list[dict], metric: str, ylabel: str) -> None:
    """One measure of one table: a line per classifier (mean over seeds, error bar = seed std) against
    lambda_sfsl; the baseline row dotted and the reference row dashed in the classifier's colour."""
    classifiers = sorted({m.split("/", 1)[1] for r in rows for m in r["stats"] if m.startswith(f"{metric}/")})
    for k, c in enumerate(classifiers):
        color, key = f"C{k % 10}", f"{metric}/{c}"
        pts = sorted(
            (r["lambda_sfsl"], r["stats"][key]) for r in rows if r["row"] == "images" and key in r["stats"]
        )
        pts = [(x, s) for x, s in pts if s["mean"] is not None]
        if pts:
            ax.errorbar([x for x, _ in pts], [s["mean"] for _, s in pts], yerr=[s["std"] or 0.0 for _, s in pts],
                        marker="o", capsize=3, color=color, label=c)  # fmt: skip
        for r in rows:
            s = r["stats"].get(key)
            if r["row"] in ("baseline", "reference") and s and s["mean"] is not None:
                style = ":" if r["row"] == "baseline" else "--"
                ax.axhline(s["mean"], color=color, linestyle=style, linewidth=1)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(left=-0.002)
    ax.set_xlabel("lambda_sfsl")
    ax.set_title(ylabel, fontsize=9)
    if classifiers:
        ax.legend(fontsize=7)


def measures_vs_lambda(rows: list[dict], path: Path, title: str) -> Path | None:
    """One table's similarity, KID and diversity against lambda_sfsl (a panel each, a line per classifier;
    error bars: seed std; dotted: baseline; dashed: references), or None when its runs measured none."""
    present = [
        (m, label) for m, label in MEASURES if any(k.startswith(f"{m}/") for r in rows for k in r["stats"])
    ]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.4), squeeze=False)
    for ax, (metric, label) in zip(axes[0], present, strict=True):
        _measure_panel(ax, rows, metric, label)
    return _save(fig, path, title + " (bars: seed std; dotted: baseline; dashed: references)")


def _save(fig, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def images_of(folder: Path | None, n: int = PER_ROW) -> list[Path]:
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
