"""Recreate the mini world's weights with one command (docs/mini_world.md):

    python -m experiments.mini_world.pretrain --part all --out spurgen/assets/mini

--part vae writes <out>/vae/ (a diffusers AutoencoderKL folder; float32 safetensors for the default, shipped
PCA recipe, fp16 for `--recipe learned`); --part generator trains the UNet and text encoder on that
autoencoder (experiments.mini_world.pretrain_generator, its default settings) and writes <out>/unet,
text_encoder, tokenizer, scheduler and model_index.json, so <out> is a StableDiffusionPipeline folder; --part
all does both in turn. Each part's record is merged into <out>/manifest.json: sha256 of each file, the command,
seed, steps, wall time, first and final losses, and for the autoencoder PSNR and the gate.
Training uses one CPU thread so that the manifest's first losses replay exactly.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from experiments.mini_world import ASSET_DIR, corpus, gate
from experiments.mini_world.vae import (
    PCA_RECIPE,
    VaeTrainConfig,
    equalise_latent_channels,
    set_scaling_factor,
    train_vae,
)
from spurgen.errors import SpurgenError
from spurgen.files import output_folder, sha256_file
from spurgen.torch_threads import torch_threads

MANIFEST = "manifest.json"
PROG = "python -m experiments.mini_world.pretrain"


BOOL = {"action": argparse.BooleanOptionalAction}
# (VaeTrainConfig field, help, argparse keywords): one flag each, its default the config's
VAE_FLAGS = (
    ("steps", "the autoencoder's steps", {"type": int}),
    ("seed", None, {"type": int}),
    ("batch", None, {"type": int}),
    ("lr", "the autoencoder's peak learning rate", {"type": float}),
    ("latent_channels", None, {"type": int}),
    ("norm_groups", None, {"type": int}),
    ("photo_splits", "comma-separated corpus splits the autoencoder trains on (train, autoencoder)", {}),
    ("augment", "flip and turn each training crop", BOOL),
    ("perceptual_weight", "weight of the EfficientNet-Lite1 feature distance (0: L1 + L2 + KL only)",
     {"type": float}),
    ("adversarial_weight", "weight of an adaptive PatchGAN term (0: none)", {"type": float}),
    ("adversarial_start", "its first step", {"type": int}),
    ("train_crop", "train on windows of this side of each 64-px crop (a multiple of 4, 16 to 64)", {"type": int}),
    ("encoder", "learned jointly, or principal components of 4x4 patches, frozen (needs --norm-groups 1)",
     {"choices": ["learned", "pca"]}),
    ("pca_logvar", "log-variance of the PCA encoder's posterior (the latent noise the decoder trains with)",
     {"type": float}),
    ("equalise_channels", "after training, rescale each latent channel to unit std (reconstructions unchanged)",
     BOOL),
)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    recipe = argparse.ArgumentParser(prog=PROG, add_help=False)
    recipe.add_argument(
        "--recipe",
        choices=["pca", "learned"],
        default="pca",
        help="start from the shipped, gate-passing PCA recipe (vae.PCA_RECIPE) or VaeTrainConfig's learned "
        "encoder (4 latent channels; it fails the gate: docs/mini_world.md); flags override it",
    )
    defaults = PCA_RECIPE if recipe.parse_known_args(argv)[0].recipe == "pca" else {}
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0], parents=[recipe])
    parser.add_argument(
        "--part", choices=["vae", "generator", "all"], required=True, help="which mini part to train"
    )
    parser.add_argument("--out", type=Path, default=ASSET_DIR, help="folder of the part folders and manifest")
    for field, help_text, kw in VAE_FLAGS:
        flag = "--" + field.replace("_", "-")
        default = defaults.get(field, getattr(VaeTrainConfig, field))
        default = ",".join(default) if field == "photo_splits" else default
        parser.add_argument(flag, default=default, help=help_text, **kw)
    parser.add_argument(
        "--generator-steps",
        type=int,
        default=None,
        help="the UNet and text encoder's steps (default: its own)",
    )
    parser.add_argument(
        "--figure", type=Path, default=None, help="also save originals beside reconstructions"
    )
    parser.add_argument("--no-gate", action="store_true", help="skip the classifier gate (quick runs)")
    return _checked(parser, parser.parse_args(argv))


def _checked(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The parsed arguments, or one line naming the bad value and exit 2."""
    if not args.lr > 0:
        parser.error(f"--lr must be positive, not {args.lr}")
    if not (args.perceptual_weight >= 0 and args.adversarial_weight >= 0 and args.adversarial_start >= 0):
        parser.error("--perceptual-weight, --adversarial-weight and --adversarial-start must be at least 0")
    if min(args.steps, args.batch, args.latent_channels, args.norm_groups) < 1:
        parser.error("--steps, --batch, --latent-channels and --norm-groups must be at least 1")
    args.photo_splits = tuple(s.strip() for s in args.photo_splits.split(",") if s.strip())
    if not args.photo_splits or not set(args.photo_splits) <= {"train", "autoencoder"}:
        parser.error(f"--photo-splits takes train and/or autoencoder, not {','.join(args.photo_splits)!r}")
    if any(c % args.norm_groups for c in VaeTrainConfig.channels):
        parser.error(
            f"--norm-groups {args.norm_groups} must divide every block width {VaeTrainConfig.channels}"
        )
    if not (16 <= args.train_crop <= corpus.SIZE and args.train_crop % 4 == 0):
        parser.error(f"--train-crop must be a multiple of 4 from 16 to {corpus.SIZE}, not {args.train_crop}")
    if not -30 <= args.pca_logvar <= 20:  # the range diffusers clamps a posterior's log-variance to
        parser.error(f"--pca-logvar must be within [-30, 20], not {args.pca_logvar}")
    if args.encoder == "pca" and args.norm_groups != 1:
        parser.error("--encoder pca needs --norm-groups 1 (experiments.mini_world.pca_encoder)")
    return args


