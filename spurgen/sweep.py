"""Where a run sits in a Hydra sweep: the W&B group and tags that let a dashboard compare a sweep's runs."""

from __future__ import annotations

from pathlib import Path


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def sweep_group() -> str | None:
    """In a multirun job: `<experiment>-<sweep folder name>` (or just the folder name); None otherwise.
    Every run of one sweep gets the same group, and two sweeps never share one."""
    from hydra.types import RunMode

    hc = _hydra()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    folder = Path(str(hc.sweep.dir)).name
    experiment = hc.runtime.choices.get("experiment")
    if experiment and experiment != "null" and experiment not in folder:
        return f"{experiment}-{folder}"
    return folder


def sweep_tags() -> list[str]:
    """`sweep:<group>`, `experiment:<name>` and `job:<index>` in a multirun job; [] otherwise."""
    group = sweep_group()
    if group is None:
        return []
    hc = _hydra()
    tags = [f"sweep:{group}", f"job:{hc.job.num}"]
    experiment = hc.runtime.choices.get("experiment")
    if experiment and experiment != "null":
        tags.append(f"experiment:{experiment}")
    return tags


FIRST_KEYS = ("class", "lambda_sfsl", "seed")  # what a sweep's folder names should show first
MAX_DIRNAME = 160


def short_dirname(override_dirname: str) -> str:
    """A run's sub-folder name in a sweep: Hydra's override_dirname (`k=v,k=v`), unchanged when it is short;
    otherwise class, lambda_sfsl and seed first, cut to fit, plus a hash of the whole so names stay unique
    (file names have at most 255 bytes)."""
    import hashlib

    if len(override_dirname) <= MAX_DIRNAME:
        return override_dirname
    items: list[str] = []
    for piece in override_dirname.split(","):  # a value may itself hold commas: glue such pieces back
        if "=" in piece or not items:
            items.append(piece)
        else:
            items[-1] += "," + piece
    items.sort(key=lambda kv: FIRST_KEYS.index(kv.split("=")[0]) if kv.split("=")[0] in FIRST_KEYS else 9)
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:8]
    return ",".join(items)[: MAX_DIRNAME - 9].replace("/", "_") + "-" + digest


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


def preflight(overrides: list[str]) -> list[str]:
    """Compose every job of a sweep and check it as a run would before building anything (validate, then the
    training inputs: references, model folder, extractor file): one line per problem with the jobs that have
    it, [] when all are fine. So a mistake in job 7 stops the sweep before job 0 trains, not after job 6."""
    from hydra import compose, initialize_config_dir

    from spurgen.config import CONF_DIR
    from spurgen.errors import SpurgenError
    from spurgen.validation import validate

    jobs = planned_jobs(overrides)
    if not jobs or len(jobs) < 2:
        return []  # one job: the run checks itself
    from spurgen.stages.train import check_inputs

    keys = [[o.split("=", 1)[0] for o in job] for job in jobs]
    varying = {k for k in keys[0] if len({next(o for o in j if o.split("=", 1)[0] == k) for j in jobs}) > 1}
    problems: dict[str, list[str]] = {}  # message -> the jobs with it
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for num, job in enumerate(jobs):
            try:
                cfg = compose("config", overrides=job)
                validate(cfg)
                if "train" in cfg.stages:
                    check_inputs(cfg)
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
