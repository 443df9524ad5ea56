"""What an evaluation shows: the rows of metrics.csv, the spurious-rate bar chart, the contact sheet, one
prediction record per image, and the W&B table (files are written through spurgen.files)."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spurgen import imagenet
from spurgen.eval.imagesets import ImageSet
from spurgen.eval.predict import Predictions, SetPredictions
from spurgen.files import save_figure_atomic, write_atomic

CSV_FIELDS = ["set", "template", "classifier", "metric", "value", "ci_low", "ci_high", "n"]


def csv_rows(sets: dict[str, dict], scores: dict[str, dict], memorisation: dict | None = None) -> list[dict]:
    """metrics.csv: every rate with its interval, consistency, spurious scores, and the memorisation check's
    medians (ci_low / ci_high = its 5th and 95th percentiles)."""
    rows = []

    def add(set_name: str, template: str, numbers: dict) -> None:
        for c, nums in numbers["per_classifier"].items():
            for metric, v in nums.items():
                ci = v.get("ci", [None, None])
                rows.append(
                    dict(
                        set=set_name,
                        template=template,
                        classifier=c,
                        metric=metric,
                        value=v["value"],
                        ci_low=ci[0],
                        ci_high=ci[1],
                        n=v.get("n"),
                    )
                )
        for kind in ("all", "at_least_half"):
            v = numbers["consistency"][kind]
            rows.append(
                dict(
                    set=set_name,
                    template=template,
                    classifier="*",
                    metric=f"consistency_{kind}",
                    value=v["value"],
                    ci_low=v["ci"][0],
                    ci_high=v["ci"][1],
                    n=v["n"],
                )
            )

    for set_name, numbers in sets.items():
        add(set_name, "all", numbers)
        for tmpl, sub in numbers.get("per_template", {}).items():
            add(set_name, tmpl, sub)
    for c, s in scores.items():
        for set_name, v in s.items():
            if isinstance(v, dict):
                rows += score_rows(set_name, c, v)
    return rows + memorisation_rows(memorisation or {})


def memorisation_rows(memorisation: dict) -> list[dict]:
    """One row per set for the nearest-reference PSNR and per set and classifier for the nearest-reference
    cosine: the median, with the 5th and 95th percentiles as ci_low and ci_high (a spread, not an interval)."""
    rows = []
    for set_name, block in memorisation.items():
        summaries = [("*", "memorisation_psnr_db", block.get("psnr_db"))]
        summaries += [(c, "memorisation_cosine", v) for c, v in (block.get("feature_cosine") or {}).items()]
        for classifier, metric, s in summaries:
            if s:
                rows.append(dict(set=set_name, template="all", classifier=classifier, metric=metric,
                                 value=s["median"], ci_low=s["p05"], ci_high=s["p95"], n=s["n"]))  # fmt: skip
    return rows


def score_rows(set_name: str, classifier: str, v: dict) -> list[dict]:
    """metrics.csv rows of one spurious-score block: spurious_score_{roc_auc,ap,ap_equal_size} on the set
    (n = its images), and for the reference set spurious_score_{ap,roc_auc}_all_components, the official
    score pooled over the class's components (n = the pooled images)."""
    metrics = [(m, "num_spurious") for m in ("roc_auc", "ap", "ap_equal_size")]
    if "ap_all_components" in v:
        metrics += [
            (m, "num_spurious_all_components") for m in ("ap_all_components", "roc_auc_all_components")
        ]
    return [
        dict(
            set=set_name,
            template="all",
            classifier=classifier,
            metric=f"spurious_score_{m}",
            value=v[m],
            ci_low=None,
            ci_high=None,
            n=v[n],
        )
        for m, n in metrics
    ]


