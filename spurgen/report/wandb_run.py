"""The report as one W&B run (job_type report) in the sweep's group, beside the sweep's training runs."""

from __future__ import annotations

from pathlib import Path

import yaml

from spurgen.report.collect import Sweep, load_yaml


def training_group(root: Path) -> str:
    """The W&B group the sweep's training runs got (spurgen.sweep.sweep_group): <experiment>-<folder>."""
    for hydra_yaml in sorted(root.glob("*/.hydra/hydra.yaml")):
        try:
            choices = (yaml.safe_load(hydra_yaml.read_text()) or {})["hydra"]["runtime"]["choices"]
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            continue
        experiment = choices.get("experiment")
        if experiment and experiment != "null" and experiment not in root.name:
            return f"{experiment}-{root.name}"
        return root.name
    return root.name


def _wandb_project(sweep: Sweep) -> tuple[str, str | None]:
    """The W&B project and entity the sweep's runs logged to (their saved logger config), so that the
    report run sits beside them; spurgen's default project when no run says."""
    for run in sorted(sweep.runs, key=lambda r: str(r.folder)):
        saved = load_yaml(run.folder / ".hydra" / "config.yaml") or {}
        logger = saved.get("logger") or {}
        if logger.get("project"):
            return str(logger["project"]), logger.get("entity")
    return "spurgen", None


def push_wandb(
    sweep: Sweep, lines: list[dict], figures: dict[str, Path], effects: list[dict] | None = None
) -> None:
    """The table, the effect-shown lines (effects.csv) and figures as one W&B run (job_type report) in the
    sweep's group."""
    import wandb

    from spurgen.loggers import wandb_mode

    project, entity = _wandb_project(sweep)
    run = wandb.init(
        project=project,
        entity=entity,
        group=training_group(sweep.root),
        job_type="report",
        name=f"report-{sweep.root.name}",
        dir=str(sweep.root),
        mode=wandb_mode("auto"),
        reinit="finish_previous",
    )
    payload = {"report/table": _table(wandb, lines, "metric")}
    if effects:
        payload["report/effects"] = _table(wandb, effects, "verdict")
    payload.update({f"report/{k.replace(':', '_')}": wandb.Image(str(p)) for k, p in figures.items()})
    if sweep.problems:
        payload["report/problems"] = wandb.Table(
            columns=["run", "why"], data=[list(p) for p in sweep.problems]
        )
    run.log(payload)
    run.finish()


def _table(wandb, lines: list[dict], empty_column: str):
    """A W&B table of dict lines. W&B tables need one type per column: a column mixing numbers and text
    (lambda_sfsl is "" on the reference and baseline rows) becomes text."""
    cols = list(lines[0]) if lines else [empty_column]
    mixed = {c for c in cols if len({isinstance(ln[c], str) for ln in lines if ln[c] is not None}) > 1}
    data = [[str(ln[c]) if c in mixed and ln[c] is not None else ln[c] for c in cols] for ln in lines]
    return wandb.Table(columns=cols, data=data)
