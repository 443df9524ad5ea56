"""The mini text-to-image model's groundwork (issue 12 item 3): the ~600-token CLIP BPE tokenizer, the UNet
and text encoder builders, and the pre-training command (a few steps on a random autoencoder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spurgen.files import sha256_file
from spurgen.torch_threads import torch_threads

pytest.importorskip("skimage.data")

from experiments.mini_world import corpus  # noqa: E402
from experiments.mini_world import pretrain_generator as pg  # noqa: E402
from experiments.mini_world.generator import LATENT_CHANNELS, build_mini_text_encoder, build_mini_unet  # noqa: E402
from experiments.mini_world.tokenizer import END, WORDS, bpe, build_merges, build_mini_tokenizer  # noqa: E402
from spurgen.errors import ConfigError  # noqa: E402
from spurgen.models.parts import SDParts  # noqa: E402
from spurgen.models.schedulers import ddim_sampler, sd_noise_scheduler  # noqa: E402
from spurgen.models.tiny import build_tiny_vae  # noqa: E402
from spurgen.prompts import apply_template  # noqa: E402

TEMPLATES = ("{prompt}", "{prompt} on the beach", "{prompt} on Mount Fuji", "{prompt} in a garden",
             "{prompt} in a market")  # fmt: skip


def one_thread():
    """The manifest's losses were recorded with one CPU thread; replay them the same way."""
    return torch_threads(1)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_mini_tokenizer(tmp_path_factory.mktemp("mini-tok"))


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    """A random autoencoder with the mini one's shape (factor 4, its latent channels, 64 px)."""
    folder = tmp_path_factory.mktemp("mini-vae")
    build_tiny_vae(
        block_out_channels=(16, 32, 64), latent_channels=LATENT_CHANNELS, sample_size=64
    ).save_pretrained(folder)
    return folder


def prompts() -> list[str]:
    """Every corpus caption, plain and with the identifier, in every recontextualisation template."""
    captions = {corpus.caption(p.subject) for p in corpus.captioned_photos()}
    with_id = {c.replace("a photo of a ", "a photo of a sks ") for c in captions}
    return sorted(apply_template(t, c) for t in TEMPLATES for c in captions | with_id)


def test_tokenizer_has_about_600_tokens_and_each_word_is_one_token(tokenizer):
    assert 580 <= len(tokenizer) <= 650
    vocab = tokenizer.get_vocab()
    for text in prompts():
        ids = tokenizer(text).input_ids
        words = text.lower().split()
        assert ids == [tokenizer.bos_token_id, *(vocab[w + END] for w in words), tokenizer.eos_token_id], text
        assert tokenizer.decode(ids, skip_special_tokens=True).strip() == text.lower()


def test_tokenizer_handles_any_text_and_the_bpe_replay_matches_clip(tokenizer):
    ranks = {m: i for i, m in enumerate(build_merges())}
    for word in ("photograph", "gardener", "hummingbirds", "zebra", "cats"):
        ids = tokenizer(word).input_ids[1:-1]
        assert len(ids) > 1  # not a vocabulary word: pieces, never one unknown token
        assert tokenizer.convert_ids_to_tokens(ids) == bpe(word, ranks)
    assert len(tokenizer("a photo of a café!").input_ids) > 6  # a non-ASCII ending still tokenizes
    assert {len(tokenizer(w).input_ids) for w in WORDS} == {3}
    padded = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert padded[:2] == [tokenizer.bos_token_id, tokenizer.eos_token_id] and len(padded) == 32


def parts_with(text_encoder, unet, tokenizer) -> SDParts:
    return SDParts(
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        vae=build_tiny_vae(block_out_channels=(16, 32, 64), latent_channels=LATENT_CHANNELS, sample_size=64),
        noise_scheduler=sd_noise_scheduler(),
        sample_scheduler=ddim_sampler(),
    )


def test_builders_fit_together_and_a_mismatch_is_caught(tokenizer):
    parts = parts_with(build_mini_text_encoder(tokenizer), build_mini_unet(), tokenizer)
    assert parts.resolution == corpus.SIZE
    assert tuple(parts.unet.config.block_out_channels) == (32, 64, 128)
    assert parts.text_encoder.config.vocab_size == len(tokenizer)
    z = torch.randn(2, LATENT_CHANNELS, 16, 16)
    cond = parts.text_encoder(tokenizer(["a photo of a cat"] * 2, return_tensors="pt").input_ids)[0]
    assert parts.unet(z, torch.tensor([10, 900]), encoder_hidden_states=cond).sample.shape == z.shape
    with pytest.raises(ConfigError, match="cross_attention_dim"):
        parts_with(build_mini_text_encoder(tokenizer, hidden=64), build_mini_unet(), tokenizer)


