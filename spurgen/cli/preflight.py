"""A sweep's jobs checked before any starts (`spurgen run -m`): each planned job composed and checked as a run
would check itself before loading anything, so a mistake in job 7 stops the sweep before job 0 trains."""

from __future__ import annotations

from pathlib import Path


def planned_jobs(overrides: list[str]) -> list[list[str]] | None:
    """Each job's overrides as Hydra's basic sweeper will launch them (the sweep's `hydra.sweeper.params` from
    the composed config, e.g. an experiment's grid, then the command line), or None when that cannot be known
    here (another sweeper, Hydra flags, a syntax or composition error Hydra reports itself)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from spurgen.config import CONF_DIR

    if any(a.startswith("-") for a in overrides):
        return None
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
        plain = [o.input_line for o in parsed if not o.is_sweep_override()]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            hydra_cfg = compose("config", overrides=plain, return_hydra_config=True).hydra
        if not str(hydra_cfg.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return None
        params = [f"{k}={v}" for k, v in (OmegaConf.select(hydra_cfg, "sweeper.params") or {}).items()]
        batches = BasicSweeper.split_arguments(parser.parse_overrides(params + overrides), None)
    except Exception:  # noqa: BLE001 - Hydra itself reports what it cannot parse or compose
        return None
    return [list(job) for batch in batches for job in batch]


def _composed_and_checked(compose, overrides: list[str]):
    """The job's config, after the checks a run makes before it loads anything (validate, then the training
    inputs: references, model folder, extractor file); raises SpurgenError on the first problem set."""
    from spurgen.validation import check_inputs, validate

    cfg = compose("config", overrides=overrides)
    validate(cfg)
    if "train" in cfg.stages:
        check_inputs(cfg)
    return cfg


def preflight(overrides: list[str]) -> list[str]:
    """Compose every job of a sweep and check it as a run would before building anything (validate, then the
    training inputs: references, model folder, extractor file): one line per problem with the jobs that have
    it, [] when all are fine. So a mistake in job 7 stops the sweep before job 0 trains, not after job 6."""
    from hydra import compose, initialize_config_dir

    from spurgen.config import CONF_DIR
    from spurgen.errors import SpurgenError

    jobs = planned_jobs(overrides)
    if not jobs or len(jobs) < 2:
        return []  # one job: the run checks itself
    keys = [[o.split("=", 1)[0] for o in job] for job in jobs]
    varying = {k for k in keys[0] if len({next(o for o in j if o.split("=", 1)[0] == k) for j in jobs}) > 1}
    problems: dict[str, list[str]] = {}  # message -> the jobs with it
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for num, job in enumerate(jobs):
            try:
                _composed_and_checked(compose, job)
            except SpurgenError as exc:
                label = " ".join(o for o in job if o.split("=", 1)[0] in varying) or " ".join(job)
                problems.setdefault(str(exc), []).append(f"#{num} ({label})")
            except Exception:  # noqa: BLE001 - what only Hydra's own launch can tell is left to it
                continue
    lines = []
    for message, where in problems.items():
        shown = ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")
        lines.append(f"job{'s' if len(where) > 1 else ''} {shown}: {message}")
    return lines


def check_resume(overrides: list[str]) -> str | None:
    """With resume=<run folder>: the checks a run makes before it loads anything, and that the settings are
    the ones the run was trained with, made before Hydra starts. Hydra rewrites the folder's .hydra/ config
    as soon as it starts, so a resume refused any later would leave the finished run labelled with the
    refused settings. The problem, or None."""
    from hydra import compose, initialize_config_dir

    from spurgen.config import CONF_DIR
    from spurgen.errors import SpurgenError

    if not any(a.startswith("resume=") for a in overrides) or any(a.startswith("-") for a in overrides):
        return None
    from spurgen.validation import resume_mismatch

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = _composed_and_checked(compose, overrides)
        return resume_mismatch(cfg, Path(str(cfg.resume)).expanduser()) if cfg.resume else None
    except SpurgenError as exc:
        return str(exc)
    except Exception:  # noqa: BLE001 - what only the run itself can tell is left to it
        return None
