"""The sections of experiments/bench.py; each builds its parts, times interleaved configurations, returns
numbers. `memory_job` builds one configuration for a fresh child process."""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments.bench_setup import (
    APPROX_KEY,
    BASE_CACHED_KEY,
    EVERY_2_KEY,
    EXACT,
    FAST_CACHED_KEY,
    FAST_KEY,
    LOW_MEMORY,
    LOW_MEMORY_KEY,
    SETTINGS,
    SIZES,
    Setting,
    autocast,
    make_batch,
    make_module,
    plain_step,
    sfsl_for,
    sfsl_term,
    spurgen_step,
)

Timer = Callable[..., dict]
PROPORTIONAL_STEP = ("lambda_sfsl=0", FAST_KEY, LOW_MEMORY_KEY, APPROX_KEY, BASE_CACHED_KEY, FAST_CACHED_KEY)
# Real costs on this kind of CPU (../shared/ENVIRONMENT.md; ResNet-50 measured here, random init, batch 1).
REAL = {"unet": 9.5, "vae_decode": 29.0, "resnet50_224": None}


def summarize(values: list[float]) -> dict:
    """median, p10, p90, mean (seconds) and n."""
    s = sorted(values)

    def q(f: float) -> float:
        return s[min(len(s) - 1, int(round(f * (len(s) - 1))))]

    return {
        "median": statistics.median(s),
        "p10": q(0.1),
        "p90": q(0.9),
        "mean": statistics.fmean(s),
        "n": len(s),
    }


def _optimizer(parts) -> torch.optim.Optimizer:
    """spurgen's optimiser (spurgen/optim.py: fused AdamW where it runs), shared by every loop compared."""
    from spurgen.optim import make_optimizer

    params = [p for m in (parts.unet, parts.text_encoder) for p in m.parameters() if p.requires_grad]
    return make_optimizer([{"params": params}], "adamw", 1e-2, (0.9, 0.999), 1e-8, lr=1e-6)


def cost_ratios(size: str, timer: Timer, repeats: int) -> dict:
    """Forward costs at batch 1 (no grad): UNet at the native latent, VAE decode to full size, f."""
    import timm

    spec = SIZES[size]
    parts, ex = spec.parts(), spec.extractor()
    h = parts.unet.config.sample_size
    z, t = torch.randn(1, 4, h, h), torch.tensor([500])
    enc = torch.randn(1, 8, parts.text_encoder.config.hidden_size)
    x = torch.rand(1, 3, spec.resolution, spec.resolution)
    fns = {
        "unet": lambda: parts.unet(z, t, enc),
        "vae_decode": lambda: parts.vae.decode(z),
        "extractor": lambda: ex.features(x),
    }
    if size == "proportional":
        r50 = timm.create_model("resnet50").eval()
        x224 = torch.rand(1, 3, 224, 224)
        fns["resnet50_224"] = lambda: r50(x224)
    with torch.no_grad():
        res = timer(fns, repeats)
    return {k: v["median"] for k, v in res.items()}


def training_steps(size: str, timer: Timer, repeats: int, smoke: bool = False) -> dict:
    """(a) one optimiser step per SFSL setting at fixed t (the instance sample passes the gate), and (b)
    the same lambda_sfsl = 0 math as a plain PyTorch loop."""
    spec = SIZES[size]
    parts, ex = spec.parts(), spec.extractor()
    batch, opt = make_batch(parts, spec.resolution), _optimizer(parts)
    names = (
        [n for n in SETTINGS if n != EVERY_2_KEY] if size == "tiny" and not smoke else list(PROPORTIONAL_STEP)
    )
    fns = {
        n: spurgen_step(make_module(parts, ex, SETTINGS[n], spec.resolution), opt, batch, SETTINGS[n].bf16)
        for n in names
    }
    fns["plain loop, lambda_sfsl=0"] = plain_step(parts, opt, batch)
    return timer(fns, repeats)


