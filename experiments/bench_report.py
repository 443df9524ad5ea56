"""BENCHMARKS.md from the numbers of experiments/bench.py (tables, performance targets, the machine)."""

from __future__ import annotations

import time
from pathlib import Path

from experiments.bench_setup import BASE_CACHED_KEY, FAST_CACHED_KEY, FAST_KEY

REAL_UNET_S, REAL_VAE_S = (
    9.5,
    29.0,
)  # ../shared/ENVIRONMENT.md: SD 1.5 UNet forward 9-10 s, decode to 512² 29 s

STATIC = """
## What the settings are

| setting | what it does | where |
|---|---|---|
| exact | decode z0_hat at full resolution, then resize for f (METHOD.md default) | `loss=default` |
| decode at f input | resize z0_hat to f's input size / 8, decode that (224 px for a ResNet-50 instead of 512) | `loss=approx`, `loss.sfsl.decode_at_extractor_size=true` (or `loss.sfsl.decode_size=<px>`) |
| decoder checkpointing | recompute the decoder's mid/up blocks in backward (same value, less memory, slower) | `loss=low_memory`, `loss.sfsl.decoder_checkpointing=true` |
| t_max gate | only instance samples with t <= t_max are decoded: sfsl.py indexes with the gate *before* predicting z0_hat and decoding, so a step whose samples all have t > t_max runs no decoder | `loss.sfsl.t_max` (500, the METHOD.md default) |
| every k steps | the term on every k-th step only | `loss.sfsl.every_n_steps=k` |
| bf16 autocast | bf16 compute, fp32 master weights, losses in fp32 | `trainer.precision=bf16-mixed` |
| **loss=fast** | the fastest setting measured to keep fidelity: the exact computation with the t_max gate (500) and gated-only decoding, which are the defaults; nothing that changes the decode kept fidelity, and checkpointing is slower | `loss=fast` (conf/loss/fast.yaml, = `loss=default`) |
| loss=low_memory | decoder checkpointing: the same gradient, less activation memory, one more decoder forward | `loss=low_memory` |
| loss=approx | decode at f input: cheap, but its gradient is far from the exact one at the proportional size (see Fidelity) | `loss=approx` (conf/loss/approx.yaml) |
| fused AdamW | torch's one-kernel AdamW (same update), used wherever it runs | spurgen/optim.py (automatic) |
| channels-last evaluation | classifiers' weights and inputs in channels-last memory layout | `eval.channels_last` (true) |
| latent cache | each training image encoded by the frozen VAE once (alone), reused every step it returns | `train.cache_latents` (true) |
| gradients freed after each update | SpurgenModule.optimizer_step sets them to None at once, not after the next forward (Lightning's order) | automatic |

Section (a) fixes t (instance t = 250, prior t = 600), so every SFSL step there is one where the term *is*
computed: the worst case. Section (a), training run, draws t from each step's seeded generator exactly as
training does, so the gate (t <= 500) skips the term on about half the steps; that is the cost a training
run pays. With every_n_steps = k the extra is divided by k further. Neither the gate nor every_n_steps
changes the gradient of a step on which the term runs, so their fidelity on fixed inputs is 1 by
construction; every_n_steps does scale the average SFSL gradient by 1/k (raise lambda_sfsl to compensate),
so it is not part of loss=fast.

## Small-GPU presets (composition tested in tests/test_lora.py; memory on a GPU not measured here)

| preset | settings |
|---|---|
| `trainer=gpu_24gb` | bf16-mixed, gradient checkpointing of UNet and text encoder, 8-bit AdamW (bitsandbytes, CUDA only) |
| `trainer=gpu_16gb` | as gpu_24gb, plus LoRA (rank 16) on the UNet's and text encoder's attention instead of full fine-tuning; merged into the weights before `pipeline/` is saved |

Add `loss=low_memory` to either for the SFSL with less activation memory. Without CUDA or bitsandbytes, `train.optimizer=adamw8bit` stops
at start-up with a message saying so.
"""


def _ms(v: dict) -> str:
    return f"{v['median'] * 1e3:.1f} [{v['p10'] * 1e3:.1f}, {v['p90'] * 1e3:.1f}]"


def _pass(ok: bool) -> str:
    return "**pass**" if ok else "**FAIL**"


