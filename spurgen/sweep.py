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
    (file names have at most 255 bytes). A value with a slash (model.path=/models/sd15) would nest folders, so
    such a name has its slashes turned into `_` and gets the hash too."""
    import hashlib

    if len(override_dirname) <= MAX_DIRNAME and "/" not in override_dirname:
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
