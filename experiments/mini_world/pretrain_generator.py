"""Pre-train the mini text-to-image model: plain text-to-image training, no DreamBooth.

    python -m experiments.mini_world.pretrain_generator --vae spurgen/assets/mini/vae --out spurgen/assets/mini --steps N

Each step draws (caption, 64-px crop) pairs from the corpus's train split, encodes the crops with the frozen
autoencoder (z = E(x)·s, METHOD.md's notation), noises them on SD 1.x's schedule and trains the UNet and the
text encoder jointly on epsilon prediction, L = mean ||eps - eps_hat(z_t, t, tau(c))||^2 (METHOD.md's L_inst
without an instance token); `--prediction-type v_prediction` trains on the velocity instead, `--snr-gamma`
weights each sample by Min-SNR-gamma and `--ema-decay` saves the weights' moving average (the shipped generator
uses none of them). The caption is replaced by the empty prompt with probability `uncond_prob`, so
classifier-free guidance works at generation time. Writes <out>/unet, <out>/text_encoder, <out>/tokenizer and
<out>/scheduler (diffusers/transformers folders, fp16 safetensors) and merges a "generator" record into
<out>/manifest.json: sha256 per file, command, seed, steps, wall time, first and final losses.
One CPU thread by default, so the manifest's first losses replay exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from experiments.mini_world import corpus
from experiments.mini_world.generator import build_mini_text_encoder, build_mini_unet
from experiments.mini_world.tokenizer import build_mini_tokenizer
from experiments.mini_world.training import TrainResult
from spurgen.errors import SpurgenError
from spurgen.files import output_folder, sha256_file
from spurgen.losses.diffusion import denoising_target
from spurgen.models.parts import SDParts
from spurgen.models.schedulers import ddim_sampler, sd_noise_scheduler
from spurgen.torch_threads import torch_threads

MANIFEST = "manifest.json"
PART = "generator"
PROG = "python -m experiments.mini_world.pretrain_generator"
STREAM = 2  # crop seeds are [seed, STREAM, step]: a stream of its own, apart from the autoencoder's crops


@dataclass(frozen=True)
class GenTrainConfig:
    """Everything that decides the trained weights; written into the manifest."""

    seed: int = 0
    steps: int = 4000
    batch: int = 16
    lr: float = 5e-4
    warmup: int = 50
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    uncond_prob: float = 0.1  # classifier-free guidance dropout of the caption
    # Min-SNR-gamma weighting (Hang et al. 2023): each sample's loss times min(SNR_t, gamma) / SNR_t, which
    # lowers the weight of the nearly clean steps; 0 gives the plain mean
    snr_gamma: float = 0.0
    # what the UNet predicts: "epsilon" (SD 1.x) or "v_prediction" (SD 2.x); saved in the scheduler config, so
    # pipelines and spurgen's fine-tuning read it from the folder
    prediction_type: str = "epsilon"
    # exponential moving average of the UNet and text-encoder weights, saved in place of the last weights;
    # 0 turns it off (the shipped generator), else the decay, warmed up as min(decay, (1 + step) / (10 + step))
    ema_decay: float = 0.0
    log_every: int = 25
    first_losses: int = 3  # how many exact step losses the manifest records (tests replay them)


@dataclass
class GenTrainResult(TrainResult):
    """TrainResult with the speed of a step."""

    step_s: float = float("nan")  # mean seconds per step after the first log window


def load_frozen_vae(folder: Path):
    """The autoencoder as a frozen float32 module (the UNet takes its latent channels)."""
    from diffusers import AutoencoderKL

    if not (Path(folder) / "config.json").is_file():
        raise SpurgenError(f"--vae {folder}: no diffusers AutoencoderKL folder (config.json is missing)")
    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32).eval().requires_grad_(False)
    return vae


def build_parts(vae, tokenizer_dir: Path, seed: int, prediction_type: str = "epsilon") -> SDParts:
    """Fresh UNet and text encoder sized for `vae` (latent side = crop side / its factor); SDParts checks
    that the parts fit."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    tokenizer = build_mini_tokenizer(tokenizer_dir)
    text_encoder = build_mini_text_encoder(tokenizer, init_seed=seed)
    return SDParts(
        unet=build_mini_unet(
            corpus.SIZE // factor, init_seed=seed, latent_channels=vae.config.latent_channels
        ),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        vae=vae,
        noise_scheduler=sd_noise_scheduler(prediction_type),
        sample_scheduler=ddim_sampler(prediction_type),
        model_id="mini-generator-untrained",
    )