def test_three_training_steps_are_finite_change_the_weights_and_replay(vae_dir, tmp_path):
    cfg = pg.GenTrainConfig(steps=3, batch=2, log_every=1)
    runs = []
    with one_thread():
        for i in range(2):
            parts = pg.build_parts(pg.load_frozen_vae(vae_dir), tmp_path / f"tok{i}", cfg.seed)
            before = parts.unet.conv_out.weight.detach().clone()
            res = pg.train_generator(cfg, parts, log=lambda _: None)
            runs.append(res.first_losses)
    assert len(res.first_losses) == 3 and all(0 < x < 10 for x in res.first_losses)
    assert runs[0] == runs[1]  # fixed seed, one thread: the manifest's first losses replay exactly
    assert not torch.equal(before, parts.unet.conv_out.weight)
    weights = [*parts.unet.parameters(), *parts.text_encoder.parameters()]
    assert all(torch.isfinite(p).all() for p in weights)
    assert all(p.requires_grad is False for p in parts.vae.parameters())


def test_weight_average_follows_its_warmed_up_decay():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    avg = pg.WeightAverage([p], decay=0.9)
    with torch.no_grad():
        p.fill_(3.0)
    avg.update(0)  # d = min(0.9, 1/10) = 0.1
    assert torch.allclose(avg.shadow[0], torch.tensor([0.1 * 1 + 0.9 * 3]))
    with torch.no_grad():
        p.fill_(5.0)
    avg.update(90)  # d = min(0.9, 91/100) = 0.9
    assert torch.allclose(avg.shadow[0], torch.tensor([0.9 * 2.8 + 0.1 * 5]))
    avg.copy_to_params()
    assert torch.allclose(p.detach(), torch.tensor([3.02]))


