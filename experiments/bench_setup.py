"""What experiments/bench.py measures: the two sizes, the SFSL settings, and one step of each kind.

Everything is built from spurgen's own parts (SpurgenModule, SpurgenObjective, FrozenImageModel, pipeline)
with random weights. A "plain" step repeats the module's math (METHOD.md, Training) without spurgen or
Lightning, for the framework-overhead comparison.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from experiments.proportional import build_proportional_extractor, build_proportional_sd
from spurgen.data.dataset import collate, tokenize
from spurgen.losses import SpurgenObjective, SpuriousFeatureSimilarityLoss, denoising_target, predict_z0
from spurgen.models.extractors import FrozenImageModel, build_tiny_extractor
from spurgen.models.parts import SDParts
from spurgen.models.tiny import build_tiny_sd
from spurgen.module import ModuleSettings, SpurgenModule
from spurgen.optim import make_optimizer

PROMPT, CLASS_PROMPT = "a photo of a sks flower", "a photo of a flower"
T_ACTIVE = (250, 600)  # instance t passes the default gate (t_max = 500), prior t does not


@dataclass(frozen=True)
class Size:
    name: str
    resolution: int
    parts: Callable[[], SDParts]
    extractor: Callable[[], FrozenImageModel]
    gen_images: int
    gen_steps: int
    eval_images: int
    note: str


def frozen_vae(build: Callable[[], SDParts]) -> Callable[[], SDParts]:
    """Parts as SpurgenModule holds them: the VAE frozen (no weight gradients), also where a section uses the
    parts without a module (L_SFSL alone, fidelity)."""

    def parts() -> SDParts:
        built = build()
        built.vae.requires_grad_(False)
        return built

    return parts


SIZES = {
    "tiny": Size(
        "tiny",
        32,
        frozen_vae(build_tiny_sd),
        build_tiny_extractor,
        4,
        10,
        32,
        "tiny UNet (32, 64), VAE (16, 32), 32 px; tiny CNN extractor at 32 px",
    ),
    "proportional": Size(
        "proportional",
        128,
        frozen_vae(lambda: build_proportional_sd(width_scale=0.25, vae_width_scale=0.5, resolution=128)),
        lambda: build_proportional_extractor(width_scale=0.25, input_size=56),
        1,
        4,
        16,
        "SD 1.5 block layout, UNet widths x0.25 (80-320), VAE widths x0.5 (64-256), text encoder x0.25, "
        "128 px (16x16 latent); ResNet-50 (3-4-6-3 bottlenecks) widths x0.25 at 56 px (= 224 * 128/512)",
    ),
}


@dataclass(frozen=True)
class Setting:
    """One SFSL configuration; lambda_sfsl = 0 means no SFSL at all."""

    lambda_sfsl: float = 0.1
    decode_at_extractor_size: bool = False
    decode_size: int | None = None
    decoder_checkpointing: bool = False
    bf16: bool = (
        False  # torch.autocast(bf16) around the step, fp32 master weights (trainer.precision=bf16-mixed)
    )
    t_max: int = 500
    every_n_steps: int = 1
    cache_latents: bool = False  # train.cache_latents (the training default is true)

    def loss(self, extractor: FrozenImageModel) -> SpuriousFeatureSimilarityLoss:
        return SpuriousFeatureSimilarityLoss(
            extractor,
            t_max=self.t_max,
            every_n_steps=self.every_n_steps,
            decode_size=self.decode_size,
            decoder_checkpointing=self.decoder_checkpointing,
            decode_at_extractor_size=self.decode_at_extractor_size,
        )


EXACT = Setting()
# conf/loss/fast.yaml is the exact computation: the t_max gate and decoding only the gated samples are already
# defaults, and no shortcut that changes the decode kept fidelity (Fidelity in BENCHMARKS.md).
FAST = EXACT
LOW_MEMORY = Setting(decoder_checkpointing=True)  # conf/loss/low_memory.yaml
FAST_KEY = "SFSL exact (loss=default = loss=fast)"
LOW_MEMORY_KEY = "SFSL decoder checkpointing (loss=low_memory)"
APPROX_KEY = "SFSL decode at f input (loss=approx)"
EVERY_2_KEY = "SFSL exact, every 2nd step (loss.sfsl.every_n_steps=2), latents cached"
BASE_CACHED_KEY = "lambda_sfsl=0, latents cached"
FAST_CACHED_KEY = "SFSL exact (loss=fast), latents cached"
SETTINGS = {
    "lambda_sfsl=0": Setting(lambda_sfsl=0.0),
    FAST_KEY: FAST,
    APPROX_KEY: Setting(decode_at_extractor_size=True),
    LOW_MEMORY_KEY: LOW_MEMORY,
    "SFSL exact, bf16 autocast": Setting(bf16=True),
    "SFSL decoder checkpointing, bf16 autocast": dataclasses.replace(LOW_MEMORY, bf16=True),
    BASE_CACHED_KEY: Setting(lambda_sfsl=0.0, cache_latents=True),
    FAST_CACHED_KEY: Setting(cache_latents=True),
    EVERY_2_KEY: Setting(every_n_steps=2, cache_latents=True),
}


def make_batch(parts: SDParts, resolution: int, n_instance: int = 1, seed: int = 0) -> dict:
    """instance + prior examples (data.batch_size = n_instance), random pixels, real prompts."""
    g = torch.Generator().manual_seed(seed)
    ids, cls_ids = tokenize(parts.tokenizer, PROMPT), tokenize(parts.tokenizer, CLASS_PROMPT)
    items = [
        {
            "instance": torch.rand(3, resolution, resolution, generator=g) * 2 - 1,
            "instance_ids": ids,
            "pair": i,
            "class": torch.rand(3, resolution, resolution, generator=g) * 2 - 1,
            "class_ids": cls_ids,
            "instance_key": f"instance/{i}",  # used only by a module with cache_latents
            "class_key": f"class/{i}",
        }
        for i in range(n_instance)
    ]
    return collate(items)


def reference_images(resolution: int, n: int = 3) -> torch.Tensor:  # (R, 3, H, W) in [0, 1]
    return torch.rand(n, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))


def sfsl_for(parts: SDParts, extractor: FrozenImageModel, setting: Setting) -> SpuriousFeatureSimilarityLoss:
    """The SFSL of a setting as SpurgenModule holds it: bound to the VAE and schedule, m computed from the
    references (outside any timed call)."""
    loss = setting.loss(extractor).bind(parts.vae, parts.noise_scheduler)
    loss.set_reference_images(reference_images(parts.resolution))
    loss.prepare_target()
    return loss


def make_module(
    parts: SDParts, extractor: FrozenImageModel, setting: Setting, resolution: int
) -> SpurgenModule:
    sfsl = None
    if setting.lambda_sfsl > 0:
        sfsl = setting.loss(extractor)
        sfsl.set_reference_images(reference_images(resolution))
    objective = SpurgenObjective(lambda_prior=1.0, lambda_sfsl=setting.lambda_sfsl, sfsl=sfsl)
    module = SpurgenModule(
        parts,
        objective,
        partial(make_optimizer, name="adamw", weight_decay=1e-2, betas=(0.9, 0.999), eps=1e-8),
        ModuleSettings(
            lr_unet=1e-6,
            lr_text_encoder=1e-6,
            train_text_encoder=True,
            seed=0,
            on_nonfinite="stop",
            cache_latents=setting.cache_latents,
        ),
    )
    if sfsl is not None:
        sfsl.prepare_target()  # m once, outside any timed step (the module does it at fit start)
    return module


@contextmanager
def fixed_timesteps(module: SpurgenModule, t: torch.Tensor) -> Iterator[None]:
    """While active, module.compute_losses uses t instead of drawing it (t is the step's last draw, so the
    noise is unchanged). The bench's own seam, like tests/helpers.py: no test hook in the module's API."""
    module.sample_timesteps = lambda n, generator: t
    try:
        yield
    finally:
        del module.sample_timesteps


def autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def spurgen_step(
    module: SpurgenModule, opt: torch.optim.Optimizer, batch: dict, bf16: bool, fixed_t: bool = True
) -> Callable[[], int]:
    """SpurgenModule.compute_losses + backward + clip (trainer default 1.0) + AdamW. fixed_t: t = T_ACTIVE
    (the term runs); else t is drawn from the step's seeded generator as in training. Returns the number of
    samples the SFSL was computed on."""
    t = torch.tensor(T_ACTIVE[:1] * int(batch["n_instance"]) + T_ACTIVE[1:] * int(batch["n_instance"]))
    counter = iter(range(10**9))

    def step() -> int:
        i = next(counter)
        with autocast(bf16), fixed_timesteps(module, t) if fixed_t else nullcontext():
            res = module.compute_losses(batch, module.step_generator(i), i)
        res.total.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return int(res.sfsl_samples)

    return step


def plain_step(parts: SDParts, opt: torch.optim.Optimizer, batch: dict) -> Callable[[], None]:
    """The same math as spurgen_step with lambda_sfsl = 0, written as a bare PyTorch loop."""
    vae, unet, te, sched = parts.vae, parts.unet, parts.text_encoder, parts.noise_scheduler
    n = int(batch["n_instance"])
    t = torch.tensor(T_ACTIVE[:1] * n + T_ACTIVE[1:] * n)
    counter = iter(range(10**9))

    def step() -> None:
        g = torch.Generator().manual_seed(next(counter))
        with torch.no_grad():
            dist = vae.encode(batch["pixel_values"]).latent_dist
            z = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)) * vae.config.scaling_factor
        eps = torch.randn(z.shape, generator=g)
        z_t = sched.add_noise(z, eps, t)
        out = unet(z_t, t, te(batch["input_ids"])[0]).sample
        target = denoising_target(sched, z, eps, t)
        loss = F.mse_loss(out[:n], target[:n]) + F.mse_loss(out[n:], target[n:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g_ in opt.param_groups for p in g_["params"]], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def sfsl_term(
    parts: SDParts,
    extractor: FrozenImageModel,
    setting: Setting,
    n: int,
    n_gated: int,
    decode_all: bool = False,
) -> Callable[[], None]:
    """L_SFSL alone, forward + backward to a leaf model output (N, 4, h, w). decode_all=True decodes every
    sample and masks afterwards: the cost sfsl.py avoids by indexing with the gate before decoding."""
    h = parts.unet.config.sample_size
    g = torch.Generator().manual_seed(0)
    z_t, eps_hat = torch.randn(n, 4, h, h, generator=g), torch.randn(n, 4, h, h, generator=g)
    t = torch.tensor([250] * n_gated + [750] * (n - n_gated))
    loss = sfsl_for(parts, extractor, setting)
    ab = parts.noise_scheduler.alphas_cumprod

    def step() -> None:
        out = eps_hat.clone().requires_grad_(True)
        with autocast(setting.bf16):
            if decode_all:
                from spurgen.losses import decode_to_unit

                keep = loss.gate(t)
                z0 = predict_z0(z_t, out, ab[t], "epsilon")
                size = extractor.input_size if setting.decode_at_extractor_size else setting.decode_size
                x = decode_to_unit(parts.vae, z0, size, setting.decoder_checkpointing)[keep]
                value = loss.distance_to_reference(loss.features(x))
            else:
                value = loss(z_t, out, t)
        value.backward()

    return step
