"""Export the images predicted as the target by at least m classifiers: the spurious test set.

spurgen export images_dir=outputs/.../generated min_classifiers=3 out_dir=spurious_set/
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from spurgen.cli.common import guarded, register_app_configs, resolve_target, run_main
from spurgen.config import CONF_DIR

register_app_configs()


def _task(cfg: DictConfig) -> dict:
    from spurgen.review.accept import accepted_votes, restrict_dataset
    from spurgen.stages.export import export

    index, _ = resolve_target(cfg, cfg.images_dir)
    if cfg.review:  # checked before any classifier is built
        accepted_votes(cfg.review, int(cfg.min_votes))
    summary = export(cfg.eval, cfg.images_dir, cfg.out_dir, index, int(cfg.min_classifiers))
    if cfg.review:
        summary = restrict_dataset(cfg.review, cfg.out_dir, int(cfg.min_votes))
    print(f"spurgen: exported {summary['num_exported']} of {summary['num_images']} images to {cfg.out_dir}")
    return summary


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def _hydra_entry(cfg: DictConfig) -> None:
    guarded(_task)(cfg)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run with command-line overrides (prog: argv[0] while it runs, None: unchanged); return the exit code
    (0 ok, 1 config error, 2 input error)."""
    return run_main(_hydra_entry, prog, argv)