def test_ema_saves_the_average_of_the_same_trajectory(vae_dir, tmp_path):
    """The average leaves training alone (same losses) and ends as the hand-computed average of the weights
    after each step: steps 1, 2 and 3 of a run are the runs of 1, 2 and 3 steps (all inside the warm-up)."""
    weights, losses = [], []
    with one_thread():
        for steps, decay in [(1, 0.0), (2, 0.0), (3, 0.0), (3, 0.9)]:
            cfg = pg.GenTrainConfig(steps=steps, batch=2, log_every=1, ema_decay=decay)
            parts = pg.build_parts(pg.load_frozen_vae(vae_dir), tmp_path / f"tok{steps}{decay}", cfg.seed)
            start = parts.unet.conv_out.weight.detach().clone()
            losses.append(pg.train_generator(cfg, parts, log=lambda _: None).first_losses)
            weights.append(parts.unet.conv_out.weight.detach().clone())
    assert losses[3] == losses[2]
    w1, w2, w3, ema = weights
    expected = start
    for step, w in enumerate([w1, w2, w3]):
        d = min(0.9, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * w
    gap = (ema - w3).abs().max()  # the average lags the last weights (the warm-up's steps are small)
    assert gap > 0 and (ema - expected).abs().max() < 0.01 * gap


def test_the_command_writes_loadable_folders_and_a_manifest(vae_dir, tmp_path, capsys):
    from diffusers import UNet2DConditionModel
    from PIL import Image
    from safetensors import safe_open
    from transformers import CLIPTextModel, CLIPTokenizer

    out = tmp_path / "mini"
    with one_thread():
        assert pg.main(["--vae", str(vae_dir), "--out", str(out), "--steps", "2", "--batch", "2"]) == 0
    record = json.loads((out / pg.MANIFEST).read_text())["parts"]["generator"]
    assert {f.split("/")[0] for f in record["files"]} == {
        "unet",
        "text_encoder",
        "tokenizer",
        "scheduler",
        "model_index.json",
    }
    for name, digest in record["files"].items():
        assert sha256_file(out / name) == digest
    assert record["config"]["steps"] == 2 and record["config"]["seed"] == 0
    assert len(record["first_losses"]) == 2 and record["command"].endswith("--batch 2")
    assert record["wall_s"] >= record["train_wall_s"] > 0 and record["final_losses"]["loss"] > 0
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    text = CLIPTextModel.from_pretrained(out / "text_encoder")
    tok = CLIPTokenizer.from_pretrained(out / "tokenizer")
    with safe_open(out / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # fp16 storage
    assert (
        tok("a photo of a sks texture").input_ids
        == build_mini_tokenizer(tmp_path / "t")("a photo of a sks texture").input_ids
    )
    assert text.config.vocab_size == len(tok) and unet.config.cross_attention_dim == text.config.hidden_size
    with one_thread():
        grid = pg.sample_grid(pg.load_trained(out, pg.load_frozen_vae(vae_dir)), ["a photo of a cat", ""],
                              tmp_path / "grid.png", per_prompt=1)  # fmt: skip
    assert Image.open(grid).size == (corpus.SIZE, 2 * corpus.SIZE)
    capsys.readouterr()
    assert pg.main(["--vae", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_min_snr_weights_cap_the_clean_steps_and_zero_gamma_is_the_plain_mean(vae_dir, tmp_path):
    sched = sd_noise_scheduler("epsilon")
    ab = sched.alphas_cumprod.double()
    snr = ab / (1 - ab)
    t = torch.arange(0, 1000, 37)
    w = pg.snr_weights(sched, t, 5.0)
    noisy = snr[t] <= 5  # the noisy steps keep weight 1; the clean ones get gamma / SNR < 1
    assert noisy.any() and (~noisy).any()
    assert torch.equal(w[noisy], torch.ones(int(noisy.sum())))
    assert torch.allclose(w[~noisy].double(), 5 / snr[t][~noisy], rtol=1e-6) and (w[~noisy] < 1).all()
    assert torch.equal(pg.snr_weights(sched, t, 0.0), torch.ones(len(t)))
    v = pg.snr_weights(sd_noise_scheduler("v_prediction"), t, 5.0)  # v's loss is (SNR + 1) x epsilon's
    assert torch.allclose(v.double(), snr[t].clamp(max=5) / (snr[t] + 1), rtol=1e-6)
    parts = pg.build_parts(pg.load_frozen_vae(vae_dir), tmp_path / "tok", 0)
    x, ids = pg.step_batch(pg.GenTrainConfig(batch=4), 0, pg.CaptionIds(parts.tokenizer), torch.Generator())

    def loss(*gamma):
        with torch.no_grad():
            return pg.training_loss(parts, x, ids, torch.Generator().manual_seed(1), *gamma)

    assert torch.equal(loss(0.0), loss())  # gamma 0: the plain mean, as the shipped generator trained
    assert loss(1e-6) < 1e-3 * loss()  # a tiny gamma shrinks every sample's weight below 1e-3


def test_v_prediction_trains_on_the_velocity_and_the_folder_says_so(vae_dir, tmp_path):
    """--prediction-type v_prediction: the loss's target is the scheduler's velocity, and the saved scheduler
    carries the type, so pipelines and spurgen's fine-tuning (model/*scheduler=pretrained) read it back."""
    parts = pg.build_parts(pg.load_frozen_vae(vae_dir), tmp_path / "tok", 0, "v_prediction")
    assert parts.prediction_type == parts.sample_scheduler.config.prediction_type == "v_prediction"
    x, ids = pg.step_batch(pg.GenTrainConfig(batch=2), 0, pg.CaptionIds(parts.tokenizer), torch.Generator())
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        loss = pg.training_loss(parts, x, ids, gen)
        gen.manual_seed(3)  # the same draws again, by hand
        z = parts.vae.encode(x).latent_dist.sample(generator=gen) * parts.vae.config.scaling_factor
        eps = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, 1000, (2,), generator=gen)
        out = parts.unet(parts.noise_scheduler.add_noise(z, eps, t), t,
                         encoder_hidden_states=parts.text_encoder(ids)[0]).sample  # fmt: skip
        ab_sqrt = parts.noise_scheduler.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
        velocity = ab_sqrt * eps - (1 - ab_sqrt**2).sqrt() * z
    assert torch.allclose(loss, torch.nn.functional.mse_loss(out, velocity), rtol=1e-4)
    assert not torch.allclose(loss, torch.nn.functional.mse_loss(out, eps), rtol=1e-2)
    out_dir = tmp_path / "mini"
    with one_thread():
        assert pg.main(["--vae", str(vae_dir), "--out", str(out_dir), "--steps", "1", "--batch", "2",
                        "--prediction-type", "v_prediction"]) == 0  # fmt: skip
    loaded = pg.load_trained(out_dir, pg.load_frozen_vae(vae_dir))
    assert loaded.noise_scheduler.config.prediction_type == "v_prediction" == loaded.prediction_type
    record = json.loads((out_dir / pg.MANIFEST).read_text())["parts"]["generator"]
    assert record["config"]["prediction_type"] == "v_prediction"
    with pytest.raises(SystemExit):
        pg.parse_args(["--vae", "v", "--out", "o", "--prediction-type", "sample"])
    for bad in ("1", "-0.1"):
        with pytest.raises(SystemExit):
            pg.parse_args(["--vae", "v", "--out", "o", "--ema-decay", bad])
    assert pg.parse_args(["--vae", "v", "--out", "o", "--ema-decay", "0.999"]).ema_decay == 0.999
