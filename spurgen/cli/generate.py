"""Generate images from a fine-tuned pipeline (or the base model with generate.baseline=true).

spurgen generate pipeline_dir=outputs/.../pipeline generate.num_images=200
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from spurgen.cli.common import guarded, register_app_configs, resolve_target, run_main
from spurgen.config import CONF_DIR

register_app_configs()


def _task(cfg: DictConfig) -> dict:
    from spurgen.stages.generate import generate

    if cfg.target is not None:
        resolve_target(cfg)
    pipeline_dir = Path(cfg.pipeline_dir).expanduser() if cfg.pipeline_dir else None
    default_out = "baseline" if cfg.generate.baseline else "generated"
    if cfg.out_dir:
        out_dir = Path(cfg.out_dir)
    elif pipeline_dir is not None:
        out_dir = pipeline_dir.resolve().parent / default_out
    else:
        out_dir = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir) / default_out
    summary = generate(cfg.generate, pipeline_dir, out_dir, cfg.target, cfg.model)
    print(
        f"spurgen: {summary['num_images']} images in {out_dir} ({summary['generated_now']} new, "
        f"{summary['black_images']} all black)"
    )
    return summary


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def _hydra_entry(cfg: DictConfig) -> None:
    guarded(_task)(cfg)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run with command-line overrides (prog: argv[0] while it runs, None: unchanged); return the exit code
    (0 ok, 1 config error, 2 input error)."""
    return run_main(_hydra_entry, prog, argv)
