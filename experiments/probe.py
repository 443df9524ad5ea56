"""What the SFSL optimises, measured directly on a trained pipeline (docs/mini_world.md).

L_SFSL (METHOD.md) acts on x0_hat, the model's one-step prediction of the clean image from a noised
instance latent. This probe noises the reference images at fixed timesteps with fixed noise, lets the UNet
predict (instance prompt, no guidance), decodes x0_hat and returns cos(phi(x0_hat), m) per timestep under a
given extractor: the quantity the SFSL raises, independent of the sampler. Whether sampled images follow is
a separate question, answered by the evaluation of generated images.
"""

from __future__ import annotations

import torch

from spurgen.losses.sfsl import SpuriousFeatureSimilarityLoss

PROBE_TIMESTEPS = (50, 200, 400)


@torch.no_grad()
def predicted_similarity(  # noqa: PLR0913 - a measurement's knobs, all keywords with defaults
    pipe,
    prompt: str,
    references: torch.Tensor,
    extractor,
    timesteps: tuple[int, ...] = PROBE_TIMESTEPS,
    repeats: int = 4,
    seed: int = 0,
) -> dict[int, float]:
    """{t: mean cos(phi(x0_hat), m)} over `repeats` noise draws of every reference (R, 3, H, W) in [0, 1];
    pipe: a StableDiffusionPipeline-like object (unet, text_encoder, tokenizer, vae) on the CPU, float32;
    the training schedule is the pipeline scheduler's own betas (DDPM-style add_noise)."""
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # the training schedule's betas
    sfsl = SpuriousFeatureSimilarityLoss(extractor, t_max=max(timesteps)).bind(pipe.vae, noise_scheduler)
    sfsl.set_reference_images(references)
    n = references.shape[0]
    ids = pipe.tokenizer(
        [prompt] * n, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    cond = pipe.text_encoder(ids)[0]
    z = pipe.vae.encode(references * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for t in timesteps:
        tt = torch.full((n,), int(t))
        values = []
        for _ in range(repeats):
            z_t = noise_scheduler.add_noise(z, torch.randn(z.shape, generator=gen), tt)
            values.append(1.0 - float(sfsl(z_t, pipe.unet(z_t, tt, cond).sample, tt)))
        out[int(t)] = sum(values) / len(values)
    return out


def probe_run(run_dir, extractor=None) -> dict[int, float]:
    """predicted_similarity of a finished run's pipeline/: its references (the training transform, as the
    SFSL's m sees them), its instance prompt, and `extractor` (default: the one its config names, for
    lambda_sfsl = 0 the one it would have trained through)."""
    import json
    from pathlib import Path

    from diffusers import StableDiffusionPipeline
    from omegaconf import OmegaConf

    from spurgen.build import build
    from spurgen.data.dataset import load_training_images

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    refs = load_training_images(
        [Path(p) for p in meta["references"]], int(meta["resolution"]), bool(cfg.data.center_crop)
    )
    pipe = StableDiffusionPipeline.from_pretrained(
        run_dir / "pipeline", safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    extractor = extractor if extractor is not None else build(cfg.feature_extractor)
    return predicted_similarity(pipe, meta["instance_prompt"], refs, extractor)
