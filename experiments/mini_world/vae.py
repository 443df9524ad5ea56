"""The mini autoencoder: a diffusers AutoencoderKL (64-px images, factor 4), trained on random crops of the
corpus's photos and measured on photos it never saw (docs/mini_world.md). The shipped recipe (PCA_RECIPE) has a
frozen PCA encoder and 12 x 16x16 latents; VaeTrainConfig's defaults are the learned recipe, a learned encoder
with 4 x 16x16 latents that fails the gate (its records are docs/mini_world.md's *_learned ones)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from experiments.mini_world import corpus, lite, pca_encoder
from experiments.mini_world.training import TrainResult
from spurgen.errors import SpurgenError


@dataclass(frozen=True)
class VaeTrainConfig:
    """Everything that decides the trained weights; written into the manifest. The defaults are the learned
    recipe (a learned encoder, which fails the gate); PCA_RECIPE, applied over them, is the shipped one
    (`pretrain --recipe pca`, the default; docs/mini_world.md)."""

    seed: int = 0
    steps: int = 1000
    batch: int = 12
    lr: float = 1.5e-3
    warmup: int = 20
    kl_weight: float = 1e-6  # small, as in Stable Diffusion's autoencoder
    perceptual_weight: float = 0.1  # LPIPS-like term on a frozen classifier's features (SD used LPIPS)
    perceptual_lite: int = 1  # EfficientNet-Lite1: not Lite0, the classifier the gate requires
    perceptual_size: int = 96  # 0.4 x Lite1's 240: a sixth of the cost, most of the texture
    channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 4
    norm_groups: int = 8  # GroupNorm groups (docs/mini_world.md: 8 lose flat colours; PCA needs 1)
    # the corpus splits whose photos it trains on; ("train", "autoencoder") adds the Debian colour photos
    photo_splits: tuple[str, ...] = ("train",)
    augment: bool = False  # a random horizontal flip and quarter turn per crop
    # side of the window of each 64-px crop it trains on (a multiple of 4; smaller: cheaper steps, and the
    # autoencoder is convolutional); the gate always measures whole 64-px views
    train_crop: int = 64
    # a PatchGAN from step adversarial_start (SD's autoencoder recipe; 0 weight: none, the shipped recipe)
    adversarial_weight: float = 0.0
    adversarial_start: int = 0
    adversarial_lr: float = 2e-4
    # "learned": trained jointly with the decoder; "pca": principal components of 4x4 patches fitted on
    # pca_crops crops in closed form, then frozen, so only the decoder learns (mini_world/pca_encoder.py)
    encoder: str = "learned"
    pca_crops: int = 400
    pca_logvar: float = -6.0  # the PCA posterior's log-variance: std 0.05, noise the decoder learns to bear
    # after training, rescale each latent channel to unit std (exact: reconstructions unchanged)
    equalise_channels: bool = False
    log_every: int = 50
    first_losses: int = 3  # how many exact step losses the manifest records (tests replay them)

    def __post_init__(self):  # a manifest's JSON lists become tuples again
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "photo_splits", tuple(self.photo_splits))


# The shipped recipe, which passes the gate (docs/mini_world.md, "The PCA autoencoder"): a frozen PCA encoder
# of 12 channels and a decoder trained on 32-px windows with posterior noise 0.05. The channels keep their PCA
# scales (std 3.2 down to 0.14), the scales the shipped generator is trained on (--equalise-channels rescales
# them).
PCA_RECIPE = dict(
    steps=8000, lr=2e-3, perceptual_weight=0.0, latent_channels=12, norm_groups=1,
    photo_splits=("train", "autoencoder"), augment=True, train_crop=32, encoder="pca", pca_logvar=-6.0,
    equalise_channels=False,
)  # fmt: skip


@dataclass
class VaeTrainResult(TrainResult):
    """TrainResult with the final loss's parts."""

    final_l1: float = float("nan")
    final_kl: float = float("nan")


def build_mini_vae(
    channels: tuple[int, ...] = (16, 32, 64), latent_channels: int = 4, norm_groups: int = 8
) -> AutoencoderKL:
    """AutoencoderKL with len(channels) blocks (factor 2^(n-1)), `latent_channels` latent channels,
    GroupNorm of `norm_groups` groups."""
    n = len(channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=norm_groups,
        sample_size=corpus.SIZE,
    )


