"""The method group (conf/method, spurgen/methods): the guidance step against a hand computation, its schedule and
strength 0 as the plain sampler bit for bit; textual inversion leaves every other weight bit for bit; the cost
counters in run.json are exact; methods never share a run identity; experiment=mini_methods sweeps what it
says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from spurgen.build import build
from spurgen.config import CONF_DIR
from spurgen.errors import ConfigError
from spurgen.identity import baseline_identity, run_identity
from spurgen.methods import GuidedSampling, SFSLGuidance
from spurgen.validation import validate

from .conftest import FAST, run_cli
from .helpers import TINY

METHODS = sorted(p.stem for p in (Path(CONF_DIR) / "method").glob("*.yaml"))


def load(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _guided(tiny_parts, tiny_extractor, strength=2.0, last_k=2, schedule="constant", distance="cosine"):
    """A GuidedSampling on the tiny pipeline: the tiny extractor, two random references in [0, 1]."""
    from spurgen.losses import SpuriousFeatureSimilarityLoss
    from spurgen.pipeline import make_pipeline

    p = tiny_parts
    pipe = make_pipeline(p.unet, p.text_encoder, p.tokenizer, p.vae, p.sample_scheduler)
    sfsl = SpuriousFeatureSimilarityLoss(tiny_extractor, distance=distance)
    sfsl.set_reference_images(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    return pipe, GuidedSampling(SFSLGuidance(strength, last_k, schedule), sfsl).bind(pipe)


def test_guidance_step_matches_a_hand_computation(tiny_parts, tiny_extractor):
    """z_t <- z_t - s·w·grad_{z_t} sum_i (1 - cos(phi(x0_hat_i), m)), eps_hat fixed, written out by hand here:
    z0_hat = (z_t - sqrt(1-ab)·eps)/sqrt(ab), x0_hat = (D(z0_hat/s)+1)/2, m = mean of normalised phi(refs)."""
    pipe, guided = _guided(tiny_parts, tiny_extractor, strength=3.0)
    sched = pipe.scheduler
    sched.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    z_t, eps = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    t = sched.timesteps[-1]

    f, vae = tiny_extractor, pipe.vae
    with torch.no_grad():
        m = F.normalize(f.features(guided.sfsl.reference_images), dim=1).mean(0)
    z = z_t.clone().requires_grad_(True)
    ab = sched.alphas_cumprod[int(t)]
    z0 = (z - (1 - ab).sqrt() * eps) / ab.sqrt()
    x0 = (vae.decode(z0 / vae.config.scaling_factor).sample + 1) / 2
    loss = (1 - F.cosine_similarity(f.features(x0), m.expand(2, -1), dim=1)).sum()
    (hand,) = torch.autograd.grad(loss, z)

    grad = guided.gradient(z_t, eps, t)
    torch.testing.assert_close(grad, hand, rtol=1e-4, atol=1e-7)

    seen = {}

    def plain_step(model_output, timestep, sample, *args, **kwargs):
        seen["sample"] = sample
        return "stepped"

    sched.step = plain_step  # the "scheduler's own" step, as attached() finds it
    with guided.attached(sched):
        sched.set_timesteps(4)
        for i, ts in enumerate(sched.timesteps):
            assert sched.step(eps, ts, z_t) == "stepped"
            want = z_t - 3.0 * hand if i == 3 else z_t  # last_k=2: steps 2 and 3; check the last exactly
            if i in (0, 1):
                assert torch.equal(seen["sample"], z_t)  # outside the last K: untouched, bit for bit
            if i == 3:
                torch.testing.assert_close(seen["sample"], want, rtol=1e-4, atol=1e-6)
    assert sched.step is plain_step  # attached() put back what it found
    # the direction: a small move against the gradient lowers L_SFSL
    with torch.no_grad():

        def value(zz):
            z0 = (zz - (1 - ab).sqrt() * eps) / ab.sqrt()
            x0 = (vae.decode(z0 / vae.config.scaling_factor).sample + 1) / 2
            return float((1 - F.cosine_similarity(f.features(x0), m.expand(2, -1), dim=1)).sum())

        step = 1e-2 / float(hand.abs().max())
        assert value(z_t - step * hand) < value(z_t) < value(z_t + step * hand)


@pytest.mark.parametrize(
    ("schedule", "weights"),
    [("constant", [0, 0, 0, 1.0, 1.0, 1.0]), ("linear", [0, 0, 0, 1 / 3, 2 / 3, 1.0])],
)
def test_guidance_schedule_weights_the_last_k_steps(schedule, weights):
    g = SFSLGuidance(1.0, 3, schedule)
    assert [g.weight(i, 6) for i in range(6)] == pytest.approx(weights)
    assert [SFSLGuidance(1.0, 10, schedule).weight(i, 2) > 0 for i in range(2)] == [True, True]  # K > n: all
    with pytest.raises(ConfigError, match="method.guidance.schedule"):
        SFSLGuidance(1.0, 3, "cosine")


def test_guidance_calls_per_sampling_run_and_strength_zero_is_the_plain_sampler(tiny_parts, tiny_extractor):
    """Through the real pipeline: s = 0 gives the unguided images bit for bit and never runs f; s > 0 takes a
    gradient at exactly the last K steps of every sampling run (the counter restarts with each run) and moves
    the images."""
    from spurgen.pipeline import SampleSettings, sample

    settings = SampleSettings(steps=4, guidance=3.0, resolution=32, batch_size=2)
    prompts, seeds = ["a photo of a flower"] * 2, [0, 1]
    pipe, zero = _guided(tiny_parts, tiny_extractor, strength=0.0)
    plain = [np.asarray(im) for im in sample(pipe, prompts, seeds, settings)]
    before = zero.sfsl.passes.as_dict()
    with zero.attached(pipe.scheduler):
        guided0 = [np.asarray(im) for im in sample(pipe, prompts, seeds, settings)]
    assert all(np.array_equal(a, b) for a, b in zip(plain, guided0, strict=True))
    assert zero.sfsl.passes.as_dict() == before and zero.guided_steps == 0
    _, strong = _guided(tiny_parts, tiny_extractor, strength=50.0, last_k=3)
    with strong.attached(pipe.scheduler):
        moved = [np.asarray(im) for im in sample(pipe, prompts, seeds, settings)]
        sample(pipe, prompts[:1], seeds[:1], settings)  # a second run: its own last 3 steps
    assert strong.guided_steps == 6
    assert strong.sfsl.passes.as_dict() == {"forward": 2 + 3 * 2 + 3 * 1, "backward": 3 * 2 + 3 * 1}
    assert any(not np.array_equal(a, b) for a, b in zip(plain, moved, strict=True))
    assert "step" not in vars(pipe.scheduler)  # the scheduler's own step again


def _run(tmp_path: Path, *overrides: str) -> Path:
    run = tmp_path / "run"
    code = run_cli([*TINY, *FAST, *overrides, "stages=[train,generate]", f"hydra.run.dir={run}"])
    assert code == 0
    return run


def test_textual_inversion_trains_only_its_token(tmp_path):
    """After a tiny run every weight of the saved pipeline but the new token's embedding row is bit for bit the
    base model's: the UNet, the VAE, the text encoder and every other embedding row."""
    from diffusers import StableDiffusionPipeline

    run = _run(
        tmp_path, "method=textual_inversion", "generate.num_images=1", "generate.num_inference_steps=2"
    )
    base = build(load(*TINY).model)
    pipe = StableDiffusionPipeline.from_pretrained(run / "pipeline", safety_checker=None)
    token = pipe.tokenizer.convert_tokens_to_ids("<spurgen-v>")
    assert token == len(base.tokenizer) and len(pipe.tokenizer) == len(base.tokenizer) + 1
    assert "<spurgen-v>" in json.loads((run / "run.json").read_text())["instance_prompt"]
    for name, a, b in (("unet", base.unet, pipe.unet), ("vae", base.vae, pipe.vae)):
        for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(x, y), f"{name}.{k}"
    te_base, te = base.text_encoder.state_dict(), pipe.text_encoder.state_dict()
    (emb_key,) = [k for k in te_base if k.endswith("token_embedding.weight")]
    for k, x in te_base.items():
        assert torch.equal(te[k][:token] if k == emb_key else te[k], x), f"text_encoder.{k}"
    init = base.tokenizer("flower", add_special_tokens=False).input_ids
    assert not torch.equal(te[emb_key][token], te_base[emb_key][init].mean(0))  # the token itself moved