def _costs_table(c: dict) -> list[str]:
    """Forward costs of the parts, beside SD 1.5's on this CPU (../shared/ENVIRONMENT.md)."""
    lines = [
        "### Forward costs, batch 1, no grad (median of 7)\n",
        "| part | ms | ratio to UNet | SD 1.5 on this CPU |",
        "|---|---|---|---|",
    ]
    real = {"unet": "1", "vae_decode": f"{REAL_VAE_S / REAL_UNET_S:.2f} (29 s / 9.5 s)"}
    if "resnet50_224" in c:
        real["extractor"] = (
            f"{c['resnet50_224'] / REAL_UNET_S:.3f} (ResNet-50 at 224: {c['resnet50_224'] * 1e3:.0f} ms here / 9.5 s)"
        )
    for k in ("unet", "vae_decode", "extractor"):
        lines.append(f"| {k} | {c[k] * 1e3:.1f} | {c[k] / c['unet']:.3f} | {real.get(k, '-')} |")
    return lines


def _step_table(s: dict, repeats: int) -> list[str]:
    """Section (a): one training step per setting, t fixed so that the term runs."""
    base = s["lambda_sfsl=0"]["median"]
    lines = [
        f"\n### (a) Training step: compute_losses + backward + clip + AdamW (ms, median [p10, p90], n={repeats})\n",
        "t fixed so that the term runs (the worst case).\n",
        "| setting | step ms | x lambda_sfsl=0 |",
        "|---|---|---|",
    ]
    return lines + [f"| {k} | {_ms(v)} | {v['median'] / base:.2f} |" for k, v in s.items()]


def _run_table(run: dict) -> list[str]:
    """Section (a), training run: t drawn as in training, so the t_max gate skips some steps."""
    run0 = run[BASE_CACHED_KEY]["mean"]
    lines = [
        f"\n### (a) Training run: t drawn as in training, {run['steps']} steps per setting (ms)\n",
        "Latents cached (train.cache_latents, the default), as in training.\n",
        "| setting | mean | median [p10, p90] | mean x lambda_sfsl=0 |",
        "|---|---|---|---|",
    ]
    for k in [k for k in run if isinstance(run[k], dict)]:
        v = run[k]
        lines.append(f"| {k} | {v['mean'] * 1e3:.1f} | {_ms(v)} | {v['mean'] / run0:.2f} |")
    on, off = run["fast_mean_term_ran"], run["fast_mean_term_skipped"]
    lines.append(
        f"\nThe term ran on {run['term_ran']} of {run['steps']} steps (the gate passes t <= 500 of 1000)"
        + (f"; loss=fast steps where it ran: {on * 1e3:.1f} ms" if on else "")
        + (f", where the gate skipped it: {off * 1e3:.1f} ms" if off else "")
        + "."
    )
    return lines


def _term_table(t: dict) -> list[str]:
    """L_SFSL alone per variant, relative to the exact term."""
    ex = t["exact (1 sample; loss=fast)"]["median"]
    lines = [
        "\n### L_SFSL alone: forward + backward to the model output (ms)\n",
        "| variant | ms | x exact |",
        "|---|---|---|",
    ]
    return lines + [f"| {k} | {_ms(v)} | {v['median'] / ex:.2f} |" for k, v in t.items()]


def _overhead(r: dict) -> tuple[float, float, float, float]:
    """(Lightning fit median, plain loop median, Lightning's own time, module step over the plain loop - 1)."""
    f, s = r["framework"], r["step"]
    lit, plain = f["Lightning fit (spurgen module)"]["median"], f["plain PyTorch loop"]["median"]
    own = f["Lightning's own time in a fit step"]["median"]
    mod = s["lambda_sfsl=0"]["median"] / s["plain loop, lambda_sfsl=0"]["median"] - 1
    return lit, plain, own, mod


def _framework_table(r: dict) -> list[str]:
    """Section (b): Lightning's overhead over a plain PyTorch loop."""
    lit, plain, own, mod = _overhead(r)
    lines = ["\n### (b) Framework overhead, lambda_sfsl = 0, per step (ms)\n", "| loop | ms |", "|---|---|"]
    lines += [f"| {k} | {_ms(v)} |" for k, v in r["framework"].items()]
    lines.append(
        f"\nA/B, Lightning fit vs plain loop (medians): {100 * (lit / plain - 1):+.1f} %. Lightning's own time "
        f"(a fit step's wall time minus the time in training_step, backward, clipping and the optimiser's "
        f"update, measured inside the same steps): {100 * own / plain:+.1f} % of a plain step. "
        f"SpurgenModule.compute_losses step vs the plain loop (section a): {100 * mod:+.1f} %."
    )
    return lines


