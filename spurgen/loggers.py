"""Experiment loggers from config: W&B (offline without credentials or network), CSV, or none."""

from __future__ import annotations

import os
import re
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spurgen.config import LoggerConfig

SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|credential)", re.IGNORECASE)


def scrub_secrets(obj: Any) -> Any:
    """Copy of a (nested) config container with every secret-looking key's value replaced."""
    if isinstance(obj, dict):
        return {k: ("***" if SECRET_KEY.search(str(k)) else scrub_secrets(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_secrets(v) for v in obj]
    return obj


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def _online(host: str = "api.wandb.ai", timeout: float = 1.5) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextmanager
def argv_secrets_masked():
    """sys.argv with secret-looking override values masked (W&B records the command line)."""
    saved = sys.argv
    sys.argv = [
        f"{a.split('=', 1)[0]}=***" if "=" in a and SECRET_KEY.search(a.split("=", 1)[0]) else a
        for a in saved
    ]
    try:
        yield
    finally:
        sys.argv = saved


def wandb_mode(requested: str) -> str:
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    return "online" if _wandb_has_credentials() and _online() else "offline"


@dataclass
class RunLabels:
    """How a run is named in a logger, from the config (class, lambda_sfsl, seed)."""

    name: str
    group: str
    tags: list[str] = field(default_factory=list)


@dataclass
class NoLogger(LoggerConfig):
    """logger=none: nothing is logged (Lightning's `logger=False`). Every logger takes the keys of the typed
    `logger` schema (spurgen/config.py LoggerConfig); each uses those it needs."""

    kind: str = "none"

    def __call__(self, run_dir: Path, config: dict, labels: RunLabels):
        return False


@dataclass
class CsvLogger(LoggerConfig):
    """logger=csv: <run>/logs/metrics.csv."""

    kind: str = "csv"

    def __call__(self, run_dir: Path, config: dict, labels: RunLabels):
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="logs", version="")


@dataclass
class WandbLogger(LoggerConfig):
    """logger=wandb: offline without credentials or network (mode=auto); a resumed run continues the same
    W&B run (its id is kept in <run>/wandb_run_id.txt); a sweep's runs share one group."""

    kind: str = "wandb"

    def __call__(self, run_dir: Path, config: dict, labels: RunLabels):
        from lightning.pytorch.loggers import WandbLogger as LightningWandb

        from spurgen.distributed import is_global_zero
        from spurgen.sweep import sweep_group, sweep_tags

        mode = wandb_mode(self.mode)
        run_id_file = Path(run_dir) / "wandb_run_id.txt"
        run_id = run_id_file.read_text().strip() if run_id_file.exists() else None
        logger = LightningWandb(
            project=self.project,
            entity=self.entity,
            name=self.name or labels.name,
            group=self.group or sweep_group() or labels.group,  # a sweep's runs share one group
            tags=list(self.tags) + labels.tags + sweep_tags(),
            save_dir=str(run_dir),
            mode=mode,
            id=run_id,
            resume="allow" if run_id else None,
            config=scrub_secrets(config),
        )
        if mode != "disabled" and is_global_zero():
            # other DDP ranks hold a dummy run
            run_id_file.write_text(logger.experiment.id)
        return logger


def finish(logger: Any) -> None:
    """End a W&B run when training ends: Lightning leaves it open until the process exits, so a later run in
    the same process (a sweep job, a test, a resumed run) would log into it. The evaluate stage resumes it
    by id."""
    experiment = getattr(logger, "_experiment", None)  # set only once the run was started
    if experiment is not None and callable(getattr(experiment, "finish", None)):
        experiment.finish()


def scrub_hydra_files(run_dir: Path) -> None:
    """Hydra writes the config and overrides verbatim (.hydra/*.yaml): mask every secret value there."""
    import yaml

    hydra_dir = Path(run_dir) / ".hydra"
    ov_file = hydra_dir / "overrides.yaml"
    if not ov_file.exists():
        return
    secrets = []
    for line in yaml.safe_load(ov_file.read_text()) or []:
        key, _, value = str(line).partition("=")
        if SECRET_KEY.search(key) and value and value != "***":
            secrets.append(value)
    for path in hydra_dir.glob("*.yaml"):
        text = path.read_text()
        masked = text
        for value in secrets:
            masked = masked.replace(value, "***")
        if masked != text:
            path.write_text(masked)
