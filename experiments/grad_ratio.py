"""How hard does the SFSL pull against the instance loss? ||lambda * grad L_SFSL|| / ||grad L_inst||.

    python experiments/grad_ratio.py [config overrides ...] --batches 16 --lambdas 0,0.01,0.1,1,10 \
        --out docs/benchmarks/grad_ratio_mini.json

The run's parts are built exactly as `spurgen run` builds them from the same config and overrides (the
references, the prior images, the module), at the start of fine-tuning. For each of `batches` training
batches (the module's own seeded noise and timesteps), the gradients of L_inst and of L_SFSL with respect to
the trained parameters (UNet and text encoder) are taken separately, and r = ||grad L_SFSL|| / ||grad L_inst||.
A batch whose instance samples all have t > t_max gets no SFSL term; it is counted, not averaged in. The ratio
for a weight lambda is lambda * r (METHOD.md: L = L_inst + lambda_prior L_prior + lambda_sfsl L_SFSL).
Prints, and writes with --out, the median and quartiles of r over the batches and the ratio per lambda.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from spurgen.files import write_json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="spurgen config overrides, as on the spurgen run line")
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--lambdas", default="0,0.01,0.1,1,10", help="comma-separated lambda_sfsl values")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    try:
        args.lambdas = [float(x) for x in args.lambdas.split(",")]
    except ValueError:
        parser.error(f"--lambdas: not a comma-separated list of numbers: {args.lambdas!r}")
    if args.batches < 1 or any(x < 0 for x in args.lambdas):
        parser.error("--batches must be at least 1 and every lambda >= 0")
    return args


def compose(overrides: list[str], run_dir: Path):
    """The validated run config, with lambda_sfsl = 1 so that the SFSL and its extractor are built."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from spurgen.config import CONF_DIR, register_configs, register_resolvers
    from spurgen.validation import validate

    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose("config", overrides=[*overrides, "lambda_sfsl=1", f"run_dir={run_dir}"])
    return validate(cfg)


def build_run(cfg, run_dir: Path):
    """(module, loader) as the train stage builds them, with the SFSL's target m prepared."""
    from spurgen.build import build
    from spurgen.data.dataset import load_training_images
    from spurgen.stages.train import (
        build_dataset,
        build_extractor,
        build_loader,
        build_module,
        plan_training,
    )

    plan = plan_training(cfg, run_dir)
    extractor = build_extractor(cfg)
    parts = build(cfg.model)
    resolution = int(cfg.data.resolution or parts.resolution)
    refs = load_training_images(plan.references, resolution, cfg.data.center_crop)
    module = build_module(cfg, parts, extractor, refs)
    loader = build_loader(cfg, build_dataset(cfg, parts, refs, resolution), module)
    module.objective.sfsl.prepare_target()
    return module, loader


def grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def measure(module, loader, batches: int) -> dict:
    """Per batch: ||grad L_inst||, ||grad L_SFSL|| and how many instance samples passed the t_max gate."""
    params = [p for p in module.parameters() if p.requires_grad]
    rows = []
    for b, batch in enumerate(loader):
        if b == batches:
            break
        res = module.compute_losses(batch, module.step_generator(b), b)
        module.batches_seen += 1
        inst = grad_norm(res.parts["loss_instance"], params)
        sfsl = grad_norm(res.parts["loss_sfsl"], params) if res.sfsl_samples else 0.0
        rows.append({"batch": b, "grad_inst": inst, "grad_sfsl": sfsl, "sfsl_samples": res.sfsl_samples})
    return summarise(rows)


def summarise(rows: list[dict]) -> dict:
    ratios = np.array([r["grad_sfsl"] / r["grad_inst"] for r in rows if r["sfsl_samples"] and r["grad_inst"]])
    q = np.quantile(ratios, [0.25, 0.5, 0.75]).tolist() if ratios.size else [float("nan")] * 3
    return {
        "batches": len(rows),
        "batches_with_sfsl": int(ratios.size),
        "ratio_q25": q[0],
        "ratio_median": q[1],
        "ratio_q75": q[2],
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    from spurgen.errors import SpurgenError

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="spurgen-grad-ratio-") as tmp:
        try:
            cfg = compose(args.overrides, Path(tmp))
            module, loader = build_run(cfg, Path(tmp))
        except SpurgenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        result = measure(module, loader, args.batches)
    result["per_lambda"] = {
        str(lam): {k: lam * result[f"ratio_{k}"] for k in ("q25", "median", "q75")} for lam in args.lambdas
    }
    result["overrides"] = args.overrides
    result["command"] = "python experiments/grad_ratio.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"r = ||grad L_SFSL|| / ||grad L_inst||: median {result['ratio_median']:.4g} "
          f"(quartiles {result['ratio_q25']:.4g}-{result['ratio_q75']:.4g}; "
          f"{result['batches_with_sfsl']} of {result['batches']} batches had SFSL samples)")  # fmt: skip
    for lam, v in result["per_lambda"].items():
        print(f"  lambda_sfsl={lam}: ||lambda grad L_SFSL|| / ||grad L_inst|| = {v['median']:.4g}")
    if args.out:  # strict JSON, written atomically (a NaN ratio becomes null)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
