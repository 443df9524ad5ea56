"""Two probes of a mini autoencoder (docs/mini_world.md, "Why the gate fails"):

    python -m experiments.vae_probe --vae spurgen/assets/mini/vae                  # flat colours only
    python -m experiments.vae_probe --vae spurgen/assets/mini/vae --upper-bound 300
    python -m experiments.vae_probe --pca 4,8,12,16,24                               # no autoencoder

- flat colours: 64-px images of one colour (plus noise of sigma 0.05) through D(E(x)); prints the mean colour in
  and out. A decoder that cannot carry a flat region's colour turns red into grey.
- --upper-bound N: fine-tunes only the decoder, for N steps, on the held-out views themselves (the encoder
  frozen), then measures the gate on those same views. No honest decoder does better with this encoder: it
  bounds what the latents keep, not what training can reach.
- --pca K,...: the gate for a linear round trip through the top K principal components of 4x4 patches (the
  PCA encoder's components, fitted as `pretrain` fits them, reconstructed by the transposed basis): how many
  latent channels the classifiers need at factor 4, before any decoder is trained.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

FLAT = {"black": (0, 0, 0), "grey": (0.5, 0.5, 0.5), "red": (0.8, 0.1, 0.1), "green": (0.1, 0.7, 0.1),
        "blue": (0.1, 0.1, 0.8), "dark": (-0.6, -0.6, -0.6)}  # fmt: skip  # in [-1, 1]


@torch.no_grad()
def flat_colours(vae) -> dict:
    colours = torch.tensor(list(FLAT.values()), dtype=torch.float32)
    x = colours.view(-1, 3, 1, 1).expand(-1, 3, 64, 64)
    x = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    out = vae.decode(vae.encode(x).latent_dist.mode()).sample.mean((2, 3))
    return {
        name: {"in": list(FLAT[name]), "out": [round(v, 3) for v in out[i].tolist()]}
        for i, name in enumerate(FLAT)
    }


def decoder_upper_bound(vae, steps: int, batch: int = 12, lr: float = 5e-4) -> dict:
    from experiments.mini_world import gate
    from experiments.mini_world.vae import PerceptualLoss, VaeTrainConfig, vae_loss

    x, names = gate.heldout_views()
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    cfg = VaeTrainConfig(kl_weight=0.0)  # the autoencoder's own loss, the frozen encoder's KL left out
    perceptual = PerceptualLoss(cfg.perceptual_lite, cfg.perceptual_size)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    vae.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = vae_loss(vae, x[rng.integers(0, len(x), batch)], gen, cfg, perceptual)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    vae.eval()
    result = gate.label_agreement(vae, x, names, gate.available_lites())
    return {k: v for k, v in result.items() if k not in ("labels",)}


def pca_round_trips(components: list[int]) -> dict:
    from experiments.mini_world import gate, pca_encoder
    from experiments.mini_world.vae import PCA_RECIPE, VaeTrainConfig, fit_patch_pca

    x, names = gate.heldout_views()
    models = gate.available_lites()
    out = {}
    for k in components:
        pca = fit_patch_pca(VaeTrainConfig(**{**PCA_RECIPE, "latent_channels": k}))  # the recipe's photos
        recon = pca_encoder.unproject(pca, pca_encoder.project(pca, x))
        result = gate.recon_agreement(recon.clamp(-1, 1), x, names, models)
        out[str(k)] = {
            "kept_variance": round(pca.kept_variance, 5),
            "psnr_db": round(result["psnr_db"], 2),
        } | {key: result[key] for key in result if key.startswith(("label_kept_ratio", "passed"))}
    return out


def main(argv: list[str] | None = None) -> int:
    from diffusers import AutoencoderKL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", type=Path, default=None, help="diffusers AutoencoderKL folder")
    parser.add_argument("--pca", default="", help="comma-separated component counts: linear round trips")
    parser.add_argument("--upper-bound", type=int, default=0, help="decoder-only steps on the held-out views")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.vae is None and not args.pca:
        parser.error("give --vae, --pca or both")
    report = {}
    if args.pca:
        report["pca_round_trips"] = pca_round_trips([int(k) for k in args.pca.split(",")])
    if args.vae is None:
        print(json.dumps(report, indent=1))
        return 0
    vae = AutoencoderKL.from_pretrained(args.vae, torch_dtype=torch.float32).eval()
    report |= {"vae": str(args.vae), "flat_colours": flat_colours(vae)}
    if args.upper_bound:
        report["decoder_upper_bound"] = {
            "steps": args.upper_bound,
            **decoder_upper_bound(vae, args.upper_bound),
        }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
