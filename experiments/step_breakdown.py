"""Where one training step of the default run (experiment=mini) spends its time, with and without the SFSL.

    python -m experiments.step_breakdown --out docs/benchmarks            (make bench runs it)

The run's own parts, batches and noise are built the way the train stage builds them (spurgen/stages/train.py).
Each step is then taken apart at detach points so that every piece is timed alone, forward and backward:
data and collation, the latents (the frozen VAE's cached encoding), the text encoder, the UNet on the instance
half and on the class half, the SFSL (z0_hat, decode, resize and extractor, each backward too), the losses and
the optimiser. t is drawn as in training, so the SFSL runs on the instance samples with t <= t_max only, as it
does in a run. The same steps are then timed whole: as a plain PyTorch loop (module.compute_losses, backward,
optimiser) and under Lightning's Trainer (the run's trainer settings); "Lightning's own time" is the Trainer's
per-step time less the plain loop's. Generation (images/s at the run's 20 sampler steps) and evaluation (images/s
per classifier) are measured the same way. Numbers are medians over --steps steps (after --warmup) on this
machine; machines of one kind differ by about 2x, so compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from spurgen.build import build
from spurgen.losses import denoising_target
from spurgen.losses.diffusion import denoising_losses
from spurgen.losses.sfsl import decode_to_unit, predict_z0


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from spurgen.config import CONF_DIR, register_configs, register_resolvers

    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=["logger=none", *overrides])


def build_run(lam: float):
    """(cfg, module, loader) as the train stage builds them for experiment=mini with lambda_sfsl=lam."""
    from spurgen.data.dataset import load_training_images
    from spurgen.stages.train import build_dataset, build_extractor, build_loader, build_module
    from spurgen.validation import resolve_references, validate

    cfg = validate(compose(f"lambda_sfsl={lam}"))
    parts = build(cfg.model)
    resolution = int(cfg.data.resolution or parts.resolution)
    refs = load_training_images(resolve_references(cfg), resolution, cfg.data.center_crop)
    dataset = build_dataset(cfg, parts, refs, resolution)
    module = build_module(cfg, parts, build_extractor(cfg), refs)
    if module.objective.uses_sfsl:
        module.objective.sfsl.prepare_target()
    return cfg, module, build_loader(cfg, dataset, module)


class Clock:
    """Named wall times, one list per piece; `piece(name)` times a block."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)

    def piece(self, name: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.times[name].append(time.perf_counter() - start)
        return out


def sfsl_pieces(clock: Clock, module, z_t, out_inst, t_inst) -> torch.Tensor | None:
    """The SFSL on the gated instance samples, piece by piece; returns d(lambda L_SFSL)/d(out_inst)."""
    sfsl, lam = module.objective.sfsl, float(module.objective.lambda_sfsl)
    keep = sfsl.gate(t_inst)
    if not bool(keep.any()):
        return None
    ab = sfsl.alphas_cumprod[t_inst[keep]]
    out = out_inst.detach()[keep].requires_grad_(True)
    mean = out.mean(dim=(2, 3), keepdim=True)
    z0 = clock.piece("sfsl: z0_hat", predict_z0, z_t[keep], out - mean + mean.detach(), ab, "epsilon")
    z0_leaf = z0.detach().requires_grad_(True)
    x = clock.piece("sfsl: decode forward", decode_to_unit, module.vae, z0_leaf)
    x_leaf = x.detach().requires_grad_(True)
    resized = clock.piece("sfsl: resize + normalise", sfsl.extractor.prepare, x_leaf)
    r_leaf = resized.detach().requires_grad_(True)
    phi = clock.piece("sfsl: extractor forward", lambda r: sfsl.extractor.forward_prepared(r)[0], r_leaf)
    loss = lam * sfsl.distance_to_reference(phi)
    clock.piece("sfsl: extractor backward", loss.backward)
    clock.piece("sfsl: resize backward", resized.backward, r_leaf.grad)
    clock.piece("sfsl: decode backward", x.backward, x_leaf.grad)
    clock.piece("sfsl: z0_hat backward", z0.backward, z0_leaf.grad)
    grad = torch.zeros_like(out_inst)
    grad[keep] = out.grad
    return grad


def one_step(clock: Clock, module, optimizer, batch, b: int) -> None:
    """One step of compute_losses' computation, split at detach points (same noise: generator of batch b)."""
    gen = module.step_generator(b)
    n = int(batch["n_instance"])
    with torch.no_grad():
        mean, std = clock.piece("latents (cached VAE encoding)", module.latent_distribution, batch["pixel_values"],
                                batch.get("keys"))  # fmt: skip
        z = (mean + std * torch.randn(mean.shape, generator=gen)) * module.vae.config.scaling_factor
    eps = torch.randn(z.shape, generator=gen)
    t = module.sample_timesteps(z.shape[0], gen)
    z_t = module.noise_scheduler.add_noise(z, eps, t)
    target = denoising_target(module.noise_scheduler, z, eps, t)
    enc = clock.piece("text encoder forward", module.encode_prompts, batch["input_ids"])
    enc_leaf = enc.detach().requires_grad_(True)
    outs = []
    for half, sl in (("instance", slice(0, n)), ("class", slice(n, None))):
        outs.append(
            clock.piece(
                f"UNet forward, {half} half", lambda s: module.unet(z_t[s], t[s], enc_leaf[s]).sample, sl
            )
        )
    out = torch.cat(outs)
    loss_inst, loss_prior = clock.piece("L_inst + L_prior", denoising_losses, out, target, n)
    grad_sfsl = sfsl_pieces(clock, module, z_t[:n], outs[0], t[:n]) if module.objective.uses_sfsl else None
    lam_prior = float(module.objective.lambda_prior)
    grads = torch.autograd.grad(loss_inst + lam_prior * loss_prior, outs)
    g_inst = grads[0] + (grad_sfsl if grad_sfsl is not None else 0)
    clock.piece("UNet backward, instance half", outs[0].backward, g_inst)
    clock.piece("UNet backward, class half", outs[1].backward, grads[1])
    clock.piece("text encoder backward", enc.backward, enc_leaf.grad)
    clock.piece("optimiser step", lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)))