def bar_chart(path: Path, sets: dict[str, dict], title: str) -> Path:
    """Spurious rate per classifier (grouped by image set), with 95% Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(sets.values()))["per_classifier"])
    width = 0.8 / len(sets)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names) + 2), 3.5))
    x = np.arange(len(names))
    for j, (set_name, numbers) in enumerate(sets.items()):
        v = [numbers["per_classifier"][c]["spurious_rate"] for c in names]
        vals = np.array([r["value"] for r in v])
        err = np.clip(np.array([[r["value"] - r["ci"][0], r["ci"][1] - r["value"]] for r in v]).T, 0, None)
        ax.bar(
            x + j * width - 0.4 + width / 2,
            vals,
            width,
            yerr=err,
            capsize=3,
            label=f"{set_name} (n={numbers['num_images']})",
        )
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("spurious rate (95% Wilson)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
    return path


def _data_uri(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def contact_sheet(path: Path, images: ImageSet, preds: SetPredictions, target: int, title: str) -> Path:
    """One card per image (as many as preds has thumbnails): the thumbnail, its prompt and seed, and every
    classifier's top-3 (the target in bold). For a person to check that no image shows the class object
    (METHOD.md)."""
    files, thumbs, records = images.paths, preds.thumbnails, images.records
    class_names = [imagenet.short_name(i) for i in range(imagenet.NUM_CLASSES)]
    cards = []
    for i, (f, t) in enumerate(zip(files, thumbs, strict=False)):
        rec = records[i] if i < len(records) else {}
        lines = []
        for c, p in preds.per_classifier.items():
            top = []
            for j in range(3):
                k, prob = int(p.top5[i, j]), float(p.top5_p[i, j])
                label = html.escape(f"{class_names[k]} {prob:.2f}")
                top.append(f"<b>{label}</b>" if k == target else label)
            mark = "&#10003;" if int(p.top5[i, 0]) == target else "&middot;"
            lines.append(f"<div>{mark} <i>{html.escape(c)}</i>: {'; '.join(top)}</div>")
        cap = html.escape(
            f"{f.name}" + (f" | seed {rec['seed']} | {rec.get('prompt', '')}" if "seed" in rec else "")
        )
        cards.append(
            f'<div class="c"><img src="{_data_uri(t)}"><div class="n">{cap}</div>{"".join(lines)}</div>'
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
        "body{font:12px sans-serif}.c{display:inline-block;width:260px;vertical-align:top;margin:6px;"
        "border:1px solid #ccc;padding:4px}.c img{max-width:128px}.n{color:#555}</style></head><body>"
        f"<h2>{html.escape(title)}</h2><p>{len(cards)} of {len(files)} images. &#10003; = top-1 is the target "
        "class. Check that no image shows the class object itself.</p>" + "".join(cards) + "</body></html>"
    )
    write_atomic(path, page)
    return path


def prediction_records(files: list[Path], records: list[dict], preds: dict[str, Predictions]) -> list[dict]:
    """One record per image (predictions.jsonl): its prompt, template and seed, and every classifier's top-5
    with probabilities and p(k|x)."""
    out = []
    for i, path in enumerate(files):
        per = {
            c: {
                "top5": p.top5[i].tolist(),
                "top5_p": np.round(p.top5_p[i], 6).tolist(),
                "p_target": float(p.p_target[i]),
            }
            for c, p in preds.items()
        }
        rec = records[i] if i < len(records) else {}
        out.append(
            {"file": path.name, **{k: rec.get(k) for k in ("prompt", "template", "seed")}, "classifiers": per}
        )
    return out


def log_wandb(
    logger_cfg: Any,
    run_dir: Path,
    result: dict,
    rows: list[dict],
    chart: Path,
    thumbnails: tuple[list[Image.Image], list[Image.Image]],
) -> None:
    """A table of every number, the bar chart and a grid of generated (thumbnails[0]) beside reference
    (thumbnails[1]) images. Resumes the run's W&B run when run_dir/wandb_run_id.txt exists (the training
    stage's)."""
    import wandb

    from spurgen.loggers import wandb_mode
    from spurgen.pipeline import image_grid

    mode = wandb_mode(logger_cfg.mode)
    id_file = Path(run_dir) / "wandb_run_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else None
    run = wandb.init(
        project=logger_cfg.project,
        entity=logger_cfg.entity,
        group=logger_cfg.group,
        name=logger_cfg.name or f"eval-{result['target']['name']}",
        dir=str(run_dir),
        mode=mode,
        id=run_id,
        resume="allow" if run_id else None,
        reinit="finish_previous",
    )
    table = wandb.Table(columns=CSV_FIELDS, data=[[r[k] for k in CSV_FIELDS] for r in rows])
    generated, reference = thumbnails
    payload = {
        k: v
        for k, v in result["metrics"].items()
        if v is not None and not (isinstance(v, float) and math.isnan(v))
    }
    payload["eval/table"] = table
    payload["eval/spurious_rate_chart"] = wandb.Image(str(chart))
    if generated:
        grid = [*generated[:8], *reference[:8]]
        size = grid[0].size
        payload["eval/generated_vs_reference"] = wandb.Image(
            image_grid([g.resize(size) for g in grid], cols=min(8, len(generated[:8]))),
            caption="top: generated; bottom: reference",
        )
    run.log(payload)
    if mode != "disabled" and not run_id:
        id_file.write_text(run.id)
    run.finish()