def training_run(size: str, repeats: int, smoke: bool = False) -> dict:
    """(a) as training runs (latents cached, the default): t drawn from each step's seeded generator (so the
    t_max gate skips the term on about half the steps), lambda_sfsl = 0, loss=fast and the term on every 2nd
    step interleaved on the same step numbers (the same t).
    Reported as means over the steps, with the fraction of steps on which the term ran."""
    spec = SIZES[size]
    parts, ex = spec.parts(), spec.extractor()
    batch, opt = make_batch(parts, spec.resolution), _optimizer(parts)
    names = (BASE_CACHED_KEY, FAST_CACHED_KEY, EVERY_2_KEY)  # the training defaults cache latents
    fns = {
        n: spurgen_step(
            make_module(parts, ex, SETTINGS[n], spec.resolution), opt, batch, False, fixed_t=False
        )
        for n in names
    }
    steps = 2 if smoke else max(2, 2 * repeats)
    times: dict[str, list[float]] = {n: [] for n in names}
    ran: list[bool] = []
    for n in names:  # warm-up: each module's step number 0
        fns[n]()
    for r in range(steps):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            samples = fns[n]()
            times[n].append(time.perf_counter() - t0)
            if n == FAST_CACHED_KEY:
                ran.append(samples > 0)
    on = [v for v, a in zip(times[FAST_CACHED_KEY], ran, strict=True) if a]
    off = [v for v, a in zip(times[FAST_CACHED_KEY], ran, strict=True) if not a]
    return {
        **{n: summarize(v) for n, v in times.items()},
        "steps": steps,
        "term_ran": sum(ran),
        "fast_mean_term_ran": statistics.fmean(on) if on else None,
        "fast_mean_term_skipped": statistics.fmean(off) if off else None,
    }


def sfsl_terms(size: str, timer: Timer, repeats: int) -> dict:
    """L_SFSL alone (forward + backward to the model output) for each shortcut, and gate-then-decode vs
    decode-then-gate with 1 of 4 instance samples under t_max (at f's input size)."""
    spec = SIZES[size]
    parts, ex = spec.parts(), spec.extractor()
    at_f = Setting(decode_at_extractor_size=True)
    fns = {
        "exact (1 sample; loss=fast)": sfsl_term(parts, ex, EXACT, 1, 1),
        "decoder checkpointing (loss=low_memory)": sfsl_term(parts, ex, LOW_MEMORY, 1, 1),
        "decode at f input (loss=approx)": sfsl_term(parts, ex, at_f, 1, 1),
        "4 samples, 1 gated: decode gated only (sfsl.py)": sfsl_term(parts, ex, at_f, 4, 1),
        "4 samples, 1 gated: decode all, then mask": sfsl_term(parts, ex, at_f, 4, 1, decode_all=True),
    }
    return timer(fns, repeats)


class _StepClock:
    """Lightning callback + instrumented module: the wall time between consecutive batch starts (all
    framework work included), and within each step the time spent in spurgen's own math (training_step,
    backward, gradient clipping, the optimiser's update). Their difference is the time Lightning itself
    takes per step, measured inside the same steps, so it is free of the run-to-run noise of an A/B."""

    def __init__(self) -> None:
        from lightning.pytorch.callbacks import Callback

        clock = self

        class _CB(Callback):
            def on_train_batch_start(self, *_a) -> None:
                clock.marks.append(time.perf_counter())
                clock.math.append(0.0)

            def on_train_end(self, *_a) -> None:
                clock.marks.append(time.perf_counter())

        self.marks: list[float] = []
        self.math: list[float] = []
        self.callback = _CB()

    def timed(self, fn: Callable) -> Callable:
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.math[-1] += time.perf_counter() - t0

        return wrapper

    def instrument(self, module) -> None:
        """Time the module's math; the optimiser's own update is timed apart from Lightning's closure."""
        for name in ("training_step", "backward", "configure_gradient_clipping"):
            setattr(module, name, self.timed(getattr(module, name)))
        configure = module.configure_optimizers

        def configure_optimizers():
            opt = configure()
            update = opt.step
            timed_update = self.timed(update)

            def step(closure=None):
                loss = closure() if closure is not None else None  # Lightning's closure: timed inside
                timed_update()
                return loss

            opt.step = step
            return opt

        module.configure_optimizers = configure_optimizers

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.marks[1:-1], self.marks[2:], strict=False)]  # drop the first step

    def own(self) -> list[float]:
        """Per step: wall time minus the time in spurgen's math = what Lightning adds."""
        return [w - m for w, m in zip(self.steps(), self.math[1:], strict=False)]