def median_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 2)


def pieces(lam: float, steps: int, warmup: int) -> dict:
    _, module, loader = build_run(lam)
    optimizer = module.configure_optimizers()
    clock = Clock()
    batches = iter(loader)
    for b in range(warmup + steps):
        if b == warmup:
            clock = Clock()
        batch = clock.piece("data + collation", next, batches)
        one_step(clock, module, optimizer, batch, b)
    # the SFSL's pieces ran only on steps with a gated sample: spread over every step, as in a run
    return {name: round(1000 * sum(v) / steps, 2) for name, v in clock.times.items()}


def whole_steps(lam: float, steps: int, warmup: int) -> dict:
    """Per-step ms of the same steps as a plain loop and under the run's Lightning Trainer."""
    import lightning as L

    cfg, module, loader = build_run(lam)
    optimizer = module.configure_optimizers()
    times = []
    for b, batch in zip(range(warmup + steps), loader, strict=False):
        start = time.perf_counter()
        res = module.compute_losses(batch, module.step_generator(b), b)
        res.total.backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    plain = median_ms(times[warmup:])

    cfg, module, loader = build_run(lam)
    trainer_node = {k: v for k, v in dict(cfg.trainer).items() if k != "_target_"}
    trainer_node.update(max_steps=warmup + steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    stamps: list[float] = []

    class Stamp(L.Callback):
        def on_train_batch_start(self, *args) -> None:
            stamps.append(time.perf_counter())

    trainer = L.Trainer(**trainer_node, callbacks=[Stamp()], default_root_dir="/tmp/spurgen-step-breakdown")
    trainer.fit(module, loader)
    per_step = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :], strict=False)]
    lightning = median_ms(per_step)
    return {
        "plain loop": plain,
        "Lightning Trainer": lightning,
        "Lightning's own time": round(lightning - plain, 2),
    }


