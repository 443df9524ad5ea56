"""What reviewers said, as files: answers.csv (one row per standing answer), review_summary.json (per set and
question: counts and the fraction of each choice with 95% Wilson intervals; agreement on shared images:
Cohen's kappa for two reviewers, Fleiss' for three or more) and accepted.jsonl (the images reviewers accepted
as spurious, with their vote counts). docs/review.md describes each file."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from spurgen.eval.metrics import wilson_interval
from spurgen.files import save_figure_atomic, write_csv, write_json, write_jsonl
from spurgen.review.config import REVIEW_QUESTIONS, STUDY_QUESTIONS
from spurgen.review.store import ANSWER_FIELDS, open_existing

FEATURE, OBJECT = "spurious_feature", "class_object"


TIE = "tie"  # an image whose reviewers have no strict majority answer


def one_vote_each(rows: list[dict]) -> list[dict]:
    """The rows with one answer per (reviewer, image, question), the latest: the store refuses a second
    standing answer, but a database written before it did may hold two, and a reviewer is one vote."""
    latest = {(r["reviewer"], r["image_hash"], r["question"]): r for r in rows}
    return list(latest.values())


def _fractions(counts: Counter, n: int) -> dict:
    return {a: {"value": c / n, "ci": list(wilson_interval(c, n))} for a, c in sorted(counts.items())}


def image_majorities(rows: list[dict]) -> Counter:
    """How many images got each answer by strict majority of their reviewers (TIE when none has one): one vote
    per image, so the images, not the answers, are the independent samples."""
    per_image: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        per_image[r["image_hash"]][r["answer"]] += 1
    out: Counter = Counter()
    for counts in per_image.values():
        answer, votes = counts.most_common(1)[0]
        out[answer if 2 * votes > sum(counts.values()) else TIE] += 1
    return out


FreeText = Callable[[str, int], bool]  # (question, number of distinct answers) -> is it free text?


def free_text(questions: list[dict] | None, mode: str) -> FreeText:
    """Which questions are free text: those the database records without choices (the questions the server
    asked; the mode's defaults for a database written before they were recorded). A question defined
    nowhere counts as free text when it has more than 20 distinct answers."""
    defaults = REVIEW_QUESTIONS if mode == "review" else STUDY_QUESTIONS
    defined = {q["key"]: q.get("choices") is None for q in [*defaults, *(questions or [])]}
    return lambda question, distinct: defined.get(question, distinct > 20)


def choice_summary(rows: list[dict], free: FreeText = free_text(None, "review")) -> dict:
    """{question: {n, counts, fraction: {answer: {value, ci}}, images: {n, counts, fraction}}} over the rows of
    one set. `fraction` is over answers (an image two reviewers saw counts twice); `images` over images, each
    counted once with its majority answer (TIE without one), so its Wilson intervals do not treat two
    reviewers of one image as two samples. Free-text questions (e.g. the note) give only n."""
    by_q: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_q[r["question"]].append(r)
    out = {}
    for q, q_rows in by_q.items():
        counts = Counter(r["answer"] for r in q_rows)
        n = sum(counts.values())
        if free(q, len(counts)):
            out[q] = {"n": n, "free_text": True}
            continue
        majority = image_majorities(q_rows)
        n_images = sum(majority.values())
        out[q] = {
            "n": n,
            "counts": dict(sorted(counts.items())),
            "fraction": _fractions(counts, n),
            "images": {
                "n": n_images,
                "counts": dict(sorted(majority.items())),
                "fraction": _fractions(majority, n_images),
            },
        }
    return out


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa of two raters' labels of the same items: (p_o - p_e) / (1 - p_e)."""
    n = len(a)
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    return 1.0 if p_e == 1 else (p_o - p_e) / (1 - p_e)


def fleiss_kappa(ratings: list[list[str]]) -> float:
    """Fleiss' kappa of items rated by >= 2 raters each (the number of raters may vary per item):
    P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)), P_e = sum_j p_j^2 with p_j over all ratings."""
    per_item = [Counter(r) for r in ratings]
    total = Counter()
    for c in per_item:
        total.update(c)
    n_all = sum(total.values())
    p_bar = sum(
        (sum(v * v for v in c.values()) - sum(c.values())) / (sum(c.values()) * (sum(c.values()) - 1))
        for c in per_item
    ) / len(per_item)
    p_e = sum((v / n_all) ** 2 for v in total.values())
    return 1.0 if p_e == 1 else (p_bar - p_e) / (1 - p_e)


def agreement(rows: list[dict], free: FreeText = free_text(None, "review")) -> dict:
    """Per choice question (free text left out), over images answered by >= 2 reviewers: Cohen's kappa when
    two reviewers answered in all, Fleiss' kappa with three or more; None when no image is shared."""
    votes: dict[str, dict[str, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        votes[r["question"]][r["image_hash"]][r["reviewer"]] = r["answer"]
    out = {}
    for q, images in votes.items():
        shared = {h: v for h, v in images.items() if len(v) >= 2}
        reviewers = {name for v in images.values() for name in v}
        if free(q, len({a for v in images.values() for a in v.values()})):
            continue
        if not shared:
            out[q] = {"method": None, "kappa": None, "num_images": len(shared)}
        elif len(reviewers) == 2:
            a, b = sorted(reviewers)
            both = [v for v in shared.values() if a in v and b in v]
            k = cohen_kappa([v[a] for v in both], [v[b] for v in both])
            out[q] = {"method": "cohen", "kappa": k, "num_images": len(both)}
        else:
            k = fleiss_kappa([list(v.values()) for v in shared.values()])
            out[q] = {"method": "fleiss", "kappa": k, "num_images": len(shared)}
    return out


def accepted(rows: list[dict], min_votes: int) -> list[dict]:
    """Images a strict majority of at least min_votes reviewers says show the feature ("yes") and not the
    class object ("no"); "unsure" counts against, images with fewer votes are left out. A reviewer is one vote
    (one_vote_each)."""
    votes: dict[str, dict] = {}
    for r in one_vote_each(rows):
        rec = votes.setdefault(
            r["image_hash"],
            {
                "image_hash": r["image_hash"],
                "set": r["set_name"],
                "file": r["file"],
                FEATURE: Counter(),
                OBJECT: Counter(),
            },
        )
        if r["question"] in (FEATURE, OBJECT):
            rec[r["question"]][r["answer"]] += 1
    out = []
    for rec in votes.values():
        nf, no = sum(rec[FEATURE].values()), sum(rec[OBJECT].values())
        if min(nf, no) >= min_votes and 2 * rec[FEATURE]["yes"] > nf and 2 * rec[OBJECT]["no"] > no:
            out.append({**rec, FEATURE: dict(rec[FEATURE]), OBJECT: dict(rec[OBJECT]), "votes": min(nf, no)})
    return out


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: one starting with = + - @ tab or CR gets a leading ' (OWASP,
    CSV injection), so a note like =HYPERLINK(...) is never run as a formula. The database keeps it as said."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def summarize(rows: list[dict], mode: str, questions: list[dict] | None = None) -> dict:
    """review_summary.json of the standing answers, one vote per reviewer, image and question; `questions`
    (those the database records) tell free text from choices."""
    rows, free = one_vote_each(rows), free_text(questions, mode)
    by_set: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_set[r["set_name"]].append(r)
    return {
        "mode": mode,
        "num_answers": len(rows),
        "num_images": len({r["image_hash"] for r in rows}),
        "reviewers": sorted({r["reviewer"] for r in rows}),
        "sets": {
            s: {"num_images": len({r["image_hash"] for r in v}), "questions": choice_summary(v, free)}
            for s, v in sorted(by_set.items())
        },
        "agreement": agreement(rows, free),
    }


def export_db(
    db: str | Path, out_dir: str | Path | None, min_votes: int, wandb: tuple[str, str] | None = None
) -> list[Path]:
    """Write answers.csv, review_summary.json and accepted.jsonl (review mode) or study.png (study mode) into
    out_dir (default: the database's folder); return their paths. wandb=(project, mode) also uploads them."""
    store = open_existing(db)
    try:
        rows, mode, questions = store.answers(), store.mode, store.questions()
    finally:
        store.close()
    out = Path(out_dir) if out_dir else Path(db).parent
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "answers.csv", out / "review_summary.json"]
    write_csv(paths[0], [{k: spreadsheet_safe(v) for k, v in r.items()} for r in rows], ANSWER_FIELDS)
    summary = summarize(rows, mode, questions)
    if mode == "review":
        paths.append(out / "accepted.jsonl")
        kept = accepted(rows, min_votes)
        write_jsonl(paths[-1], kept)
        summary["accepted"] = {"min_votes": min_votes, "num_images": len(kept)}
    else:
        figure = study_figure(out / "study.png", summary, ("real_or_generated", "real"), "realism")
        paths += [figure] if figure else []
    write_json(paths[1], summary)
    if wandb is not None:
        log_wandb(summary, rows, out, *wandb)
    return paths


def study_figure(path: Path, summary: dict, real: tuple[str, str], rating: str) -> Path | None:
    """Left: the fraction of answers `real[1]` to question `real[0]` per set, with 95% Wilson intervals;
    right: the distribution of answers to question `rating` per set. None when neither question was asked."""
    sets = summary["sets"]
    asked = [s for s in sets if real[0] in sets[s]["questions"] or rating in sets[s]["questions"]]
    if not asked:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for s in asked for k in sets[s]["questions"].get(rating, {}).get("counts", {})})
    width = 0.8 / len(asked)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for x, s in enumerate(asked):
        per_image = sets[s]["questions"].get(real[0], {}).get("images", {})  # one vote per image
        frac, n = per_image.get("fraction", {}), per_image.get("n", 0)
        v = frac.get(real[1], {"value": 0.0, "ci": list(wilson_interval(0, n))} if n else None)
        if v is not None:
            err = [[v["value"] - v["ci"][0]], [v["ci"][1] - v["value"]]]
            left.bar(x, v["value"], yerr=err, capsize=4, label=f"{s} (n={n})")
        counts = sets[s]["questions"].get(rating, {}).get("counts", {})
        total = sum(counts.values()) or 1
        right.bar(
            [k - 0.4 + (x + 0.5) * width for k in range(len(keys))],
            [counts.get(key, 0) / total for key in keys],
            width,
            label=s,
        )
    right.set_xticks(range(len(keys)), keys)
    left.set_xticks(range(len(asked)), asked)
    left.set_ylim(0, 1)
    left.set_ylabel(f"images judged '{real[1]}' by majority (95% Wilson)", fontsize=8)
    right.set_xlabel(rating)
    right.set_ylabel("fraction of answers")
    right.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
    return path