class CaptionIds:
    """Token ids of the corpus captions and of the empty prompt, computed once."""

    def __init__(self, tokenizer):
        texts = sorted({corpus.caption(p.subject) for p in corpus.photos("train")}) + [""]
        ids = tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
        )
        self.table = {t: ids.input_ids[i] for i, t in enumerate(texts)}

    def batch(self, captions: list[str], drop: torch.Tensor) -> torch.Tensor:
        """(B, L) ids; captions where `drop` is True become the empty prompt."""
        return torch.stack([self.table["" if d else c] for c, d in zip(captions, drop.tolist(), strict=True)])


def snr_weights(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma per sample, SNR_t = ab_t / (1 - ab_t): min(SNR_t, gamma) / SNR_t for epsilon prediction,
    min(SNR_t, gamma) / (SNR_t + 1) for v-prediction (Hang et al. 2023); ones when gamma is 0."""
    if gamma <= 0:
        return torch.ones(t.shape)
    ab = scheduler.alphas_cumprod.to(torch.float64)[t]
    snr = ab / (1 - ab)
    v = scheduler.config.prediction_type == "v_prediction"
    return (snr.clamp(max=gamma) / (snr + 1 if v else snr)).float()


def training_loss(
    parts: SDParts, x: torch.Tensor, ids: torch.Tensor, gen: torch.Generator, snr_gamma: float = 0.0
) -> torch.Tensor:
    """Denoising loss of one batch: z = E(x)·s, z_t = sqrt(ab_t)·z + sqrt(1-ab_t)·eps (METHOD.md), against eps
    or the velocity (the scheduler's prediction type), each sample weighted by snr_weights (all ones by
    default: the plain mean)."""
    with torch.no_grad():
        z = parts.vae.encode(x).latent_dist.sample(generator=gen) * parts.vae.config.scaling_factor
    eps = torch.randn(z.shape, generator=gen)
    t = torch.randint(0, parts.noise_scheduler.config.num_train_timesteps, (z.shape[0],), generator=gen)
    z_t = parts.noise_scheduler.add_noise(z, eps, t)
    cond = parts.text_encoder(ids)[0]
    out = parts.unet(z_t, t, encoder_hidden_states=cond).sample
    target = denoising_target(parts.noise_scheduler, z, eps, t)
    if snr_gamma <= 0:
        return F.mse_loss(out.float(), target.float())
    per_sample = F.mse_loss(out.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (snr_weights(parts.noise_scheduler, t, snr_gamma) * per_sample).mean()


def _lr(cfg: GenTrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of cfg.lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def step_batch(cfg: GenTrainConfig, step: int, captions: CaptionIds, gen: torch.Generator) -> tuple:
    """Crops of step `step` (seeded by [seed, STREAM, step]) and their caption ids after the dropout."""
    names = [p.name for p in corpus.photos("train")]
    images, crops = corpus.sample_crops(names, cfg.batch, seed=[cfg.seed, STREAM, step])
    drop = torch.rand(cfg.batch, generator=gen) < cfg.uncond_prob
    return corpus.to_tensor(images), captions.batch([c.caption for c in crops], drop)


class WeightAverage:
    """Exponential moving average of `params` (Polyak averaging, as diffusers' EMAModel): after each optimiser
    step, avg <- d_t·avg + (1 - d_t)·param with d_t = min(decay, (1 + step) / (10 + step))."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for avg, p in zip(self.shadow, self.params, strict=True):
            avg.lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for avg, p in zip(self.shadow, self.params, strict=True):
            p.copy_(avg)


def train_generator(cfg: GenTrainConfig, parts: SDParts, log=print) -> GenTrainResult:
    """Train parts.unet and parts.text_encoder in place (with cfg.ema_decay > 0 they end as the weights'
    moving average); deterministic for a seed with one CPU thread."""
    torch.manual_seed(cfg.seed)
    parts.unet.train()
    parts.text_encoder.train()
    params = [*parts.unet.parameters(), *parts.text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = WeightAverage(params, cfg.ema_decay) if cfg.ema_decay > 0 else None
    gen, captions = torch.Generator().manual_seed(cfg.seed), CaptionIds(parts.tokenizer)
    res, window, start, timed = GenTrainResult(), [], time.perf_counter(), None
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        loss = training_loss(parts, *step_batch(cfg, step, captions, gen), gen, cfg.snr_gamma)
        if not torch.isfinite(loss):
            raise SpurgenError(f"mini generator: loss is {loss.item()} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if ema is not None:
            ema.update(step)
        if step < cfg.first_losses:
            res.first_losses.append(loss.item())
        window.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            now = time.perf_counter()
            timed = timed or (step + 1, now)  # the first window holds start-up costs: time from its end
            if step + 1 > timed[0]:
                res.step_s = (now - timed[1]) / (step + 1 - timed[0])
            res.curve.append((step + 1, float(np.mean(window))))
            res.final_loss = res.curve[-1][1]
            log(f"generator step {step + 1}/{cfg.steps} loss {res.final_loss:.4f} ({now - start:.0f} s)")
            window = []
    res.wall_s = time.perf_counter() - start
    if ema is not None:
        ema.copy_to_params()
    parts.unet.eval()
    parts.text_encoder.eval()
    return res


def _to_fp16(folder: Path) -> None:
    """Rewrite every safetensors file in `folder` with fp16 storage (loaders upcast with torch_dtype)."""
    from safetensors.torch import load_file, save_file

    for weights in folder.glob("*.safetensors"):
        state = {
            k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(weights).items()
        }
        save_file(state, weights, metadata={"format": "pt"})


def save_parts(parts: SDParts, out: Path) -> dict[str, str]:
    """unet/, text_encoder/ (fp16 safetensors), tokenizer/ and scheduler/ under `out`; {file: sha256}."""
    folders = {"unet": parts.unet, "text_encoder": parts.text_encoder, "tokenizer": parts.tokenizer}
    files: dict[str, str] = {}
    for name, part in folders.items():
        part.save_pretrained(out / name, **({} if name == "tokenizer" else {"safe_serialization": True}))
        _to_fp16(out / name)
    parts.sample_scheduler.save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps(model_index(), indent=2, sort_keys=True) + "\n")
    files["model_index.json"] = sha256_file(out / "model_index.json")
    for name in [*folders, "scheduler"]:
        files.update(
            {f"{name}/{f.name}": sha256_file(f) for f in sorted((out / name).iterdir()) if f.is_file()}
        )
    return files


def model_index() -> dict:
    """model_index.json of a StableDiffusionPipeline folder without safety checker: with the autoencoder's
    vae/ beside them, the folder loads with StableDiffusionPipeline.from_pretrained and no spurgen."""
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def load_trained(out: Path, vae) -> SDParts:
    """The written folders loaded back as float32 parts (as a pipeline would load them)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    sampler = DDIMScheduler.from_pretrained(out / "scheduler")
    return SDParts(
        unet=UNet2DConditionModel.from_pretrained(out / "unet", torch_dtype=torch.float32).eval(),
        text_encoder=CLIPTextModel.from_pretrained(out / "text_encoder", dtype=torch.float32).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(out / "tokenizer"),
        vae=vae,
        noise_scheduler=sd_noise_scheduler(sampler.config.prediction_type),
        sample_scheduler=sampler,
        model_id=str(out),
    )


def write_manifest(out: Path, record: dict) -> Path:
    """Merge the generator's record into <out>/manifest.json (other parts' records stay)."""
    path = out / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest.setdefault("parts", {})[PART] = record
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


@torch.no_grad()
def sample_grid(parts: SDParts, prompts: list[str], path: Path, per_prompt: int = 6, seed: int = 0) -> Path:
    """One row of `per_prompt` 64-px images per prompt (DDIM, 25 steps, guidance 4; the same noise seeds in
    every row), saved as a PNG."""
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    pipe = StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=parts.sample_scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    size = corpus.SIZE
    grid = Image.new("RGB", (size * per_prompt, size * len(prompts)))
    for row, prompt in enumerate(prompts):
        gen = torch.Generator().manual_seed(seed)
        images = pipe(
            [prompt] * per_prompt,
            height=size,
            width=size,
            num_inference_steps=25,
            guidance_scale=4.0,
            generator=gen,
        ).images
        for col, image in enumerate(images):
            grid.paste(image, (col * size, row * size))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--vae", type=Path, required=True, help="diffusers AutoencoderKL folder (frozen)")
    parser.add_argument("--out", type=Path, required=True, help="folder of the part folders and manifest")
    parser.add_argument("--steps", type=int, default=GenTrainConfig.steps)
    parser.add_argument("--seed", type=int, default=GenTrainConfig.seed)
    parser.add_argument("--batch", type=int, default=GenTrainConfig.batch)
    parser.add_argument("--lr", type=float, default=GenTrainConfig.lr)
    parser.add_argument(
        "--snr-gamma",
        type=float,
        default=GenTrainConfig.snr_gamma,
        help="Min-SNR-gamma loss weighting (0: the plain mean)",
    )
    parser.add_argument(
        "--prediction-type",
        default=GenTrainConfig.prediction_type,
        choices=["epsilon", "v_prediction"],
        help="what the UNet predicts (saved in the scheduler config)",
    )
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=GenTrainConfig.ema_decay,
        help="save the weights' exponential moving average with this decay (0: the last weights)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 replays the manifest)")
    parser.add_argument("--grid", type=Path, default=None, help="also save a PNG of samples per caption")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.threads < 1 or not args.lr > 0:
        parser.error("--steps, --batch and --threads must be at least 1 and --lr positive")
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema-decay must be in [0, 1), not {args.ema_decay}")
    if not args.snr_gamma >= 0:
        parser.error(f"--snr-gamma must be at least 0, not {args.snr_gamma}")
    return args


GRID_PROMPTS = ["a photo of a cat", "a photo of a texture", "a photo of a person", "a photo of a galaxy", ""]


def run(args: argparse.Namespace, command: str) -> tuple[dict, SDParts]:
    """Build, train, save, reload the written fp16 files: the manifest record and the reloaded parts."""
    cfg = GenTrainConfig(
        seed=args.seed,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        snr_gamma=args.snr_gamma,
        prediction_type=args.prediction_type,
        ema_decay=args.ema_decay,
    )
    vae = load_frozen_vae(args.vae)
    parts = build_parts(vae, args.out / "tokenizer", cfg.seed, cfg.prediction_type)
    res = train_generator(cfg, parts)
    files = save_parts(parts, args.out)
    shipped = load_trained(args.out, vae)
    record = {
        "command": command,
        "config": asdict(cfg),
        "vae": str(args.vae),
        "vae_sha256": {f.name: sha256_file(f) for f in sorted(Path(args.vae).glob("*")) if f.is_file()},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "first_losses": res.first_losses,
        "final_losses": {"loss": res.final_loss},
        "loss_curve": res.curve,
        "train_wall_s": round(res.wall_s, 1),
        "step_s": round(res.step_s, 4) if math.isfinite(res.step_s) else None,
        "parameters": {
            "unet": sum(p.numel() for p in shipped.unet.parameters()),
            "text_encoder": sum(p.numel() for p in shipped.text_encoder.parameters()),
        },
        "vocab_size": len(shipped.tokenizer),
        "files": files,
    }
    return record, shipped


def main(argv: list[str] | None = None) -> int:
    """Entry point; user mistakes print one line and exit 2. Trains on --threads threads; the caller's
    count is restored."""
    with torch_threads(None):  # _main sets --threads; the caller's count comes back
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = f"{PROG} " + " ".join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    try:
        load_frozen_vae(args.vae)  # a wrong --vae costs one line and leaves no empty --out behind
        output_folder(args.out)
        record, shipped = run(args, command)
    except SpurgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    record["wall_s"] = round(time.perf_counter() - start, 1)
    path = write_manifest(args.out, record)
    if args.grid:  # after the manifest: the samples are a look, not part of the recorded run
        print("samples ->", sample_grid(shipped, GRID_PROMPTS, args.grid, seed=args.seed))
    print(
        json.dumps({k: record[k] for k in ("wall_s", "step_s", "first_losses", "final_losses")}), f"-> {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