def test_cost_counters_are_exact(tmp_path):
    """run.json's cost: with t_max = 999 every instance sample of every step passes the SFSL gate, so f sees the
    R references once plus batch_size images per step forward, and batch_size per step backward; guidance
    adds, per generated image, one forward and one backward at each of the last K steps, after the R
    references once."""
    steps, refs, bs, n, k = 2, 2, 2, 3, 2
    run = _run(
        tmp_path,
        "method=sfsl_guidance",
        "loss.sfsl.t_max=999",
        f"data.batch_size={bs}",
        f"generate.num_images={n}",
        "generate.num_inference_steps=3",
        "generate.batch_size=2",
        f"method.guidance.last_k={k}",
    )
    cost = json.loads((run / "run.json").read_text())["cost"]
    tune, gen = cost["fine_tuning"], cost["generation"]
    assert tune["steps"] == steps and tune["fit_seconds"] > 0 and tune["seconds"] >= tune["fit_seconds"]
    assert (tune["extractor_forward"], tune["extractor_backward"]) == (refs + steps * bs, steps * bs)
    assert gen["images"] == n and gen["reference_forward"] == refs
    assert (gen["extractor_forward"], gen["extractor_backward"]) == (refs + n * k, n * k)
    assert gen["per_image"]["extractor_forward"] == gen["per_image"]["extractor_backward"] == k
    assert gen["per_image"]["seconds"] == pytest.approx(gen["sampling_seconds"] / n)
    assert json.loads((run / "generated" / "generate.json").read_text())["sfsl_guidance"] == {
        "strength": 1.0,
        "last_k": k,
        "schedule": "constant",
    }