def framework(size: str, repeats: int, block: int = 8) -> dict:
    """(b) spurgen's Lightning fit against a plain loop over the same DataLoader, lambda_sfsl = 0, per step:
    alternating blocks of `block` steps (the first step of each block dropped, the order swapped each block),
    and Lightning's own time per step measured inside the fit (_StepClock)."""
    import lightning as L
    from torch.utils.data import DataLoader

    from spurgen.data.dataset import collate

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    spec = SIZES[size]
    parts, ex = spec.parts(), spec.extractor()
    item = {
        "instance": torch.rand(3, spec.resolution, spec.resolution) * 2 - 1,
        "instance_ids": make_batch(parts, spec.resolution)["input_ids"][0],
        "pair": 0,
        "class": torch.rand(3, spec.resolution, spec.resolution) * 2 - 1,
        "class_ids": make_batch(parts, spec.resolution)["input_ids"][1],
    }
    loader = DataLoader([item] * 10_000, batch_size=1, collate_fn=collate)
    opt = _optimizer(parts)
    block = max(1, min(block, repeats))  # smoke (1 repeat): one fit of 2 steps
    lit: list[float] = []
    own: list[float] = []
    plain: list[float] = []

    def run_lightning() -> None:
        module = make_module(parts, ex, SETTINGS["lambda_sfsl=0"], spec.resolution)
        clock = _StepClock()
        clock.instrument(module)
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=block + 1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            gradient_clip_val=1.0,
            callbacks=[clock.callback],
            num_sanity_val_steps=0,
        )
        trainer.fit(module, loader)
        lit.extend(clock.steps())
        own.extend(clock.own())

    def run_plain() -> None:
        step = _plain_loader_step(parts, opt, iter(loader))
        for i in range(block + 1):
            t0 = time.perf_counter()
            step()
            if i:
                plain.append(time.perf_counter() - t0)

    for b in range(math.ceil(repeats / block)):
        for run in (run_lightning, run_plain) if b % 2 == 0 else (run_plain, run_lightning):
            run()
    return {
        "Lightning fit (spurgen module)": summarize(lit),
        "plain PyTorch loop": summarize(plain),
        "Lightning's own time in a fit step": summarize(own),
    }


def _plain_loader_step(parts, opt, batches) -> Callable[[], None]:
    def step() -> None:
        plain_step(parts, opt, next(batches))()

    return step


def _write_images(folder: Path, n: int, res: int) -> list[Path]:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(n):
        arr = (torch.rand(res, res, 3, generator=g) * 255).to(torch.uint8).numpy()
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def _classifiers(size: str) -> dict:
    spec = SIZES[size]
    out = {spec.extractor().name: spec.extractor()}
    if size == "proportional":
        import timm

        from spurgen.models.extractors import FrozenImageModel

        out["resnet50 (full width, 224 px)"] = FrozenImageModel(
            timm.create_model("resnet50"), "fc", 224, False, name="resnet50"
        )
    return out


def naive_predict(model, paths: list[Path]) -> None:
    """One image at a time: decode, resize, logits, softmax (under no_grad)."""
    from spurgen.data.images import load_rgb
    from spurgen.eval.predict import resize_image, to_tensor

    for p in paths:
        x = resize_image(to_tensor(load_rgb(p)), model.input_size, model.interpolation, None)
        with torch.no_grad():
            model.logits(x[None]).softmax(dim=1)


