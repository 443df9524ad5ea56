"""spurgen's λ = 0 training step against diffusers' own examples/dreambooth/train_dreambooth.py (issue 26, item 4).

    python -m experiments.peer_ratio --dreambooth-script /tmp/train_dreambooth.py --out docs/benchmarks
    make bench-peer DREAMBOOTH_SCRIPT=/tmp/train_dreambooth.py

The script is not shipped with spurgen: take it from a diffusers checkout at the release you have installed,
e.g. `git show v0.42.1:examples/dreambooth/train_dreambooth.py > /tmp/train_dreambooth.py`, or
`curl -L -o /tmp/train_dreambooth.py https://raw.githubusercontent.com/huggingface/diffusers/v0.42.1/examples/dreambooth/train_dreambooth.py`.
It runs offline once it is on disk (and needs accelerate, installed with spurgen's dependencies).

Both sides train the same thing: the tiny random SD parts (spurgen/models/tiny.py) saved once as a diffusers
pipeline folder that both load (spurgen through model=local), the same reference images (the first packaged demo
references), the same class images (drawn once by that pipeline), prompts, resolution, batch (instance + as many
class images), learning rate for the UNet and the text encoder (both trained), AdamW settings, gradient clipping,
prior weight, seed, float32 on the CPU, no checkpoints or samples during training, and the same torch thread count.
Each side keeps its own defaults elsewhere: spurgen encodes its training images with the frozen VAE once
(train.cache_latents=true, its default), the script encodes them every step; spurgen logs to CSV every 5 steps,
the script to TensorBoard every step.

Per-step cost: each side runs as its own process under experiments/step_stamps.py, which stamps the wall clock and
the process's CPU time each time an optimiser step returns (a global torch hook, the same for both). One step's
cost is the time between consecutive stamps: everything one iteration of the loop does (data, text encoder, UNet,
backward, optimiser, logging, the framework's own work), and nothing paid once per process (imports, loading, the
final save). Each run takes N steps; the first --warmup intervals are dropped and the median of the rest is the
run's per-step cost, in wall time (what a user waits for) and in CPU time (all the process's threads; other work
on a shared machine inflates it less). The runs alternate (spurgen, script, then script, spurgen, ...), so that a
load change on a shared machine falls on both sides; the ratio of each repeat is spurgen / script, and the
reported ratio is the median over repeats. The issue's limit is 1.05.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 1.05


@dataclass(frozen=True)
class Settings:
    """The training settings both sides get (the tiny experiment's, one learning rate: the script has one)."""

    resolution: int = 32  # the tiny model's native size: 16² latents, VAE factor 2
    batch_size: int = 4  # instance images per step; as many class images are added (prior preservation)
    learning_rate: float = (
        1.0e-4  # experiment=tiny's lr_unet; the script's one rate for UNet and text encoder
    )
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1.0e-2
    adam_eps: float = 1.0e-8
    max_grad_norm: float = 1.0
    prior_loss_weight: float = 1.0
    num_references: int = 4
    num_class_images: int = 4
    seed: int = 0
    instance_prompt: str = "a photo of sks hummingbird"
    class_prompt: str = "a photo of a hummingbird"


def save_tiny_pipeline(folder: Path) -> Path:
    """The tiny random SD parts as a diffusers StableDiffusionPipeline folder (unet/, vae/, text_encoder/,
    tokenizer/, scheduler/): what spurgen's model=local and the script's --pretrained_model_name_or_path load."""
    from spurgen.models.tiny import build_tiny_sd
    from spurgen.pipeline import make_pipeline

    parts = build_tiny_sd()
    pipe = make_pipeline(parts.unet, parts.text_encoder, parts.tokenizer, parts.vae, parts.sample_scheduler)
    pipe.save_pretrained(folder)
    return Path(folder)


def write_images(model_dir: Path, work: Path, s: Settings) -> tuple[Path, Path]:
    """references/ (the first packaged demo references) and class/ (drawn once by the saved pipeline, 4 DDIM
    steps as experiment=tiny draws them): image files only, as the script reads every file in both folders."""
    from diffusers import StableDiffusionPipeline

    from spurgen.config import asset_path
    from spurgen.pipeline import SampleSettings, sample

    refs, cls = work / "references", work / "class"
    refs.mkdir(parents=True, exist_ok=True)
    cls.mkdir(parents=True, exist_ok=True)
    demo = sorted(Path(asset_path("demo_references")).glob("*.png"))[: s.num_references]
    if len(demo) < s.num_references:
        raise SystemExit(f"only {len(demo)} packaged demo references; asked for {s.num_references}")
    for f in demo:
        shutil.copy(f, refs / f.name)
    pipe = StableDiffusionPipeline.from_pretrained(
        model_dir, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    n = s.num_class_images
    for i, im in enumerate(
        sample(pipe, [s.class_prompt] * n, list(range(n)), SampleSettings(4, 3.0, s.resolution))
    ):
        im.save(cls / f"class_{i:05d}.png")
    return refs, cls


def spurgen_command(model_dir: Path, refs: Path, cls: Path, out: Path, steps: int, s: Settings) -> list[str]:
    """`python -m spurgen.run` training only, λ = 0, on the saved folder (model=local)."""
    return [
        sys.executable,
        *("-m", "spurgen.run"),
        "experiment=tiny",
        "model=local",
        f"model.path={model_dir}",
        "feature_extractor=tiny",  # never built at λ = 0 (model=local would name the robust ResNet-50)
        "eval=empty",
        "lambda_sfsl=0",
        "stages=[train]",
        "trainer=cpu",
        "trainer.precision=32-true",
        f"trainer.max_steps={steps}",
        f"trainer.gradient_clip_val={s.max_grad_norm}",
        "data.demo_references=false",
        f"data.reference_dir={refs}",
        f"data.num_references={s.num_references}",
        f"data.class_images_dir={cls}",
        f"data.num_class_images={s.num_class_images}",
        f"data.batch_size={s.batch_size}",
        f"data.resolution={s.resolution}",
        f"data.instance_prompt='{s.instance_prompt}'",
        f"data.class_prompt='{s.class_prompt}'",
        "data.center_crop=true",
        "data.num_workers=0",
        f"loss.lambda_prior={s.prior_loss_weight}",
        f"train.lr_unet={s.learning_rate}",
        f"train.lr_text_encoder={s.learning_rate}",
        "train.train_text_encoder=true",
        f"train.weight_decay={s.weight_decay}",
        f"train.adam_beta1={s.adam_beta1}",
        f"train.adam_beta2={s.adam_beta2}",
        f"train.adam_eps={s.adam_eps}",
        "train.checkpoint_every_n_steps=0",
        "train.sample_every_n_steps=0",
        f"seed={s.seed}",
        f"hydra.run.dir={out}",
    ]


def dreambooth_command(  # noqa: PLR0913 - one argument per folder the script reads or writes
    script: Path, model_dir: Path, refs: Path, cls: Path, out: Path, steps: int, s: Settings
) -> list[str]:
    """diffusers' train_dreambooth.py with prior preservation and the text encoder trained, on the CPU."""
    return [
        sys.executable,
        str(script),
        f"--pretrained_model_name_or_path={model_dir}",
        f"--instance_data_dir={refs}",
        f"--class_data_dir={cls}",
        "--with_prior_preservation",
        f"--prior_loss_weight={s.prior_loss_weight}",
        f"--instance_prompt={s.instance_prompt}",
        f"--class_prompt={s.class_prompt}",
        f"--num_class_images={s.num_class_images}",
        f"--output_dir={out}",
        f"--resolution={s.resolution}",
        "--center_crop",
        f"--train_batch_size={s.batch_size}",
        "--train_text_encoder",
        f"--learning_rate={s.learning_rate}",
        "--lr_scheduler=constant",
        "--lr_warmup_steps=0",
        f"--adam_beta1={s.adam_beta1}",
        f"--adam_beta2={s.adam_beta2}",
        f"--adam_weight_decay={s.weight_decay}",
        f"--adam_epsilon={s.adam_eps}",
        f"--max_grad_norm={s.max_grad_norm}",
        f"--max_train_steps={steps}",
        "--mixed_precision=no",
        f"--seed={s.seed}",
        "--checkpointing_steps=1000000",  # no checkpoint inside the timed steps
        "--dataloader_num_workers=0",
    ]


def child_env(threads: int) -> dict[str, str]:
    """The same environment for both sides: CPU only, `threads` torch threads, offline."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        CUDA_VISIBLE_DEVICES="",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    return env


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one process, start to exit: CPU = its user + system time and its children's
    (getrusage of the reaped child), which a shared machine's other work inflates less than the wall time. Stops the
    benchmark with the tail of the process's output if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        raise SystemExit(f"[peer_ratio] failed ({done.returncode}): {' '.join(cmd[:3])} ...\n{tail}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_blob_sha1(path: Path) -> str:
    """The script's git blob id (`git hash-object`): find its commit with `git log --find-object=<id>`."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object id


def stamped(cmd: list[str], stamps: Path) -> list[str]:
    """cmd (python + program + arguments) run under experiments/step_stamps.py, writing `stamps`."""
    return [cmd[0], "-m", "experiments.step_stamps", str(stamps), *cmd[1:]]


def per_step(stamps: dict[str, list[float]], warmup: int) -> dict[str, float]:
    """Median seconds between consecutive optimiser steps after the first `warmup` intervals, wall and CPU."""
    out = {}
    for clock, t in stamps.items():
        gaps = [b - a for a, b in zip(t, t[1:], strict=False)][warmup:]
        if not gaps:
            raise SystemExit(f"[peer_ratio] {len(t)} optimiser steps stamped: too few for --warmup {warmup}")
        out[clock] = statistics.median(gaps)
    return out


def measure(script: Path, work: Path, args: argparse.Namespace, s: Settings) -> dict:
    """Per-step seconds of each side, each repeat one run per side, alternating; see the module doc."""
    model_dir = save_tiny_pipeline(work / "tiny_pipeline")
    refs, cls = write_images(model_dir, work, s)
    env = child_env(args.threads)

    def command(side: str, out: Path) -> list[str]:
        if side == "spurgen":
            return [*spurgen_command(model_dir, refs, cls, out, args.steps, s), *args.spurgen_override]
        return dreambooth_command(script, model_dir, refs, cls, out, args.steps, s)

    sides = ("spurgen", "train_dreambooth.py")
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(args.repeats):
        for side in sides if r % 2 == 0 else sides[::-1]:
            out, stamps = (
                work / f"out_{side.split('.')[0]}_{r}",
                work / f"stamps_{side.split('.')[0]}_{r}.json",
            )
            wall, cpu = timed(stamped(command(side, out), stamps), env, work)
            shutil.rmtree(out, ignore_errors=True)
            step = per_step(json.loads(stamps.read_text()), args.warmup)
            runs[side].append({"step_wall_s": step["wall"], "step_cpu_s": step["cpu"], "process_wall_s": wall,
                               "process_cpu_s": cpu})  # fmt: skip
            print(f"[peer_ratio] repeat {r + 1}/{args.repeats}: {side}: {1000 * step['wall']:.0f} ms/step wall, "
                  f"{1000 * step['cpu']:.0f} ms/step CPU; the process {wall:.1f} s wall", flush=True)  # fmt: skip
    result = {clock: summary([x[f"step_{clock}_s"] for x in runs[sides[0]]],
                             [x[f"step_{clock}_s"] for x in runs[sides[1]]]) for clock in ("wall", "cpu")}  # fmt: skip
    result["processes_s"] = {
        side: [{k: round(v, 2) for k, v in x.items() if k.startswith("process")} for x in v]
        for side, v in runs.items()
    }
    return result


def summary(sp: list[float], db: list[float]) -> dict:
    """Per-step ms of each side per repeat, their medians, each repeat's ratio (spurgen / script), the median."""
    ratios = [a / b for a, b in zip(sp, db, strict=True)]
    return {
        "per_step_ms": {
            "spurgen": [round(1000 * x, 1) for x in sp],
            "train_dreambooth.py": [round(1000 * x, 1) for x in db],
        },
        "median_per_step_ms": {
            "spurgen": round(1000 * statistics.median(sp), 1),
            "train_dreambooth.py": round(1000 * statistics.median(db), 1),
        },  # fmt: skip
        "ratios": [round(x, 3) for x in ratios],
        "ratio": round(statistics.median(ratios), 3),
        "ratio_of_medians": round(statistics.median(sp) / statistics.median(db), 3),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "diffusers", "transformers", "accelerate", "lightning")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dreambooth-script", type=Path, required=True,
                    help="diffusers' examples/dreambooth/train_dreambooth.py (see the module doc for how to get it)")  # fmt: skip
    ap.add_argument("--steps", type=int, default=50, help="steps of each run (default 50)")
    ap.add_argument("--warmup", type=int, default=5, help="step intervals dropped at the start of each run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--spurgen-override", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra spurgen override (repeatable), e.g. train.cache_latents=false")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads of both sides (default 2)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = ap.parse_args(argv)
    script = args.dreambooth_script.expanduser().resolve()
    if not script.is_file():
        raise SystemExit(
            f"--dreambooth-script {script}: no such file (see `python -m experiments.peer_ratio -h`)"
        )
    s = Settings()
    work = args.work or Path(tempfile.mkdtemp(prefix="spurgen-peer-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.time()
    result = measure(script, work, args, s)
    result.update(
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        threads=args.threads,
        spurgen_overrides=args.spurgen_override,
        limit=LIMIT,
        holds=result["wall"]["ratio"] <= LIMIT,
        machine={
            "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        minutes=round((time.time() - started) / 60, 1),
        versions=versions(),
        script={"path": str(script), "git_blob": git_blob_sha1(script)},
        settings=asdict(s),
    )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peer_ratio.json").write_text(json.dumps(result, indent=2) + "\n")
    md = report(result, " ".join(sys.argv[1:] if argv is None else argv))
    (args.out / "PEER_RATIO.md").write_text(md)
    print(md, flush=True)
    print(f"[peer_ratio] wrote {args.out / 'PEER_RATIO.md'}")
    return 0


def report(result: dict, args: str) -> str:
    mc = result["machine"]
    lines = [
        "# spurgen's λ = 0 step against diffusers' train_dreambooth.py (tiny pipeline, CPU)",
        "",
        f"`python -m experiments.peer_ratio {args}`; {mc['cpu']}, {mc['logical_cpus']} logical CPUs, "
        f"{result['threads']} threads for each side; load average {mc['load_average_1min_before_after'][0]} "
        f"before, {mc['load_average_1min_before_after'][1]} after; {result['minutes']} min.",
        f"Per-step cost = the median time between consecutive optimiser steps (experiments/step_stamps.py) over "
        f"{result['steps']} steps, the first {result['warmup']} intervals dropped; one process per side per repeat, "
        "alternating; ratio = spurgen / train_dreambooth.py per repeat. Wall: what a user waits for; CPU: the "
        "process's CPU time over its threads, which other work on a shared machine inflates less.",
        f"Script git blob {result['script']['git_blob']}; "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + ".",
        "",
        "| repeat | spurgen wall ms/step | script wall ms/step | wall ratio "
        "| spurgen CPU ms/step | script CPU ms/step | CPU ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    w, c = result["wall"], result["cpu"]
    side = ("spurgen", "train_dreambooth.py")
    for i in range(result["repeats"]):
        lines.append(
            f"| {i + 1} | {w['per_step_ms'][side[0]][i]:.0f} | {w['per_step_ms'][side[1]][i]:.0f} "
            f"| {w['ratios'][i]:.3f} | {c['per_step_ms'][side[0]][i]:.0f} | {c['per_step_ms'][side[1]][i]:.0f} "
            f"| {c['ratios'][i]:.3f} |"
        )
    wm, cm = w["median_per_step_ms"], c["median_per_step_ms"]
    lines.append(
        f"| **median** | {wm[side[0]]:.0f} | {wm[side[1]]:.0f} | **{w['ratio']:.3f}** "
        f"| {cm[side[0]]:.0f} | {cm[side[1]]:.0f} | **{c['ratio']:.3f}** |"
    )
    verdict = "holds" if result["holds"] else "DOES NOT HOLD"
    lines += [
        "",
        f"Limit {result['limit']} on the median wall ratio: {verdict} (ratio of the medians: wall "
        f"{w['ratio_of_medians']:.3f}, CPU {c['ratio_of_medians']:.3f}).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
