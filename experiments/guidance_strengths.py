"""The probe that picked experiment=mini_methods' guidance strengths (conf/method/mini/guidance_*.yaml).

    python -m experiments.guidance_strengths --class nematode --strengths 0,0.3,1,3,10,30 --images 16

The mini model, unfine-tuned, draws `--images` images with method=guidance's prompt (the class prompt) and
generation seeds generation_seed(0, i), 20 DDIM steps at guidance scale 4 (experiment/mini.yaml's settings),
guided at the last `--last-k` steps with L_SFSL through Lite0 and the class's references (spurgen.methods,
the generate stage's own path). Per strength it prints Lite0's top-1 rate for the class, the mean cosine of
Lite0's features to the references' normalised mean, the wall time and the extractor passes. Lite0 is the
guiding extractor: these rates are the training extractor's, not held-out evidence.

Measured on 2026-12-07 (one thread, a shared 2-core machine, 16 images, K = 10). The strengths were picked with
a first version of this probe whose negative prompt was the class name alone: nematode 0.31 / 0.81 / 0.94 / 1.00 /
1.00 / 1.00 at s = 0 / 0.3 / 1 / 3 / 10 / 30, matchstick 0.00 / 0.25 / 0.38 / 0.25 at s = 0 / 3 / 10 / 30; about
30 s for 16 guided images against 10 s unguided. This script uses a run's negative prompt (the class name and
its synonyms) and gives nematode 0.25 at s = 0 and 0.94 at s = 3.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from spurgen.torch_threads import torch_threads


def probe(cls: str, strengths: list[float], n: int, last_k: int) -> list[dict]:
    """One line per strength: Lite0's rate, the similarity, seconds and extractor passes."""
    from hydra import compose, initialize_config_dir

    from spurgen.build import build
    from spurgen.config import CONF_DIR, register_configs, register_resolvers
    from spurgen.data.dataset import load_training_images
    from spurgen.methods import GuidedSampling
    from spurgen.pipeline import SampleSettings, make_pipeline, sample
    from spurgen.prompts import negative_prompt
    from spurgen.seeds import generation_seed
    from spurgen.validation import resolve_references, validate

    register_configs()
    register_resolvers()
    overrides = ["method=guidance", f"class={cls}", f"method.guidance.last_k={last_k}"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = validate(compose("config", overrides=overrides))
    parts = build(cfg.model)
    pipe = make_pipeline(parts.unet, parts.text_encoder, parts.tokenizer, parts.vae, parts.sample_scheduler)
    refs = load_training_images(resolve_references(cfg), parts.resolution, cfg.data.center_crop)
    f = build(cfg.feature_extractor)
    gen = cfg.generate
    settings = SampleSettings(
        gen.num_inference_steps, gen.guidance_scale, parts.resolution, negative_prompt(cfg.target)
    )
    prompts, seeds = [cfg.data.instance_prompt] * n, [generation_seed(0, i) for i in range(n)]
    out = []
    for s in strengths:
        sfsl = build(cfg.loss.sfsl, extractor=f)
        sfsl.set_reference_images(refs)
        guided = GuidedSampling(build(cfg.method.guidance, strength=s), sfsl).bind(pipe)
        started = time.perf_counter()
        with guided.attached(pipe.scheduler):
            images = sample(pipe, prompts, seeds, settings)
        seconds = time.perf_counter() - started
        x = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 for im in images])
        with torch.no_grad():
            rate = float((f.logits(x).argmax(1) == cfg.target.index).float().mean())
            m = F.normalize(sfsl.ref_features, dim=1).mean(0)
            sim = float(F.cosine_similarity(f.features(x), m.expand(n, -1)).mean())
        out.append({"strength": s, "rate_lite0": rate, "similarity": sim, "seconds": round(seconds, 1),
                    "passes": sfsl.passes.as_dict()})  # fmt: skip
        print(f"{cls} s={s:g} K={last_k}: Lite0 rate {rate:.2f}, similarity {sim:.3f}, {seconds:.1f} s, "
              f"extractor passes {sfsl.passes.as_dict()}", flush=True)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--class", dest="cls", default="nematode", help="a class file with shipped references")
    ap.add_argument("--strengths", default="0,0.3,3,10", help="comma-separated guidance strengths")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--last-k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    with torch_threads(args.threads):
        probe(args.cls, [float(s) for s in args.strengths.split(",")], args.images, args.last_k)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