def _eval_table(ev: dict) -> tuple[list[str], dict[str, tuple[float, float]]]:
    """Section (c) and, per classifier, (speed-up over the naive loop, naive loop's fraction of the GEMM rate)."""
    gemm = ev["gemm_gflops"]
    lines = [
        "\n### (c) Evaluation, images/s (file decode + resize + logits + softmax)\n",
        f"GFLOP/s: the model's forward FLOPs x images/s; this machine's float32 matrix multiply (2048^3) runs at "
        f"{gemm:.0f} GFLOP/s, the ceiling for either loop.\n",
        "| classifier | GFLOP/image | images | batched (predict_set) | naive loop | speed-up | batched GFLOP/s | naive GFLOP/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    speedups = {}
    for clf, v in ev["classifiers"].items():
        b, nv = v["batched (predict_set)"], v["naive loop"]
        n, gf = b["images"], v["gflop_per_image"]
        speedups[clf] = (nv["median"] / b["median"], gf * n / nv["median"] / gemm)
        lines.append(
            f"| {clf} | {gf:.3g} | {n} | {n / b['median']:.1f} | {n / nv['median']:.1f} | "
            f"{speedups[clf][0]:.2f}x | {gf * n / b['median']:.0f} | {gf * n / nv['median']:.0f} |"
        )
    return lines, speedups


def _gen_line(g: dict) -> str:
    """Section (d): generation throughput."""
    return (
        f"\n### (d) Generation\n\nspurgen.pipeline.sample, {g['images']} image(s) x {g['steps']} DDIM steps, "
        f"guidance 3 with a negative prompt: {g['images'] / g['median']:.2f} images/s "
        f"(median {g['median']:.2f} s [{g['p10']:.2f}, {g['p90']:.2f}])."
    )


def _fidelity_table(fid: dict) -> list[str]:
    """Cosine of each cheaper setting's UNet gradient to the exact one."""
    lines = [
        "\n### Fidelity: cosine of the UNet gradient of L_SFSL to the exact one (fixed inputs, t = 100/250/400)\n",
        "| setting | cosine | norm ratio | keeps fidelity (>= 0.9) |",
        "|---|---|---|---|",
    ]
    for k, v in fid.items():
        lines.append(
            f"| {k} | {v['cosine']:.4f} | {v['norm_ratio']:.3f} | {'yes' if v['cosine'] >= 0.9 else 'no'} |"
        )
    return lines


def _memory_table(m: dict) -> list[str]:
    """Peak memory per configuration; training steps also relative to lambda_sfsl = 0."""
    m0 = m.get("step/lambda_sfsl=0")
    lines = [
        "\n### Peak memory, one configuration per fresh child (MiB)\n",
        "| configuration | peak RSS | added over built parts | peak x lambda_sfsl=0 | added x lambda_sfsl=0 |",
        "|---|---|---|---|---|",
    ]
    for k, v in m.items():
        rel = (
            f"{v['peak_mib'] / m0['peak_mib']:.2f} | {v['added_mib'] / m0['added_mib']:.2f}"
            if m0 and k.startswith("step/")
            else "- | -"
        )
        lines.append(f"| {k} | {v['peak_mib']:.0f} | {v['added_mib']:.0f} | {rel} |")
    return lines


def _step_targets(r: dict) -> list[str]:
    """The <= 1.5x step target: as training runs, and on a step where the term runs."""
    s, run = r["step"], r["run"]
    base = s["lambda_sfsl=0"]["median"]
    fast_c = s[FAST_CACHED_KEY]["median"] / s[BASE_CACHED_KEY]["median"]
    fast = s[FAST_KEY]["median"] / base
    run_ratio = run[FAST_CACHED_KEY]["mean"] / run[BASE_CACHED_KEY]["mean"]
    targets = [
        f"- fast SFSL step <= 1.5x a lambda_sfsl=0 step: as training runs (latents cached, t drawn: the term "
        f"ran on {run['term_ran']} of {run['steps']} steps), {run_ratio:.2f}x {_pass(run_ratio <= 1.5)}; "
        f"on a step where the term runs, {fast_c:.2f}x with latents cached {_pass(fast_c <= 1.5)}, "
        f"{fast:.2f}x without {_pass(fast <= 1.5)}"
    ]
    if min(fast, fast_c) > 1.5:
        ex = r["term"]["exact (1 sample; loss=fast)"]["median"]
        targets.append(
            f"  - on such a step the exact term alone (decoder forward and backward, f) takes {ex * 1e3:.0f} ms "
            f"= {ex / base:.2f} of a lambda_sfsl=0 step, so the step costs about {1 + ex / base:.2f}x whatever "
            "the framework does; every setting that decodes less failed fidelity (below)"
        )
    return targets


def _memory_targets(m: dict) -> list[str]:
    """The <= 1.3x peak-memory target of the fast SFSL step (none without both measurements)."""
    fm, m0 = m.get(f"step/{FAST_KEY}"), m.get("step/lambda_sfsl=0")
    if not (fm and m0):
        return []
    pk, ad = fm["peak_mib"] / m0["peak_mib"], fm["added_mib"] / m0["added_mib"]
    return [
        f"- fast SFSL peak memory <= 1.3x: peak RSS {pk:.2f}x {_pass(pk <= 1.3)}; memory added by "
        f"the step {ad:.2f}x {_pass(ad <= 1.3)}"
    ]


def _overhead_and_eval_targets(r: dict, speedups: dict[str, tuple[float, float]]) -> list[str]:
    """The <= 5 % framework-overhead target and the >= 3x evaluation target per classifier."""
    lit, plain, own, mod = _overhead(r)
    targets = [
        f"- framework overhead <= 5 %: Lightning's own time per step {100 * own / plain:+.1f} % "
        f"{_pass(own / plain <= 0.05)}; A/B medians (noisy: p10-p90 in (b)) {100 * (lit / plain - 1):+.1f} % "
        f"{_pass(lit / plain <= 1.05)}; module step {100 * mod:+.1f} % {_pass(mod <= 0.05)}"
    ]
    for clf, (sp, frac) in speedups.items():
        bound = f"; no loop can beat it by more than {1 / frac:.1f}x here" if sp < 3 else ""
        targets.append(
            f"- evaluation >= 3x the naive loop, {clf}: {sp:.2f}x {_pass(sp >= 3)} (the naive loop "
            f"already reaches {100 * frac:.0f} % of the matrix-multiply rate{bound})"
        )
    return targets


def _size_section(name: str, r: dict, repeats: int) -> tuple[list[str], list[str]]:
    """One size's tables, and its lines under the performance targets (the proportional size only)."""
    lines = [f"\n## Size: {name}\n", *_costs_table(r["costs"]), *_step_table(r["step"], repeats)]
    lines += _run_table(r["run"]) + _term_table(r["term"]) + _framework_table(r)
    eval_lines, speedups = _eval_table(r["eval"])
    lines += [*eval_lines, _gen_line(r["gen"]), *_fidelity_table(r["fidelity"]), *_memory_table(r["memory"])]
    if name != "proportional":
        return lines, []
    targets = _step_targets(r) + _memory_targets(r["memory"]) + _overhead_and_eval_targets(r, speedups)
    return lines, targets


def write_report(results: dict, path: Path, command: str) -> None:
    mc = results["machine"]
    head = [
        "# spurgen benchmarks",
        "",
        f"Command: `{command}` (`make bench`). Written {time.strftime('%Y-%m-%d %H:%M')}, {results['seconds']} s.",
        f"Machine: {mc['cpu']}, {mc['cores']} cores, torch {mc['torch']} with {mc['threads']} threads, "
        f"Python {mc['python']}, CUDA available: {mc['gpu']}. The CPU was shared with other work, hence "
        "interleaved timing and medians.",
        "",
        "**No GPU was available to this task**: no GPU numbers (SD 1.5 at 512² in bf16, FLOP utilisation) were "
        "measured. `make bench-gpu` (experiments/bench_gpu.py) measures them on a CUDA machine and writes "
        "BENCHMARKS_GPU.md. All models have random weights; only costs are meaningful.",
        "",
        "Times: configurations of a section run round-robin after a warm-up; median [p10, p90] over "
        f"{results['repeats']} repeats. Memory: each configuration runs (2 steps) in a fresh child process forked "
        "from a server that only imported the libraries; peak = ru_maxrss of the child, added = peak minus the "
        "child's resident size once its parts were built.",
    ]
    body, targets = [], []
    for name, r in results["sizes"].items():
        lines, tg = _size_section(name, r, results["repeats"])
        body += lines
        targets += tg
    tgt = ["", "## Targets of issue 6, item 3 (proportional size)", ""] + (
        targets or ["- (not run: tiny only)"]
    )
    path.write_text("\n".join(head + tgt + body) + "\n" + STATIC)
