"""A mini autoencoder's encoder (the gate-passing recipe, `pretrain --recipe pca`): principal components of 4x4 pixel patches, written into the weights of a
diffusers AutoencoderKL encoder, so the folder still loads with `AutoencoderKL.from_pretrained` and no spurgen.

Why (docs/mini_world.md, "The PCA autoencoder"): on photos it never saw, a linear projection of each 4x4x3 patch
onto the top 12 of its 48 principal components keeps the Lite classifiers' labels (`experiments/vae_probe.py
--pca`: 38.1 dB, label kept 0.97 / 0.95 / 0.93), while every encoder learned from scratch on the CPU budget
fell far short (at most 0.66). The components are fitted once, in closed form, on crops of the training
photos; the encoder is then frozen and only the decoder learns.

How the weights compute it exactly, block by block (factor 4 = three blocks, one GroupNorm group):
- every resnet's last convolution and the mid-block attention's output projection are zero, so each of those
  blocks passes its (shortcut of the) input through unchanged;
- `conv_in` copies RGB; the first stride-2 convolution gathers each 2x2 pixel block into 12 channels, the
  second gathers 2x2 of those (a 4x4x3 patch) and projects it: channels p = V^T (patch - mean) and -p;
- the last shortcut adds `offset` channels of constant value OFFSET. The final GroupNorm (one group) then sees
  a mean that p and -p cancel out of, and a variance the constants dominate, so its scale hardly depends on
  the image; its affine undoes the normalisation and adds SHIFT, which keeps the SiLU in its linear range;
- `conv_out` subtracts SHIFT for the mean and gives every latent a constant log-variance (LOGVAR unless
  chosen): the posterior sample's noise is what the decoder learns to tolerate in generated latents.
The large constants need float32: the folder stores this autoencoder in float32, not fp16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL

from spurgen.errors import SpurgenError

PATCH = 4  # pixels per latent side: three blocks, two stride-2 convolutions
OFFSET = 300.0  # the constant channels' value (measured: smallest error between 100 and 1000)
SHIFT = 30.0  # keeps SiLU(x + SHIFT) within 1e-11 of x + SHIFT for |x| < 7
LOGVAR = -14.0  # posterior std exp(-7) ~ 1e-3: a near-deterministic latent


@dataclass(frozen=True)
class PatchPCA:
    """Mean (48,) and top components (48, k) of 4x4x3 patches; `variances` of all 48 components."""

    mean: torch.Tensor
    basis: torch.Tensor
    variances: torch.Tensor

    @property
    def kept_variance(self) -> float:
        """The fraction of patch variance the kept components carry."""
        k = self.basis.shape[1]
        return float(self.variances[:k].sum() / self.variances.sum())


def patch_vectors(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H/4, W/4, 48): each 4x4 patch, in the order (row, column, channel)."""
    b, c, h, w = x.shape
    p = x.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 3, 5, 1)
    return p.reshape(b, h // PATCH, w // PATCH, PATCH * PATCH * c)


def fit(images: torch.Tensor, components: int) -> PatchPCA:
    """Principal components of every 4x4 patch of `images` (B, 3, H, W), in float64."""
    v = patch_vectors(images).reshape(-1, PATCH * PATCH * images.shape[1]).double()
    mean = v.mean(0)
    variances, vectors = torch.linalg.eigh((v - mean).T @ (v - mean) / len(v))
    order = variances.argsort(descending=True)
    basis = vectors[:, order[:components]]
    basis = basis * torch.where(basis.sum(0) < 0, -1.0, 1.0)  # a fixed sign per component
    return PatchPCA(mean.float(), basis.float(), variances[order].clamp_min(0).float())


def project(pca: PatchPCA, images: torch.Tensor) -> torch.Tensor:
    """The latent the encoder is built to compute: (B, k, H/4, W/4)."""
    return ((patch_vectors(images) - pca.mean) @ pca.basis).permute(0, 3, 1, 2)


def unproject(pca: PatchPCA, z: torch.Tensor) -> torch.Tensor:
    """The linear inverse of `project`: (B, k, h, w) latents -> (B, 3, 4h, 4w) images (no decoder)."""
    patches = z.permute(0, 2, 3, 1) @ pca.basis.T + pca.mean  # (B, h, w, 48): (row, column, channel)
    b, h, w, _ = patches.shape
    return (
        patches.reshape(b, h, w, PATCH, PATCH, 3)
        .permute(0, 5, 1, 3, 2, 4)
        .reshape(b, 3, PATCH * h, PATCH * w)
    )


def _zero(conv: torch.nn.Module) -> None:
    conv.weight.zero_()
    conv.bias.zero_()


def check_fits(vae: AutoencoderKL, components: int) -> None:
    """The architecture the construction needs; a SpurgenError naming what differs."""
    cfg = vae.config
    widths = tuple(cfg.block_out_channels)
    if len(widths) != 3 or cfg.norm_num_groups != 1 or cfg.latent_channels != components:
        raise SpurgenError(
            "the PCA encoder needs three blocks (factor 4), one GroupNorm group and latent_channels = "
            f"components; got blocks {widths}, {cfg.norm_num_groups} groups, {cfg.latent_channels} latents"
        )
    if widths[0] < 12 or widths[1] < 2 * components or widths[2] <= 2 * components:
        raise SpurgenError(
            f"the PCA encoder needs block widths of at least (12, {2 * components}, {2 * components + 1}); "
            f"got {widths}"
        )


@torch.no_grad()
def install(vae: AutoencoderKL, pca: PatchPCA, logvar: float = LOGVAR) -> AutoencoderKL:
    """Write `pca` into `vae`'s encoder and quant_conv (see the module docstring) and freeze them; every
    latent's posterior has log-variance `logvar` (the noise the decoder learns to tolerate)."""
    k = pca.basis.shape[1]
    check_fits(vae, k)
    _pass_through(vae.encoder)
    _gather_and_project(vae.encoder, pca)
    _undo_the_norm(vae, k, logvar)
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    return vae


def _pass_through(enc: torch.nn.Module) -> None:
    """Every resnet and attention block adds zero to its (shortcut of the) input; conv_in copies RGB."""
    for block in [*enc.down_blocks, enc.mid_block]:
        for resnet in block.resnets:
            _zero(resnet.conv2)
            if resnet.conv_shortcut is not None:
                _zero(resnet.conv_shortcut)
    for attention in enc.mid_block.attentions or []:
        _zero(attention.to_out[0])
    _zero(enc.conv_in)
    for c in range(3):
        enc.conv_in.weight[c, c, 1, 1] = 1.0


def _gather_and_project(enc: torch.nn.Module, pca: PatchPCA) -> None:
    """Two stride-2 gathers: channel (2 dr + dc) 3 + c holds pixel (2i + dr, 2j + dc) of colour c; the second
    gathers 2x2 of those (patch row 2 R + dr, column 2 C + dc) and projects: channels p, then -p."""
    k = pca.basis.shape[1]
    first = enc.down_blocks[0].downsamplers[0].conv
    _zero(first)
    for dr in range(2):
        for dc in range(2):
            for c in range(3):
                first.weight[(2 * dr + dc) * 3 + c, c, dr, dc] = 1.0
    shortcut = enc.down_blocks[1].resnets[0].conv_shortcut
    for ch in range(12):
        shortcut.weight[ch, ch, 0, 0] = 1.0
    second = enc.down_blocks[1].downsamplers[0].conv
    _zero(second)
    for dr in range(2):
        for dc in range(2):
            for big_r in range(2):
                for big_c in range(2):
                    for c in range(3):
                        row = ((2 * big_r + dr) * PATCH + 2 * big_c + dc) * 3 + c
                        second.weight[:k, (2 * dr + dc) * 3 + c, big_r, big_c] = pca.basis[row]
    second.bias[:k] = -(pca.mean @ pca.basis)
    second.weight[k : 2 * k] = -second.weight[:k]
    second.bias[k : 2 * k] = -second.bias[:k]


def _undo_the_norm(vae: AutoencoderKL, k: int, logvar: float) -> None:
    """Constant channels of OFFSET fix the final GroupNorm's statistics; its affine restores p + SHIFT;
    conv_out takes SHIFT off and sets the log-variance; quant_conv is the identity."""
    enc = vae.encoder
    last = enc.down_blocks[2].resnets[0].conv_shortcut
    width = last.weight.shape[0]
    for ch in range(2 * k):
        last.weight[ch, ch, 0, 0] = 1.0
    last.bias[2 * k :] = OFFSET
    n_const = width - 2 * k
    mean = OFFSET * n_const / width  # exact: p and -p cancel
    std = ((2 * k * mean**2 + n_const * (OFFSET - mean) ** 2) / width) ** 0.5  # up to the image's share
    enc.conv_norm_out.weight.zero_()
    enc.conv_norm_out.bias.zero_()
    enc.conv_norm_out.weight[: 2 * k] = std
    enc.conv_norm_out.bias[: 2 * k] = mean + SHIFT
    _zero(enc.conv_out)
    for ch in range(k):
        enc.conv_out.weight[ch, ch, 1, 1] = 1.0
    enc.conv_out.bias[:k] = -SHIFT
    enc.conv_out.bias[k:] = logvar
    _zero(vae.quant_conv)
    for ch in range(2 * k):
        vae.quant_conv.weight[ch, ch, 0, 0] = 1.0