def test_a_run_without_fine_tuning_saves_the_base_model_and_costs_no_extractor_pass(tmp_path):
    run = _run(tmp_path, "method=guidance", "method.guidance.strength=0", "generate.num_images=2")
    meta = json.loads((run / "run.json").read_text())
    assert (
        meta["method"] == "guidance"
        and meta["steps"] == 0
        and meta["instance_prompt"] == "a photo of a flower"
    )
    assert meta["cost"]["fine_tuning"]["extractor_forward"] == 0 and not (run / "checkpoints").exists()
    assert meta["cost"]["generation"]["extractor_backward"] == 0  # strength 0: f sees the references only
    assert meta["extractor"]["name"] == "tiny_cnn" and meta["extractor"]["used"]  # the extractor that guided
    base = build(load(*TINY).model)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(run / "pipeline" / "unet")
    assert all(torch.equal(a, b) for a, b in zip(base.unet.parameters(), unet.parameters(), strict=True))


def test_methods_never_share_a_run_identity():
    """The method enters the run identity, so the report (which keys its tables and rows by it) never pools two
    methods; the baseline row, the un-fine-tuned model unguided, is the same for all."""
    cfgs = {m: validate(load(*TINY, f"method={m}")) for m in METHODS}
    assert len({run_identity(c) for c in cfgs.values()}) == len(METHODS)
    assert len({baseline_identity(c) for c in cfgs.values()}) == 1
    strengths = {
        run_identity(load(*TINY, "method=guidance", f"method.guidance.strength={s}")) for s in (1, 2)
    }
    assert len(strengths) == 2


