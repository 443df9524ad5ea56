"""spurgen's entry point: compose the config, validate, seed, then run the stages. Wiring only.

spurgen run class=sulphur_butterfly lambda_sfsl=0.1          (or python -m spurgen.run ...)
spurgen run -m class=hummingbird,koala lambda_sfsl=0,0.1,1

Only Hydra, OmegaConf and spurgen's config and validation modules are imported before the config is checked:
torch, Lightning and diffusers load after it, so a mistake is refused in about a second (tests/test_cli.py).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from spurgen.cli.common import run_main
from spurgen.config import CONF_DIR, register_configs, register_resolvers
from spurgen.errors import SpurgenError
from spurgen.validation import check_inputs, validate

register_configs()
register_resolvers()
_last_result: dict = {}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_entry(cfg: DictConfig) -> float | None:
    try:
        validate(cfg)
        if "train" in cfg.stages:
            check_inputs(cfg)  # references, model folder, extractor file: before anything heavy loads
        from spurgen.loggers import argv_secrets_masked, scrub_hydra_files
        from spurgen.torch_threads import torch_threads

        scrub_hydra_files(Path(cfg.run_dir))
        with argv_secrets_masked(), torch_threads(cfg.threads):  # loggers record the parsed command line
            result = run_stages(cfg, Path(cfg.run_dir))
        _last_result.clear()
        _last_result.update(result)
        return result.get("train", {}).get("final_losses", {}).get("train/loss")
    except SpurgenError as exc:
        print(f"spurgen: error: {exc}", file=sys.stderr)
        _remove_if_only_hydra_files(cfg)
        sys.exit(exc.exit_code)


def run_stages(cfg: DictConfig, run_dir: Path) -> dict:
    """Seed, then train -> generate -> evaluate (those listed in cfg.stages); run.json records each stage's
    wall time (`stage_seconds`)."""
    import time

    import lightning as L

    from spurgen.distributed import is_global_zero

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    result: dict = {}
    seconds: dict[str, float] = {}
    for name in ("train", "generate", "evaluate"):
        if name not in cfg.stages or (name != "train" and not is_global_zero()):  # DDP: rank 0 generates
            continue
        started = time.perf_counter()
        result[name] = _stage(name)(cfg, run_dir)
        seconds[name] = round(time.perf_counter() - started, 2)
    if is_global_zero():
        _record_stage_seconds(run_dir, seconds)
    if "evaluate" in result:
        from spurgen.eval.documented import documented_lines
        from spurgen.eval.outputs import summary_table
        from spurgen.identity import class_key, run_identity

        setting = (str(cfg.method_version), class_key(cfg)[1], run_identity(cfg), float(cfg.lambda_sfsl))
        documented = documented_lines(*setting, result["evaluate"])  # its figures over several seeds
        extra = f"\n\n{documented}" if documented else ""
        print(f"\n{summary_table(result['evaluate'])}{extra}\nall outputs: {run_dir}", flush=True)
    return result


def _stage(name: str):
    """The stage's entry point, imported when it runs."""
    if name == "train":
        from spurgen.stages.train import train

        return train
    if name == "generate":
        from spurgen.stages.generate import run_stage

        return run_stage
    from spurgen.stages.evaluate import run_stage

    return run_stage


def _record_stage_seconds(run_dir: Path, seconds: dict[str, float]) -> None:
    """Add this invocation's stage wall times to run.json (written by training; a generate- or evaluate-only
    run of a trained folder adds its own stages to the times recorded before)."""
    import json

    from spurgen.files import write_json

    path = Path(run_dir) / "run.json"
    if not seconds or not path.is_file():
        return
    meta = json.loads(path.read_text())
    meta["stage_seconds"] = {**meta.get("stage_seconds", {}), **seconds}
    write_json(path, meta)


def _remove_if_only_hydra_files(cfg: DictConfig) -> None:
    """A run that failed on its input leaves no folder behind (Hydra creates it before we start)."""
    try:
        run_dir = Path(cfg.run_dir)
    except Exception:  # noqa: BLE001 - no Hydra context (compose API): nothing was created
        return
    if cfg.get("resume") or not run_dir.is_dir():
        return
    if {p.name for p in run_dir.iterdir()} <= {".hydra", "run.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)
        _remove_empty_parents(run_dir)


def _remove_empty_parents(run_dir: Path) -> None:
    """The folders Hydra made above the run (outputs/<class>/lambda_<l>/seed_<s>/), while they are empty and
    inside the working directory."""
    here = Path.cwd().resolve()
    folder = run_dir.resolve().parent
    while folder != here and folder.is_relative_to(here):
        try:
            folder.rmdir()  # only an empty folder
        except OSError:
            return
        folder = folder.parent


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run with command-line overrides (prog: argv[0] while it runs, None: unchanged); return the exit code
    (0 ok, 1 config error, 2 input error)."""
    args = sys.argv[1:] if argv is None else list(argv)
    from spurgen.cli import preflight  # before Hydra starts: it writes the run (or sweep) folder at once

    if "-m" in args or "--multirun" in args:  # every job checked before the first one trains
        bad = preflight.preflight([a for a in args if a not in ("-m", "--multirun")])
        if bad:
            print("spurgen: error: sweep jobs would fail, so none was started:", file=sys.stderr)
            print("\n".join(f"  {line}" for line in bad), file=sys.stderr)
            return SpurgenError.exit_code
    else:  # resume=: refused before Hydra rewrites the run's .hydra/ (output folders: run_main checks them)
        problem = preflight.check_resume(args)
        if problem:
            print(f"spurgen: error: {problem}", file=sys.stderr)
            return SpurgenError.exit_code
    return run_main(_hydra_entry, prog, args)
