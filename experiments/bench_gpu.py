"""SD 1.5's architecture (random weights) on a GPU: the real-size numbers, in one script.

    python experiments/bench_gpu.py --out /tmp/gpu                          # SD 1.5 at 512², bf16, CUDA
    python experiments/bench_gpu.py --size tiny --device cpu --fp32 --out /tmp/g   # the smoke test

Measures, with CUDA synchronisation around every timed call: the training step (compute_losses + backward +
clip + fused AdamW) with lambda_sfsl = 0, with the exact SFSL (loss=fast, t fixed so that the term runs) and
with decoder checkpointing (loss=low_memory); the peak memory of each (torch.cuda.max_memory_allocated, reset
between configurations); the FLOPs of each step (torch's FLOP counter) and the fraction of the GPU's peak
bf16 rate they reach, beside the rate a large bf16 matrix multiply reaches on the same GPU; and generation
images/s (DDIM with classifier-free guidance, bf16 weights). Writes bench_gpu.json and BENCHMARKS_GPU.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `experiments` importable when run as a file
from experiments.bench_setup import (  # noqa: E402
    FAST,
    LOW_MEMORY,
    Setting,
    make_batch,
    make_module,
    spurgen_step,
)
from experiments.proportional import build_proportional_extractor, build_proportional_sd  # noqa: E402
from spurgen.models.extractors import build_tiny_extractor  # noqa: E402
from spurgen.models.parts import SDParts  # noqa: E402
from spurgen.models.tiny import build_tiny_sd  # noqa: E402
from spurgen.optim import make_optimizer  # noqa: E402

# Dense bf16 tensor-core peak (TFLOP/s, no sparsity), from the vendors' data sheets; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
STEPS = {
    "lambda_sfsl=0": Setting(lambda_sfsl=0.0),
    "SFSL exact (loss=fast)": FAST,
    "SFSL loss=low_memory": LOW_MEMORY,
}


def build(size: str) -> tuple[SDParts, torch.nn.Module, int]:
    if size == "sd15":  # SD 1.5's UNet, VAE and CLIP-L text encoder shapes; a full-width ResNet-50 at 224
        parts = build_proportional_sd(1.0, 1.0, resolution=512, norm_num_groups=32, max_length=77)
        return parts, build_proportional_extractor(1.0, 224), 512
    return build_tiny_sd(), build_tiny_extractor(), 32


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> dict:
    fn()  # warm-up (kernels chosen, optimiser state allocated)
    sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "n": repeats}


def count_flops(fn: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    r = timed(lambda: a @ b, 5, device)
    return 2 * n**3 / r["median_s"] / 1e12


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


@dataclass
class Rig:
    """What every measurement shares: the built parts on the device and how steps are run."""

    parts: SDParts
    extractor: torch.nn.Module
    resolution: int
    device: torch.device
    dtype: torch.dtype
    repeats: int
    peak: float | None
    batch: dict = field(default_factory=dict)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("sd15", "tiny"), default="sd15")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast (the CPU smoke test)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--gen-images", type=int, default=4)
    ap.add_argument("--gen-steps", type=int, default=25)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if unknown")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks"))
    return ap.parse_args(argv)


def make_rig(args: argparse.Namespace, device: torch.device) -> Rig:
    """Build the parts of --size and one training batch on the device."""
    parts, extractor, resolution = build(args.size)
    rig = Rig(
        parts,
        extractor,
        resolution,
        device,
        torch.float32 if args.fp32 else torch.bfloat16,
        args.repeats,
        peak_tflops(device, args.peak_tflops),
    )
    batch = make_batch(parts, resolution).items()
    rig.batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch}
    return rig


def header(args: argparse.Namespace, rig: Rig) -> dict:
    """The run's description, in the order bench_gpu.json lists it; "steps" is filled by measure_steps."""
    return {
        "size": args.size,
        "resolution": rig.resolution,
        "device": torch.cuda.get_device_name(rig.device) if rig.device.type == "cuda" else "cpu",
        "dtype": str(rig.dtype),
        "torch": torch.__version__,
        "params_unet_M": sum(p.numel() for p in rig.parts.unet.parameters()) / 1e6,
        "steps": {},
    }