def test_the_default_method_keeps_the_identity_of_runs_from_before_the_method_group():
    """A saved config from before conf/method (no `method` key) has the identity and training key of today's
    default, method=sfsl; any change to the method's node gives another identity."""
    from omegaconf import OmegaConf

    from spurgen.identity import training_key

    cfg = load(*TINY)
    before = OmegaConf.to_container(cfg)
    before.pop("method")
    assert run_identity(OmegaConf.create(before)) == run_identity(cfg)
    assert training_key(OmegaConf.create(before)) == training_key(cfg)
    assert run_identity(load(*TINY, "method.name=other")) != run_identity(cfg)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["method=dreambooth", "lambda_sfsl=0.1"], "lambda_sfsl"),
        (["method=guidance", "lambda_sfsl=0.1"], "lambda_sfsl"),
        (["method=guidance", "method.guidance.last_k=0"], "method.guidance.last_k"),
        (["method=guidance", "method.guidance.schedule=cosine"], "method.guidance.schedule"),
        (["method=guidance", "method.guidance.strength=-1"], "method.guidance.strength"),
        (["method=sfsl_guidance", "loss.sfsl.reference=paired"], "loss.sfsl.reference"),
        (["method=guidance", "generate.dtype=float16"], "generate.dtype"),
        (["method=textual_inversion", "train.lora_rank=4"], "train.lora_rank"),
    ],
)
def test_method_settings_that_cannot_work_fail_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate(load(*TINY, *overrides))
    assert key in str(err.value)


def test_mini_methods_sweeps_every_method_on_the_shipped_pairs_over_three_seeds():
    from spurgen.cli.preflight import planned_jobs

    jobs = planned_jobs(["experiment=mini_methods"])
    assert jobs is not None
    parsed = [dict(o.split("=", 1) for o in job) for job in jobs]
    arms = sorted({j["method"] for j in parsed})
    assert {"dreambooth", "sfsl", "textual_inversion", "sfsl_guidance"} <= set(arms)
    guidance = [a for a in arms if "guidance" in a and a != "sfsl_guidance"]
    assert 2 <= len(guidance) <= 3
    assert {j["class"] for j in parsed} == {"nematode", "nematode_retina", "matchstick"}
    assert {j["seed"] for j in parsed} == {"0", "1", "2"} and len(jobs) == len(arms) * 3 * 3
    strengths = set()
    for arm in guidance:
        cfg = validate(load("experiment=mini_methods", f"method={arm}", "class=matchstick"))
        assert cfg.method.name == "guidance" and cfg.model.marks.model_is_mini and cfg.lambda_sfsl == 0
        strengths.add(cfg.method.guidance.strength)
    assert len(strengths) == len(guidance)  # each guidance arm its own strength
    cfg = load("experiment=mini_methods", "method=sfsl", "class=nematode")
    assert cfg.trainer.max_steps == load().trainer.max_steps and cfg.generate.num_images == 32


def test_the_report_puts_each_method_s_rates_beside_the_cost_of_n_images(tmp_path):
    """cost(N) = fine-tuning + N · per-image generation, the mean over the seeds with a cost record (a run
    without one counts as missing, not free), beside the extractor's rate and the held-out classifiers' mean."""
    from spurgen.report.collect import Run, Sweep
    from spurgen.report.cost import cost_figures, cost_lines, cost_rows

    table = ("3", (111, "nematode", -1), "abc")

    def run(seed: int, cost: dict | None) -> Run:
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"cost": cost} if cost else {}))
        ids = {"images": "abc", "baseline": "b", "reference": "r"}
        config = {"method.name": "guidance", "method.guidance.strength": 3.0}
        return Run(
            folder, "nematode", table[1], 0.0, seed, "3", False, "abc", ids, config, {"images": {}}, {}
        )

    def cost(tune_s: float, per_s: float, tune_f: int, per_f: float) -> dict:
        per = {"seconds": per_s, "extractor_forward": per_f, "extractor_backward": per_f}
        tune = {"seconds": tune_s, "extractor_forward": tune_f, "extractor_backward": 0}
        return {"fine_tuning": tune, "generation": {"images": 32, "per_image": per}}

    sweep = Sweep(tmp_path, runs=[run(0, cost(1.0, 0.5, 0, 10)), run(1, cost(3.0, 1.5, 0, 10)), run(2, None)])
    stats = {f"spurious_rate/lite{i}": {"mean": m} for i, m in enumerate((0.9, 0.3, 0.5))}
    row = {"row": "images", "table": table, "lambda_sfsl": 0.0, "class_name": "nematode", "seeds": [0, 1, 2]}
    rows = [{**row, "extractor": {"name": "lite0"}, "stats": stats}, {**row, "row": "baseline"}]
    (entry,) = cost_rows(sweep, rows)
    assert entry["method"] == "guidance" and (entry["seeds"], entry["seeds_with_cost"]) == (3, 2)
    assert entry["rate_extractor"] == 0.9 and entry["rate_held_out"] == pytest.approx(0.4)
    assert entry["seconds_32"] == pytest.approx(2.0 + 32 * 1.0)
    assert entry["seconds_1000"] == pytest.approx(2.0 + 1000 * 1.0)  # the extrapolation
    assert entry["passes_32"] == 32 * 20 and entry["passes_1000"] == 1000 * 20
    figures = cost_figures(sweep, rows, tmp_path / "out")
    assert list(figures) == ["cost:nematode"] and figures["cost:nematode"].is_file()
    text = "\n".join(cost_lines(sweep, rows, figures, tmp_path / "out"))
    assert "## Rate against cost" in text and "1,000 (extrapolated)" in text
    assert "| nematode | guidance s=3 | 0 | 3 (2) | 0.90 | 0.40 |" in text  # the strength tells arms apart
    assert "(figures/cost_nematode.png)" in text