def generation_and_evaluation(images: int) -> dict:
    """images/s of the run's sampler settings (experiment=mini: 20 steps, guidance 4) and of each classifier."""
    from spurgen.eval.predict import resize_image, to_tensor
    from spurgen.pipeline import SampleSettings, make_pipeline, sample

    cfg = compose()
    parts = build(cfg.model)
    pipe = make_pipeline(parts.unet, parts.text_encoder, parts.tokenizer, parts.vae, parts.sample_scheduler)
    settings = SampleSettings(int(cfg.generate.num_inference_steps), float(cfg.generate.guidance_scale),
                              parts.resolution, None)  # fmt: skip
    prompts, seeds = ["a photo of a texture"] * images, list(range(images))
    sample(pipe, prompts[:2], seeds[:2], settings)  # warm-up
    start = time.perf_counter()
    pictures = sample(pipe, prompts, seeds, settings)
    result = {"generation images/s (20 steps, one batch)": round(images / (time.perf_counter() - start), 2)}
    for name, node in cfg.eval.classifiers.items():
        model = build(node).eval()
        start = time.perf_counter()
        with torch.no_grad():  # as the evaluate stage prepares them: resized to the model's size, no crop
            x = torch.stack(
                [resize_image(to_tensor(p), model.input_size, model.interpolation, None) for p in pictures]
            )
            model.logits(x)
        result[f"evaluation images/s, {name}"] = round(images / (time.perf_counter() - start), 1)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    result: dict = {"threads": torch.get_num_threads(), "steps": args.steps}
    for lam in (0.1, 0.0):
        key = f"lambda_sfsl={lam:g}"
        result[key] = {
            "pieces_ms": pieces(lam, args.steps, args.warmup),
            **whole_steps(lam, args.steps, args.warmup),
        }
        print(f"[step_breakdown] {key}: {json.dumps(result[key])}", flush=True)
    result["generation_evaluation"] = generation_and_evaluation(args.images)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_breakdown.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "STEP_BREAKDOWN.md").write_text(
        report(result, " ".join(sys.argv[1:] if argv is None else argv))
    )
    print(f"[step_breakdown] wrote {args.out / 'STEP_BREAKDOWN.md'}")
    return 0


def report(result: dict, args: str) -> str:
    lines = [
        "# One training step of the default run (experiment=mini), piece by piece",
        "",
        f"`python -m experiments.step_breakdown {args}`; {result['threads']} torch threads; medians per step in ms",
        f"over {result['steps']} steps (the SFSL's pieces averaged over every step, as t is drawn in training).",
        "",
    ]
    with_sfsl, without = result["lambda_sfsl=0.1"], result["lambda_sfsl=0"]
    names = list(dict.fromkeys([*with_sfsl["pieces_ms"], *without["pieces_ms"]]))
    total_w, total_o = sum(with_sfsl["pieces_ms"].values()), sum(without["pieces_ms"].values())
    lines += ["| piece | λ = 0.1 ms | share | λ = 0 ms | share |", "|---|---|---|---|---|"]
    for name in names:
        a, b = with_sfsl["pieces_ms"].get(name, 0.0), without["pieces_ms"].get(name, 0.0)
        lines.append(f"| {name} | {a:.1f} | {a / total_w:.0%} | {b:.1f} | {b / total_o:.0%} |")
    lines.append(f"| **sum of the pieces** | {total_w:.1f} | | {total_o:.1f} | |")
    for key in ("plain loop", "Lightning Trainer", "Lightning's own time"):
        lines.append(f"| whole step: {key} | {with_sfsl[key]:.1f} | | {without[key]:.1f} | |")
    lines += ["", "| generation and evaluation | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result["generation_evaluation"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