def measure_step(rig: Rig, setting: Setting) -> dict:
    """Time, peak memory and FLOPs of one training step with a fresh module and optimiser."""
    parts, device = rig.parts, rig.device
    module = make_module(parts, rig.extractor, setting, rig.resolution).to(device)
    params = [p for m in (parts.unet, parts.text_encoder) for p in m.parameters() if p.requires_grad]
    opt = make_optimizer([{"params": params}], "adamw", 1e-2, (0.9, 0.999), 1e-8, lr=1e-6)
    step = spurgen_step(module, opt, rig.batch, bf16=False)

    def run() -> None:
        with torch.autocast(device.type, dtype=rig.dtype, enabled=rig.dtype != torch.float32):
            step()

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    r = timed(run, rig.repeats, device)
    if device.type == "cuda":
        r["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    r["tflop_per_step"] = count_flops(run) / 1e12
    r["achieved_tflops"] = r["tflop_per_step"] / r["median_s"]
    if rig.peak:
        r["fraction_of_peak"] = r["achieved_tflops"] / rig.peak
    return r


def measure_steps(rig: Rig) -> dict[str, dict]:
    """Every setting of STEPS, each also relative to the lambda_sfsl = 0 step."""
    steps = {}
    for name, setting in STEPS.items():
        steps[name] = measure_step(rig, setting)
        print(f"[bench_gpu] {name}: {steps[name]['median_s'] * 1e3:.1f} ms", flush=True)
    base = steps["lambda_sfsl=0"]["median_s"]
    for r in steps.values():
        r["x_lambda0"] = r["median_s"] / base
    return steps


def measure_generation(rig: Rig, n: int, ddim_steps: int) -> dict:
    """Images/s of DDIM sampling with classifier-free guidance, weights in the rig's dtype."""
    from spurgen.pipeline import SampleSettings, make_pipeline, sample

    parts = rig.parts
    parts.unet.eval()
    parts.text_encoder.eval()
    pipe = make_pipeline(parts.unet, parts.text_encoder, parts.tokenizer, parts.vae, parts.sample_scheduler)
    pipe.to(rig.device, rig.dtype)
    settings = SampleSettings(ddim_steps, 3.0, rig.resolution)
    g = timed(
        lambda: sample(pipe, ["a photo of a sks flower"] * n, list(range(n)), settings),
        max(1, rig.repeats // 5),
        rig.device,
    )
    return {**g, "images": n, "ddim_steps": ddim_steps, "images_per_s": n / g["median_s"]}


def write_outputs(result: dict, out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gpu.json").write_text(json.dumps(result, indent=2))
    (out / "BENCHMARKS_GPU.md").write_text(report(result, command))
    print(f"[bench_gpu] done in {result['seconds']} s: {out / 'BENCHMARKS_GPU.md'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "bench_gpu: no CUDA device here (use --device cpu --size tiny for the smoke test)",
            file=sys.stderr,
        )
        return 2
    t_start = time.time()
    rig = make_rig(args, device)
    result = header(args, rig)
    if device.type == "cuda":
        result["matmul_tflops"] = matmul_tflops(device, rig.dtype, 8192)
    result["steps"].update(measure_steps(rig))
    result["generation"] = measure_generation(rig, args.gen_images, args.gen_steps)
    result["peak_bf16_tflops"] = rig.peak
    result["seconds"] = round(time.time() - t_start, 1)
    write_outputs(result, Path(args.out), " ".join(sys.argv if argv is None else argv))
    return 0


def report(r: dict, command: str) -> str:
    lines = [
        "# spurgen GPU benchmark",
        "",
        f"Command: `python experiments/bench_gpu.py {command}`. Device: {r['device']}, {r['dtype']}, torch "
        f"{r['torch']}. Size: {r['size']} at {r['resolution']}², random weights (UNet {r['params_unet_M']:.0f} M "
        "parameters). Step = compute_losses + backward + clip + fused AdamW, batch 1 instance + 1 prior, t fixed "
        "so that the SFSL runs.",
        "",
        "| setting | step ms (median) | x lambda_sfsl=0 | peak GiB | TFLOP/step | TFLOP/s | of peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, v in r["steps"].items():
        peak = f"{v['peak_gib']:.1f}" if "peak_gib" in v else "-"
        frac = f"{100 * v['fraction_of_peak']:.0f} %" if "fraction_of_peak" in v else "-"
        lines.append(
            f"| {k} | {v['median_s'] * 1e3:.1f} | {v['x_lambda0']:.2f} | {peak} | {v['tflop_per_step']:.2f} | "
            f"{v['achieved_tflops']:.1f} | {frac} |"
        )
    g = r["generation"]
    lines += [
        "",
        f"Generation: {g['images']} images x {g['ddim_steps']} DDIM steps, guidance 3: {g['images_per_s']:.2f} "
        "images/s.",
    ]
    if "matmul_tflops" in r:
        lines.append(
            f"A bf16 8192³ matrix multiply reaches {r['matmul_tflops']:.0f} TFLOP/s here"
            + (f" (data-sheet peak {r['peak_bf16_tflops']:.0f})." if r.get("peak_bf16_tflops") else ".")
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