def corpus_record() -> dict:
    """The corpus as the manifest records it: split, captions, crop size and scales."""
    return {
        "split": corpus.split_table(),
        "captions": {p.name: corpus.caption(p.subject) for p in corpus.captioned_photos()},
        "crop_size": corpus.SIZE,
        "crop_scales": list(corpus.SCALES),
        "reference_photo": corpus.REFERENCE_PHOTO,
    }


def save_vae(vae, folder: Path, half: bool = True) -> dict[str, str]:
    """save_pretrained, then (`half`) the weights file rewritten in fp16 (half the size; diffusers loads it
    with torch_dtype=float32); returns {relative file: sha256}. The PCA encoder needs float32 (not `half`)."""
    from safetensors.torch import load_file, save_file

    vae.save_pretrained(folder, safe_serialization=True)
    if half:
        weights = folder / "diffusion_pytorch_model.safetensors"
        state = {k: v.half().contiguous() for k, v in load_file(weights).items()}
        save_file(state, weights, metadata={"format": "pt"})
    return {f"{folder.name}/{f.name}": sha256_file(f) for f in sorted(folder.iterdir()) if f.is_file()}


def write_manifest(out: Path, part: str, record: dict) -> Path:
    """Merge one part's record into <out>/manifest.json (other parts' records stay)."""
    path = out / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest["about"] = "spurgen's mini world (docs/mini_world.md); recreate with the command of each part"
    manifest["corpus"] = corpus_record()
    manifest.setdefault("parts", {})[part] = record
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def run_vae(args: argparse.Namespace, command: str) -> dict:
    """Train, save, reload the written files (float32 for the PCA encoder, else fp16) and measure them; the
    manifest record of the part."""
    from diffusers import AutoencoderKL

    cfg = VaeTrainConfig(**{field: getattr(args, field) for field, _, _ in VAE_FLAGS})
    vae, res = train_vae(cfg)
    channel_stds = equalise_latent_channels(vae, cfg.seed) if cfg.equalise_channels else None
    factor = set_scaling_factor(vae, cfg.seed)
    half = cfg.encoder != "pca"  # the PCA encoder's constants need float32
    files = save_vae(vae, args.out / "vae", half=half)
    shipped = AutoencoderKL.from_pretrained(args.out / "vae", torch_dtype=torch.float32).eval()
    record = {
        "command": command,
        "config": asdict(cfg),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "first_losses": res.first_losses,
        "final_losses": {"loss": res.final_loss, "l1": res.final_l1, "kl": res.final_kl},
        "loss_curve": res.curve,
        "train_wall_s": round(res.wall_s, 1),
        "scaling_factor": round(factor, 5),
        "equalised_channel_stds": channel_stds,
        "storage": "float16" if half else "float32",
        "parameters": sum(p.numel() for p in shipped.parameters()),
        "files": files,
    }
    if not args.no_gate:
        x, names = gate.heldout_views()
        models = gate.available_lites()
        record["heldout"] = gate.label_agreement(shipped, x, names, models)
        record["heldout"]["baselines"] = gate.degradation_baselines(x, names, models)
        record["psnr_db_heldout"] = record["heldout"]["psnr_db"]
    if args.figure:
        gate.save_figure(shipped, args.figure)
    return record


def main(argv: list[str] | None = None) -> int:
    """Entry point; user mistakes print one line and exit 2. Trains on one thread (the manifest's losses
    replay exactly only with the thread count they were recorded with); the caller's count is restored."""
    with torch_threads(1):
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    command = f"{PROG} " + " ".join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    if args.part in ("vae", "all"):
        rc = _vae_part(args, command, start)
        if rc or args.part == "vae":
            return rc
    from experiments.mini_world import pretrain_generator

    steps = [] if args.generator_steps is None else ["--steps", str(args.generator_steps)]
    return pretrain_generator.main(
        ["--vae", str(args.out / "vae"), "--out", str(args.out), "--threads", "1", *steps]
    )


def _vae_part(args: argparse.Namespace, command: str, start: float) -> int:
    try:
        output_folder(args.out)
        record = run_vae(args, command)
    except SpurgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    record["wall_s"] = round(time.perf_counter() - start, 1)
    path = write_manifest(args.out, "vae", record)
    print(json.dumps({k: record[k] for k in ("wall_s", "final_losses", "scaling_factor")}), f"-> {path}")
    if "heldout" in record:
        h = record["heldout"]
        print("held-out:", json.dumps({k: v for k, v in h.items() if k != "per_photo"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
