"""Measure a folder of images across classifiers (METHOD.md, 'Evaluation').

spurgen evaluate images_dir=outputs/.../generated class=hummingbird eval.reference_dir=refs/
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from spurgen.cli.common import guarded, register_app_configs, resolve_target, run_main
from spurgen.config import CONF_DIR

register_app_configs()


def _task(cfg: DictConfig) -> dict:
    from spurgen.stages.evaluate import evaluate

    index, component = resolve_target(cfg, cfg.images_dir)
    result = evaluate(cfg.eval, cfg.images_dir, cfg.out_dir, index, component, cfg.logger)
    out = Path(cfg.out_dir)
    for name, numbers in result["results"].items():
        rates = ", ".join(
            f"{c} {v['spurious_rate']['value']:.3f}" for c, v in numbers["per_classifier"].items()
        )
        print(f"spurgen: {name} ({numbers['num_images']} images) spurious rate: {rates}")
    print(f"spurgen: results in {out / 'metrics.json'}")
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def _hydra_entry(cfg: DictConfig) -> None:
    guarded(_task)(cfg)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run with command-line overrides (prog: argv[0] while it runs, None: unchanged); return the exit code
    (0 ok, 1 config error, 2 input error)."""
    return run_main(_hydra_entry, prog, argv)