def step_crops(cfg: VaeTrainConfig, step: int) -> torch.Tensor:
    """The batch of step `step`: crops of the photos of cfg.photo_splits drawn from the seed (cfg.seed, step),
    optionally flipped and turned, then cut to a train_crop window at a multiple of 4 pixels."""
    names = [p.name for split in cfg.photo_splits for p in corpus.photos(split)]
    images, _ = corpus.sample_crops(names, cfg.batch, seed=[cfg.seed, step])
    if cfg.augment:
        images = flip_and_turn(images, np.random.default_rng([cfg.seed, step, 1]))
    if cfg.train_crop < corpus.SIZE:
        rng = np.random.default_rng([cfg.seed, step, 2])
        corners = rng.integers(0, (corpus.SIZE - cfg.train_crop) // 4 + 1, size=(len(images), 2)) * 4
        side = cfg.train_crop
        images = np.stack(
            [im[i : i + side, j : j + side] for im, (i, j) in zip(images, corners, strict=True)]
        )
    return corpus.to_tensor(images)  # (B, 3, train_crop, train_crop) in [-1, 1]


def flip_and_turn(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each (H, W, 3) image mirrored left-right with probability 1/2, then turned by 0-3 quarter turns."""
    out = []
    for image in images:
        if rng.random() < 0.5:
            image = image[:, ::-1]
        out.append(np.rot90(image, int(rng.integers(4))))
    return np.stack(out)


class PerceptualLoss(nn.Module):
    """LPIPS-style distance without learned weights: channel-normalised features of a frozen
    EfficientNet-Lite after stages `layers`, squared difference summed over channels, averaged over space."""

    def __init__(self, variant: int, size: int, layers: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        self.net, self.size, self.layers = lite.load_lite(variant), size, layers
        self.register_buffer("mean", torch.tensor(lite.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(lite.STD).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.interpolate((x + 1) / 2, size=(self.size, self.size), mode="bilinear", align_corners=False)
        h = self.net.bn1(self.net.conv_stem((x - self.mean) / self.std))
        out = []
        for i, stage in enumerate(self.net.blocks[: max(self.layers) + 1]):
            h = stage(h)
            if i in self.layers:
                out.append(h / (h.norm(dim=1, keepdim=True) + 1e-8))
        return out

    def forward(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.features(x)
        return sum((a - b).pow(2).sum(1).mean() for a, b in zip(self.features(recon), target, strict=True))


class PatchDiscriminator(nn.Module):
    """A narrow 4-layer PatchGAN (pix2pix's layout): one realness logit per overlapping patch."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.GroupNorm(8, 2 * width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 4, 1, 1),
            nn.GroupNorm(8, 4 * width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(4 * width, 1, 4, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def adversarial_term(
    vae: AutoencoderKL, rec_loss: torch.Tensor, recon: torch.Tensor, disc: PatchDiscriminator, weight: float
) -> torch.Tensor:
    """weight x s x (-D(recon)), the hinge generator loss, where the adaptive s = ||grad rec_loss|| /
    ||grad -D(recon)|| at the decoder's last layer makes both pull equally hard there (taming-transformers,
    Stable Diffusion's autoencoder)."""
    g_loss = -disc(recon).mean()
    last = vae.decoder.conv_out.weight
    g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0].norm()
    g_adv = torch.autograd.grad(g_loss, last, retain_graph=True)[0].norm()
    return weight * (g_rec / (g_adv + 1e-4)).clamp(max=1e4).detach() * g_loss


def discriminator_step(
    disc: PatchDiscriminator, opt: torch.optim.Optimizer, x: torch.Tensor, recon: torch.Tensor
) -> float:
    """One hinge-loss step: relu(1 - D(x)) + relu(1 + D(recon)), the reconstruction detached."""
    loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(recon.detach())).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss)


def vae_loss(
    vae: AutoencoderKL,
    x: torch.Tensor,
    generator: torch.Generator,
    cfg: VaeTrainConfig,
    perceptual: PerceptualLoss | None,
) -> tuple:
    """L1 + L2 reconstruction of a posterior sample, + perceptual_weight x the perceptual distance,
    + kl_weight x KL (summed over the latent, mean over the batch). Returns (total, l1, kl, reconstruction)."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample(generator=generator)).sample
    l1 = (recon - x).abs().mean()
    l2 = (recon - x).pow(2).mean()
    kl = posterior.kl().mean()
    total = l1 + l2 + cfg.kl_weight * kl
    if perceptual is not None and cfg.perceptual_weight > 0:
        total = total + cfg.perceptual_weight * perceptual(recon, x)
    return total, l1, kl, recon


def _lr(cfg: VaeTrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 1% of cfg.lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def fit_patch_pca(cfg: VaeTrainConfig) -> pca_encoder.PatchPCA:
    """The PCA encoder's components: cfg.pca_crops crops of the photos of cfg.photo_splits, drawn from the
    seed (cfg.seed, 2**31 - 1) that no training batch uses."""
    names = [p.name for split in cfg.photo_splits for p in corpus.photos(split)]
    images, _ = corpus.sample_crops(names, cfg.pca_crops, seed=[cfg.seed, 2**31 - 1])
    return pca_encoder.fit(corpus.to_tensor(images), cfg.latent_channels)


def train_vae(cfg: VaeTrainConfig, log=print) -> tuple[AutoencoderKL, VaeTrainResult]:
    """Train a mini VAE from scratch; deterministic for a seed with one CPU thread."""
    torch.manual_seed(cfg.seed)
    vae = build_mini_vae(cfg.channels, cfg.latent_channels, cfg.norm_groups).train()
    if cfg.encoder == "pca":
        pca_encoder.install(vae, fit_patch_pca(cfg), cfg.pca_logvar)
    elif cfg.encoder != "learned":
        raise SpurgenError(f"encoder must be 'learned' or 'pca', not {cfg.encoder!r}")
    opt = torch.optim.Adam([p for p in vae.parameters() if p.requires_grad], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    perceptual = (
        PerceptualLoss(cfg.perceptual_lite, cfg.perceptual_size) if cfg.perceptual_weight > 0 else None
    )
    disc = PatchDiscriminator() if cfg.adversarial_weight > 0 else None  # after the VAE: same VAE init
    disc_opt = torch.optim.Adam(disc.parameters(), lr=cfg.adversarial_lr, betas=(0.5, 0.9)) if disc else None
    res, window, start = VaeTrainResult(), [], time.perf_counter()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        x = step_crops(cfg, step)
        loss, l1, kl, recon = vae_loss(vae, x, gen, cfg, perceptual)
        adversarial = disc is not None and step >= cfg.adversarial_start
        if adversarial:
            loss = loss + adversarial_term(vae, loss, recon, disc, cfg.adversarial_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if adversarial:
            discriminator_step(disc, disc_opt, x, recon)
        if step < cfg.first_losses:
            res.first_losses.append(loss.item())
        window.append((loss.item(), l1.item(), kl.item()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            mean = np.mean(window, axis=0)
            res.curve.append((step + 1, float(mean[0])))
            res.final_loss, res.final_l1, res.final_kl = (float(v) for v in mean)
            log(
                f"vae step {step + 1}/{cfg.steps} loss {mean[0]:.4f} l1 {mean[1]:.4f} kl {mean[2]:.1f} "
                f"({time.perf_counter() - start:.0f} s)"
            )
            window = []
    res.wall_s = time.perf_counter() - start
    return vae.eval(), res


def _scaling_crops(seed: int, n: int) -> torch.Tensor:
    """`n` crops of the generator's training photos (split `train`: the latents the UNet learns)."""
    names = [p.name for p in corpus.photos("train")]
    images, _ = corpus.sample_crops(names, n, seed=[seed, 10**6])
    return corpus.to_tensor(images)


@torch.no_grad()
def equalise_latent_channels(vae: AutoencoderKL, seed: int, n: int = 256) -> list[float]:
    """Rescale each latent channel to unit std over `n` training crops, exactly: quant_conv divides the mean
    by the channel's std (and shifts its log-variance to match), post_quant_conv multiplies it back, so D(E(x))
    is unchanged. The diffusion model then sees channels of equal scale, as SD's do (docs/mini_world.md has
    what that did for a generator on PCA latents: not enough). Returns the stds divided out."""
    z = vae.encode(_scaling_crops(seed, n)).latent_dist.mean
    std = z.std(dim=(0, 2, 3))
    c = std.numel()
    vae.quant_conv.weight[:c] /= std.view(c, 1, 1, 1)
    vae.quant_conv.bias[:c] /= std
    vae.quant_conv.bias[c:] -= 2 * std.log()
    vae.post_quant_conv.weight.mul_(std.view(1, c, 1, 1))
    return [round(float(v), 5) for v in std]


@torch.no_grad()
def set_scaling_factor(vae: AutoencoderKL, seed: int, n: int = 256) -> float:
    """scaling_factor = 1 / std of posterior samples over `n` crops of the generator's training photos (split
    `train`: the latents the UNet learns; how SD's 0.18215 was chosen)."""
    z = vae.encode(_scaling_crops(seed, n)).latent_dist.sample(torch.Generator().manual_seed(seed))
    factor = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=round(factor, 5))
    return factor


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """Decode of the posterior mean: (B, 3, H, W) in [-1, 1] -> (B, 3, H, W) clamped to [-1, 1]."""
    return vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (x - y).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)