def summary_table(result: dict) -> str:
    """The end-of-run table a person reads first: per classifier, the spurious rate with its 95% Wilson
    interval and the similarity cos(phi, m) of each image set (generated, baseline, references); the
    classifier that trained the SFSL is marked, the others are held out."""
    results, trained = result.get("results") or {}, (result.get("extractor") or {})
    trained_name = trained.get("name") if trained.get("used") else None
    sets = [s for s in ("images", "baseline", "reference") if s in results]
    names = {"images": "generated", "baseline": "baseline", "reference": "references"}
    header = ["classifier", *(f"{names[s]} rate [95% CI]" for s in sets), *(f"sim {names[s]}" for s in sets)]
    rows = []
    for c in results.get("images", {}).get("per_classifier", {}):
        cells = [c + (" (trained the SFSL)" if c == trained_name else "")]
        for s in sets:
            r = results[s]["per_classifier"][c]["spurious_rate"]
            cells.append(f"{r['value']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}] n={r['n']}")
        for s in sets:
            sim = results[s]["per_classifier"][c].get("similarity")
            cells.append("-" if sim is None else f"{sim['value']:.3f}")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    ]
    target = result.get("target", {})
    return "\n".join([f"spurious rate = share of images classified as {target.get('index')} "
                      f"({target.get('name')}); sim = cos(phi(x), m) to the references", *lines,
                      *_distribution_lines(results, sets, names)])  # fmt: skip


def _distribution_lines(results: dict, sets: list[str], names: dict[str, str]) -> list[str]:
    """Per classifier, KID to the references and diversity of each set (spurgen/eval/distribution.py), or
    nothing when the evaluation measured neither."""

    def value(s: str, c: str, key: str) -> str:
        v = (results[s]["per_classifier"][c].get(key) or {}).get("value")
        return "-" if v is None else f"{v:.4f}" if key == "kid" else f"{v:.3f}"

    classifiers = list(results.get("images", {}).get("per_classifier", {}))
    kid_sets = [s for s in sets if s != "reference"]
    header = ["classifier", *(f"KID {names[s]}" for s in kid_sets), *(f"diversity {names[s]}" for s in sets)]
    rows = [
        [c, *(value(s, c, "kid") for s in kid_sets), *(value(s, c, "diversity") for s in sets)]
        for c in classifiers
    ]
    if not any(cell != "-" for r in rows for cell in r[1:]):
        return []
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    table = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    ]
    return ["", "KID = unbiased MMD² to the references' features; diversity = mean pairwise 1 - cos", *table]