def scalars(summary: dict) -> dict[str, float]:
    """The summary as flat W&B keys: review/<set>/<question>/<answer> (fraction of answers),
    review/<set>/<question>/images/<answer> (fraction of images by majority answer),
    review/agreement/<question> (kappa), review/num_answers."""
    out: dict[str, float] = {"review/num_answers": float(summary["num_answers"])}
    for s, numbers in summary["sets"].items():
        for q, v in numbers["questions"].items():
            for answer, f in v.get("fraction", {}).items():
                out[f"review/{s}/{q}/{answer}"] = f["value"]
            for answer, f in v.get("images", {}).get("fraction", {}).items():
                out[f"review/{s}/{q}/images/{answer}"] = f["value"]
    for q, v in summary["agreement"].items():
        if v["kappa"] is not None:
            out[f"review/agreement/{q}"] = v["kappa"]
    return out


def log_wandb(summary: dict, rows: list[dict], out_dir: Path, project: str, mode: str) -> None:
    """Upload the summary (scalars, the answers as a table, the study figure when drawn) as one W&B run in
    out_dir/wandb (mode auto: offline without credentials or network, spurgen/loggers.py)."""
    import wandb

    from spurgen.loggers import wandb_mode

    run = wandb.init(
        project=project,
        dir=str(out_dir),
        mode=wandb_mode(mode),
        job_type="review",
        name=f"review-{out_dir.name}",
    )
    payload: dict = dict(scalars(summary))
    payload["review/answers"] = wandb.Table(
        columns=ANSWER_FIELDS, data=[[r[k] for k in ANSWER_FIELDS] for r in rows]
    )
    if (out_dir / "study.png").is_file():
        payload["review/study"] = wandb.Image(str(out_dir / "study.png"))
    run.log(payload)
    run.summary.update({"review/summary": summary})
    run.finish()