def test_a_method_other_than_the_default_names_itself_in_the_logger_labels():
    from spurgen.stages.train import run_labels

    default, guided = (run_labels(validate(load(*TINY, f"method={m}"))) for m in ("sfsl", "guidance"))
    assert default.name == "hummingbird-lambda0.1-seed0" and not any("method" in t for t in default.tags)
    assert guided.name == "hummingbird-guidance-lambda0-seed0" and "method:guidance" in guided.tags


def test_a_checkpoint_carries_the_extractor_pass_counts(tiny_parts_factory, tiny_extractor):
    """A resumed run continues its cost counts from the checkpoint (spurgen_state), not from zero."""
    from spurgen.losses import SpurgenObjective, SpuriousFeatureSimilarityLoss
    from spurgen.module import SpurgenModule

    from .helpers import module_settings, optimizer_factory

    def module() -> SpurgenModule:
        sfsl = SpuriousFeatureSimilarityLoss(tiny_extractor)
        return SpurgenModule(
            tiny_parts_factory(), SpurgenObjective(sfsl=sfsl), optimizer_factory(), module_settings()
        )

    first = module()
    first.objective.sfsl.passes.forward, first.objective.sfsl.passes.backward = 7, 4
    checkpoint = {"state_dict": first.state_dict()}
    first.on_save_checkpoint(checkpoint)
    second = module()
    assert second.extractor_passes() == {"forward": 0, "backward": 0}
    second.on_load_checkpoint(checkpoint)
    assert second.extractor_passes() == {"forward": 7, "backward": 4}


def test_cost_rows_name_the_pair_and_read_every_method_under_the_sweeps_extractor(tmp_path):
    """Two pairs of one class (nematode, nematode_retina) are two rows; a method that never ran the extractor
    (textual inversion) is still read under the sweep's extractor, not left blank."""
    from spurgen.report.collect import Run, Sweep
    from spurgen.report.cost import cost_rows

    def run(file: str, method: str) -> Run:
        folder = tmp_path / f"{file}-{method}"
        folder.mkdir()
        table = ("3", (111, file, -1), method)
        ids = {"images": method, "baseline": "b", "reference": "r"}
        return Run(folder, "nematode", table[1], 0.1, 0, "3", False, method, ids, {"method.name": method},
                   {"images": {}}, {})  # fmt: skip

    runs = [run("nematode", "sfsl"), run("nematode_retina", "sfsl"), run("nematode", "textual_inversion")]
    stats = {f"spurious_rate/lite{i}": {"mean": m} for i, m in enumerate((0.6, 0.2, 0.4))}
    rows = [
        {"row": "images", "table": r.table, "lambda_sfsl": 0.1, "class_name": "nematode", "class_file": r.class_key[1],
         "seeds": [0], "stats": stats, "extractor": {"name": "lite0"} if r.identity == "sfsl" else None}
        for r in runs
    ]  # fmt: skip
    entries = cost_rows(Sweep(tmp_path, runs=runs), rows)
    assert [e["class_name"] for e in entries] == ["nematode", "nematode_retina", "nematode"]
    assert all(e["extractor"] == "lite0" and e["rate_extractor"] == 0.6 for e in entries)
    assert entries[2]["rate_held_out"] == pytest.approx(0.3)