def spurgen_eval_model(model):
    """The classifier as `spurgen evaluate` runs it: a copy placed with eval.channels_last (the default)."""
    import copy

    from spurgen.eval.predict import place

    fast = copy.deepcopy(model)
    place([fast], torch.device("cpu"), True)
    return fast


def gemm_gflops(timer: Timer, repeats: int = 5) -> float:
    """This machine's float32 matrix-multiply rate (GFLOP/s, 2048^3), the ceiling for convolutions here."""
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    return 2 * 2048**3 / timer({"gemm": lambda: a @ b}, repeats)["gemm"]["median"] / 1e9


def gflop_per_image(model) -> float:
    """Forward FLOPs of one image at the model's input size (torch's FLOP counter: convolutions, matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, model.input_size, model.input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.logits(x)
    return counter.get_total_flops() / 1e9


def evaluation(size: str, timer: Timer, repeats: int, smoke: bool = False) -> dict:
    """(c) spurgen.eval.predict.predict_set (batched, inference_mode, channels-last: what `spurgen evaluate`
    runs) vs the naive loop (the model as built, one image at a time), per classifier; with the FLOP rate
    each reaches against this machine's matrix-multiply rate."""
    from spurgen.eval.predict import predict_set

    spec = SIZES[size]
    folder = Path(tempfile.mkdtemp(prefix="spurgen-bench-eval-"))
    paths = _write_images(folder, 8 if smoke else spec.eval_images, spec.resolution)
    out: dict = {"gemm_gflops": gemm_gflops(timer), "classifiers": {}}
    for name, model in _classifiers(size).items():
        n = len(paths) if "full width" not in name else 8
        fast = spurgen_eval_model(model)
        fns = {
            "batched (predict_set)": lambda m=fast, n=n: predict_set([m], paths[:n], 0, batch_size=32),
            "naive loop": lambda m=model, n=n: naive_predict(m, paths[:n]),
        }
        res = timer(fns, repeats)
        out["classifiers"][name] = {
            "gflop_per_image": gflop_per_image(model),
            **{k: {**v, "images": n} for k, v in res.items()},
        }
    return out


def generation(size: str, timer: Timer, repeats: int, smoke: bool = False) -> dict:
    """(d) spurgen.pipeline.sample: images/s with classifier-free guidance (DDIM)."""
    from spurgen.pipeline import SampleSettings, make_pipeline, sample

    spec = SIZES[size]
    parts = spec.parts()
    pipe = make_pipeline(parts.unet, parts.text_encoder, parts.tokenizer, parts.vae, parts.sample_scheduler)
    n, steps = (1, 2) if smoke else (spec.gen_images, spec.gen_steps)
    res = timer(
        {
            "sample": lambda: sample(
                pipe,
                ["a photo of a sks flower"] * n,
                list(range(n)),
                SampleSettings(steps, 3.0, spec.resolution, "bird"),
            )
        },
        repeats,
    )
    return {"images": n, "steps": steps, **res["sample"]}


def _unet_sfsl_grad(parts, ex, setting: Setting, z_t, t, enc) -> torch.Tensor:
    loss = sfsl_for(parts, ex, setting)  # references: reference_images(resolution), 3 seeded random images
    parts.unet.zero_grad(set_to_none=True)
    with autocast(setting.bf16):
        out = parts.unet(z_t, t, enc).sample
        value = loss(z_t, out, t)
    value.backward()
    return torch.cat([p.grad.flatten() for p in parts.unet.parameters() if p.grad is not None])


