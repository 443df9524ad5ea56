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