def fidelity(size: str, smoke: bool = False) -> dict:
    """Cosine between the UNet gradient of L_SFSL under each setting and under the exact computation, on
    fixed inputs: 3 instance samples at t = 100, 250, 400 (z from random images through the VAE)."""
    spec = SIZES[size]
    parts, ex = spec.parts(), spec.extractor()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = F.avg_pool2d(torch.rand(3, 3, spec.resolution, spec.resolution, generator=g), 5, 1, 2) * 2 - 1
        z = parts.vae.encode(x).latent_dist.mean * parts.vae.config.scaling_factor
        t = torch.tensor([100, 250, 400])
        z_t = parts.noise_scheduler.add_noise(z, torch.randn(z.shape, generator=g), t)
        enc = parts.text_encoder(make_batch(parts, spec.resolution, 3)["input_ids"][:3])[0]
    exact = _unet_sfsl_grad(parts, ex, EXACT, z_t, t, enc)
    out = {}
    full, f_in = spec.resolution, ex.input_size
    cases = {LOW_MEMORY_KEY.removeprefix("SFSL "): LOW_MEMORY}
    # decoding z0_hat resized to smaller latents: f's input / 2, f's input (loss=approx), then on towards full
    for px in sorted({max(8, f_in // 2), f_in, (f_in + full) // 2, full - full // 8}):
        if px < full:
            label = " (loss=approx)" if px == f_in else ""
            cases[f"decode at {px} px of {full}{label}"] = Setting(decode_size=px)
    cases["exact, bf16 autocast"] = Setting(bf16=True)
    cases["decoder checkpointing, bf16 autocast"] = Setting(decoder_checkpointing=True, bf16=True)
    if smoke:
        cases = {LOW_MEMORY_KEY.removeprefix("SFSL "): LOW_MEMORY}
    elif size != "tiny":  # bf16 is emulated on this CPU (no avx512_bf16): minutes per gradient at this size
        cases = {k: v for k, v in cases.items() if not v.bf16}
    for name, setting in cases.items():
        grad = _unet_sfsl_grad(parts, ex, setting, z_t, t, enc)
        out[name] = {
            "cosine": float(F.cosine_similarity(grad, exact, dim=0)),
            "norm_ratio": float(grad.norm() / exact.norm()),
        }
    return out


MEMORY_STEP = ("lambda_sfsl=0", FAST_KEY, APPROX_KEY, LOW_MEMORY_KEY)


def memory_jobs(size: str, smoke: bool = False) -> list[tuple[str, str, str]]:
    steps = (FAST_KEY,) if smoke else MEMORY_STEP
    jobs = [(size, "step", n) for n in steps]
    if not smoke:
        jobs += [
            (size, "eval", "batched (predict_set)"),
            (size, "eval", "naive loop"),
            (size, "gen", "sample"),
        ]
    return jobs


def memory_job(size: str, kind: str, name: str) -> Callable[[], object]:
    """Build one configuration (in a fresh child) and return the callable whose peak memory is read."""
    spec = SIZES[size]
    if kind == "step":
        parts, ex = spec.parts(), spec.extractor()
        module = make_module(parts, ex, SETTINGS[name], spec.resolution)
        return spurgen_step(
            module, _optimizer(parts), make_batch(parts, spec.resolution), SETTINGS[name].bf16
        )
    if kind == "eval":
        from spurgen.eval.predict import predict_set

        model = spec.extractor()
        paths = _write_images(
            Path(tempfile.mkdtemp(prefix="spurgen-bench-mem-")), spec.eval_images, spec.resolution
        )
        if name.startswith("batched"):
            fast = spurgen_eval_model(model)
            return lambda: predict_set([fast], paths, 0, batch_size=32)
        return lambda: naive_predict(model, paths)
    from spurgen.pipeline import SampleSettings, make_pipeline, sample

    parts = spec.parts()
    pipe = make_pipeline(parts.unet, parts.text_encoder, parts.tokenizer, parts.vae, parts.sample_scheduler)
    n = spec.gen_images
    settings = SampleSettings(spec.gen_steps, 3.0, spec.resolution)
    return lambda: sample(pipe, ["a photo of a sks flower"] * n, list(range(n)), settings)
