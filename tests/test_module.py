"""The LightningModule: gradients, frozen parts, optimiser, precision, checkpoints, determinism."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from spurgen.data.dataset import DreamBoothDataset, collate, tokenize
from spurgen.losses import SpurgenObjective, SpuriousFeatureSimilarityLoss
from spurgen.models.extractors import build_tiny_extractor
from spurgen.models.tiny import build_tiny_sd
from spurgen.module import SpurgenModule
from tests.helpers import fixed_timesteps, module_settings, optimizer_factory

REFS = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))  # (R, 3, H, W) in [0, 1]


def make_module(
    lambda_sfsl=1.0, t_max=1000, prediction_type="epsilon", seed=0, lr=1e-3, with_sfsl=True, **settings
):
    parts = build_tiny_sd(prediction_type=prediction_type)
    sfsl = None
    if with_sfsl:
        sfsl = SpuriousFeatureSimilarityLoss(build_tiny_extractor(), t_max=t_max)
        sfsl.set_reference_images(REFS)
    module = SpurgenModule(
        parts,
        SpurgenObjective(1.0, lambda_sfsl, sfsl),
        optimizer_factory(),
        module_settings(lr_unet=lr, lr_text_encoder=lr, seed=seed, **settings),
    )
    return module, parts


def make_batch(parts, n_inst=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = tokenize(parts.tokenizer, "a photo of a sks flower")
    cls_ids = tokenize(parts.tokenizer, "a photo of a flower")
    return {
        "pixel_values": torch.rand(2 * n_inst, 3, 32, 32, generator=g) * 2 - 1,
        "input_ids": torch.stack([ids] * n_inst + [cls_ids] * n_inst),
        "n_instance": n_inst,
        "pair_index": torch.arange(n_inst),
    }


def grad_norms(module):
    def norm(m):
        return sum(p.grad.abs().sum().item() for p in m.parameters() if p.grad is not None)

    return {n: norm(getattr(module, n)) for n in ("unet", "text_encoder", "vae", "feature_extractor")}


def test_gradients_reach_unet_and_text_encoder_never_frozen_parts():
    module, parts = make_module()
    res = module.compute_losses(make_batch(parts), module.step_generator(0))
    assert res.sfsl_samples > 0
    res.parts["loss_sfsl"].backward()  # the SFSL path alone reaches both trained parts
    g = grad_norms(module)
    assert g["unet"] > 0 and g["text_encoder"] > 0
    assert g["vae"] == 0 and g["feature_extractor"] == 0
    assert not any(p.requires_grad for p in module.vae.parameters())
    assert not any(p.requires_grad for p in module.feature_extractor.parameters())


def test_v_prediction_target_and_z0_hat_by_hand():
    """prediction_type=v_prediction: the denoising target is the velocity sqrt(ab) eps - sqrt(1-ab) z and
    z0_hat = sqrt(ab) z_t - sqrt(1-ab) v_hat (METHOD.md), checked against values computed here; either one
    computed the epsilon way fails. t == t_max is gated in, t == t_max + 1 out."""
    module, parts = make_module(prediction_type="v_prediction", t_max=500)
    batch = make_batch(parts)
    t = torch.tensor([500, 501, 20, 900])  # instance half: t_max (in), t_max + 1 (out); then prior
    seen, decoded = {}, []
    forward, decode = module.objective.forward, module.vae.decode

    def spy_forward(step, global_step=0):
        seen["step"] = step
        return forward(step, global_step)

    def spy_decode(z, *args, **kwargs):
        decoded.append(z.detach().clone())  # z0_hat / s
        return decode(z, *args, **kwargs)

    module.objective.forward, module.vae.decode = spy_forward, spy_decode
    with fixed_timesteps(module, t):
        res = module.compute_losses(batch, module.step_generator(0))
    step = seen["step"]

    g = module.step_generator(0)  # the same draws, by hand: z = E(x)·s, eps
    mean, std = module.latent_distribution(batch["pixel_values"])
    s = parts.vae.config.scaling_factor
    z = (mean + std * torch.randn(mean.shape, generator=g)) * s
    eps = torch.randn(z.shape, generator=g)
    ab = parts.noise_scheduler.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(step.z_t, ab.sqrt() * z + (1 - ab).sqrt() * eps)
    velocity = ab.sqrt() * eps - (1 - ab).sqrt() * z
    torch.testing.assert_close(step.target, velocity)
    assert not torch.allclose(step.target, eps, atol=1e-2)

    assert res.sfsl_samples == 1 and len(decoded) == 1 and decoded[0].shape[0] == 1  # t = 500 only
    out = step.model_out.detach()
    z0_hat = ab[0].sqrt() * step.z_t[0] - (1 - ab[0]).sqrt() * out[0]
    torch.testing.assert_close(decoded[0][0] * s, z0_hat)
    z0_eps_way = (step.z_t[0] - (1 - ab[0]).sqrt() * out[0]) / ab[0].sqrt()
    assert not torch.allclose(decoded[0][0] * s, z0_eps_way, atol=1e-2)
    res.total.backward()
    assert torch.isfinite(res.total) and grad_norms(module)["unet"] > 0


def test_lambda_sfsl_zero_module_has_no_sfsl_and_no_extractor(tmp_path):
    """objective.sfsl = None: nothing to bind, no extractor, training and checkpoints work."""
    module, parts = make_module(lambda_sfsl=0.0, with_sfsl=False)
    assert module.feature_extractor is None and module.objective.sfsl is None
    decode = module.vae.decode
    module.vae.decode = lambda *a, **k: pytest.fail("the decoder ran with lambda_sfsl = 0") or decode(*a, **k)
    res = module.compute_losses(make_batch(parts), module.step_generator(0))
    assert res.parts["loss_sfsl"].item() == 0.0 and res.sfsl_samples == 0
    trainer = _fit(module, parts, 1, tmp_path)
    trainer.save_checkpoint(str(tmp_path / "x.ckpt"))


def test_optimizer_has_two_groups_and_no_frozen_parameter():
    module, _ = make_module()
    opt = module.configure_optimizers()
    assert len(opt.param_groups) == 2
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    frozen = {id(p) for p in module.vae.parameters()} | {id(p) for p in module.feature_extractor.parameters()}
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]
    assert not in_opt & frozen
    assert {id(p) for p in module.unet.parameters()} <= in_opt
    assert {id(p) for p in module.text_encoder.parameters()} <= in_opt


def test_frozen_parts_stay_in_eval_mode():
    module, _ = make_module()
    module.train()
    assert module.unet.training and module.text_encoder.training
    assert not module.vae.training and not module.feature_extractor.training
    assert not any(m.training for m in module.feature_extractor.modules())


def _fit(module, parts, steps, tmp_path, callbacks=(), **trainer_args):
    """Fit `steps` steps on two random images; trainer_args go to the Trainer (precision, clipping)."""
    ds = DreamBoothDataset(
        torch.rand(2, 3, 32, 32), tokenize(parts.tokenizer, "a photo of a sks flower"), [], None, 32
    )
    loader = DataLoader(ds, batch_size=2, collate_fn=collate, shuffle=False)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=list(callbacks),
        **{"precision": "32-true", **trainer_args},
    )
    trainer.fit(module, loader)
    return trainer


def test_extractor_state_dict_unchanged_after_fit(tmp_path):
    module, parts = make_module()
    before = copy.deepcopy(module.feature_extractor.state_dict())
    vae_before = copy.deepcopy(module.vae.state_dict())
    unet_before = copy.deepcopy(module.unet.state_dict())
    _fit(module, parts, 3, tmp_path)
    after = module.feature_extractor.state_dict()
    assert any("running_mean" in k for k in after)  # BatchNorm statistics are part of the check
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    for k, v in vae_before.items():
        assert torch.equal(v, module.vae.state_dict()[k]), k
    assert any(not torch.equal(v, module.unet.state_dict()[k]) for k, v in unet_before.items())


def test_bf16_mixed_step_on_cpu_is_finite(tmp_path):
    module, parts = make_module()
    seen = {}

    class Grab(L.Callback):
        def on_after_backward(self, trainer, pl_module):
            seen["unet_grad"] = sum(
                p.grad.float().abs().sum().item() for p in pl_module.unet.parameters() if p.grad is not None
            )

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["loss"] = outputs["loss"].detach().float()

    # with conf/trainer/default.yaml's clipping: Lightning's mixed precision refuses a fused optimiser then
    _fit(module, parts, 1, tmp_path, precision="bf16-mixed", callbacks=[Grab()], gradient_clip_val=1.0)
    assert torch.isfinite(seen["loss"]) and seen["unet_grad"] > 0
    assert seen["loss"].dtype == torch.float32


def test_checkpoint_excludes_frozen_parts_and_holds_config(tmp_path):
    module, parts = make_module()
    module.run_config = {"seed": 0}
    trainer = _fit(module, parts, 1, tmp_path)
    path = tmp_path / "x.ckpt"
    trainer.save_checkpoint(str(path))
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    keys = ckpt["state_dict"].keys()
    assert not any(k.startswith("vae.") or "extractor." in k for k in keys)
    assert not any(name in k for k in keys for name in ("reference_images", "ref_features", "alphas_cumprod"))
    assert any(k.startswith("unet.") for k in keys) and any(k.startswith("text_encoder.") for k in keys)
    assert ckpt["spurgen_config"] == {"seed": 0}


def test_step_randomness_depends_only_on_seed_and_step():
    module, parts = make_module(lambda_sfsl=0.0)
    batch = make_batch(parts)
    a = module.compute_losses(batch, module.step_generator(5)).total
    torch.randn(100)  # global RNG use (e.g. by sampling) must not matter
    module.log_images(["a photo of a sks flower"], [1], 2, 1.0, 32)
    b = module.compute_losses(batch, module.step_generator(5)).total
    c = module.compute_losses(batch, module.step_generator(6)).total
    assert a.item() == b.item() and a.item() != c.item()


@pytest.mark.slow
def test_sfsl_on_fixed_batch_drops_after_short_training_with_large_lambda():
    """The loss does what it claims: L_SFSL on one fixed batch (fixed t and noise) is lower after training."""
    torch.manual_seed(0)
    module, parts = make_module(lambda_sfsl=10.0, t_max=400, lr=2e-3)
    batch = make_batch(parts, seed=1)

    def fixed_sfsl():
        g = module.step_generator(10_000)
        with torch.no_grad(), fixed_timesteps(module, [50, 300, 50, 300]):
            return module.compute_losses(batch, g).parts["loss_sfsl"].item()

    before = fixed_sfsl()
    opt = module.configure_optimizers()
    for step in range(10):
        opt.zero_grad()
        res = module.compute_losses(batch, module.step_generator(step), step)
        res.total.backward()
        opt.step()
    after = fixed_sfsl()
    assert before > 0
    assert after < before, (before, after)


def test_optimizer_is_fused_where_it_runs():
    """AdamW uses torch's fused kernel on CPU/CUDA parameters (the same update, one kernel); fused=False and
    8-bit stay available."""
    from spurgen.optim import can_fuse

    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = optimizer_factory()([{"params": [w]}], lr=1e-3)
    assert opt.defaults["fused"] is True and can_fuse([{"params": [w]}])
    assert optimizer_factory()([{"params": [w]}], fused=False, lr=1e-3).defaults["fused"] is False
    ref = torch.nn.Parameter(w.detach().clone())
    opt_ref = torch.optim.AdamW([ref], lr=1e-3)
    for _ in range(3):
        for p, o in ((w, opt), (ref, opt_ref)):
            p.grad = torch.ones_like(p)
            o.step()
    torch.testing.assert_close(w.detach(), ref.detach())


def test_cached_latents_give_the_same_losses_and_encode_each_image_once():
    """train.cache_latents: each keyed image is encoded once, alone; the losses of later steps match encoding
    every step (to float rounding: a batch encode and a one-image encode may round differently)."""
    module, parts = make_module(lambda_sfsl=1.0)
    cached, _ = make_module(lambda_sfsl=1.0, cache_latents=True)
    cached.load_state_dict(module.state_dict(), strict=False)
    cached.vae.load_state_dict(module.vae.state_dict())
    cached.feature_extractor.load_state_dict(module.feature_extractor.state_dict())
    batch = make_batch(parts) | {"keys": ["instance/0", "instance/1", "class/0", "class/1"]}
    calls = []
    encode = cached.vae.encode
    cached.vae.encode = lambda x: calls.append(x.shape[0]) or encode(x)
    for step in range(3):
        a = module.compute_losses(batch, module.step_generator(step), step)
        b = cached.compute_losses(batch, cached.step_generator(step), step)
        torch.testing.assert_close(b.total, a.total, rtol=1e-4, atol=1e-5)
        for name in a.parts:
            torch.testing.assert_close(b.parts[name], a.parts[name], rtol=1e-4, atol=1e-5)
    assert calls == [1, 1, 1, 1]  # four images, each encoded alone, once over three steps
    unkeyed = make_batch(parts, seed=1)  # no keys (e.g. a hand-made batch): encoded every time, never cached
    cached.compute_losses(unkeyed, cached.step_generator(3), 3)
    assert calls[-1] == 4 and len(cached._latents) == 4


def test_dataset_items_name_their_images_for_the_cache(tmp_path):
    from tests.conftest import write_images

    parts = build_tiny_sd()
    ids = tokenize(parts.tokenizer, "a photo of a sks flower")
    ds = DreamBoothDataset(torch.rand(2, 3, 32, 32), ids, write_images(tmp_path, 3, size=32), ids, 32)
    batch = collate([ds[i] for i in range(4)])
    assert batch["keys"] == [f"instance/{i % 2}" for i in range(4)] + [f"class/{i % 3}" for i in range(4)]
    assert torch.equal(batch["pixel_values"][4], batch["pixel_values"][7])  # class/0 twice: same pixels


def test_gradients_are_freed_right_after_each_update(tmp_path):
    """No gradient survives into the next step's forward (Lightning would free them only after it)."""
    from lightning.pytorch.callbacks import Callback

    alive = []

    class Probe(Callback):
        def on_train_batch_start(self, trainer, module, *_):
            alive.append(sum(p.grad is not None for p in module.parameters()))

    module, parts = make_module(lambda_sfsl=0.0)
    _fit(module, parts, 3, tmp_path, callbacks=[Probe()])
    assert alive == [0, 0, 0]
    assert any(p.requires_grad for p in module.unet.parameters())


def test_optimizer_partial_from_config_binds_its_settings():
    """The optimiser is a Hydra partial of spurgen.optim.make_optimizer; the module passes its groups."""
    from hydra.utils import instantiate

    factory = instantiate(
        {
            "_target_": "spurgen.optim.make_optimizer",
            "_partial_": True,
            "name": "adamw",
            "weight_decay": 0.05,
            "betas": [0.8, 0.99],
            "eps": 1e-6,
        }
    )
    parts = build_tiny_sd()
    module = SpurgenModule(
        parts, SpurgenObjective(1.0, 0.0), factory, module_settings(lr_unet=2e-4, lr_text_encoder=3e-5)
    )
    opt = module.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == [2e-4, 3e-5]
    assert opt.defaults["betas"] == (0.8, 0.99) and opt.defaults["weight_decay"] == 0.05
    assert opt.defaults["eps"] == 1e-6


def test_reference_target_is_recomputed_identically_at_fit_start():
    """Resume and DDP: m is never stored; each process recomputes it from the same reference images at fit
    start, in float32 with autocast off, whatever precision surrounds it."""
    module, _ = make_module()
    module.on_fit_start()
    again, _ = make_module()  # a resumed run or another rank: a fresh module, the same references
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again.on_fit_start()
    assert module.objective.sfsl.ref_features.dtype == torch.float32
    assert torch.equal(module.objective.sfsl.ref_features, again.objective.sfsl.ref_features)
    assert torch.equal(module.objective.sfsl.target_mean, again.objective.sfsl.target_mean)


def test_mixed_precision_never_lowers_the_encoders_precision():
    """E(x) runs with autocast off in the VAE's own dtype (float32 here): under bf16 autocast the latents are
    exactly the float32 ones (the mini world's PCA encoder needs float32:
    experiments/mini_world/pca_encoder.py)."""
    module, parts = make_module(lambda_sfsl=0.0, with_sfsl=False)
    pixels = make_batch(parts)["pixel_values"]
    mean, std = module.latent_distribution(pixels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mean_bf16, std_bf16 = module.latent_distribution(pixels)
        lowered = parts.vae.encode(pixels).latent_dist.mean  # what autocast alone would have computed
    assert mean_bf16.dtype == torch.float32 and torch.equal(mean_bf16, mean) and torch.equal(std_bf16, std)
    assert not torch.equal(lowered.float(), mean)


def test_each_distinct_prompt_is_encoded_once_with_the_same_values_and_gradients():
    module, parts = make_module(with_sfsl=False, lambda_sfsl=0.0)
    te = module.text_encoder.train()
    ids = make_batch(parts, n_inst=3)["input_ids"]  # 3 instance + 3 class rows, 2 distinct prompts
    seen = []
    hook = te.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    enc = module.encode_prompts(ids)
    weights = torch.randn(
        enc.shape, generator=torch.Generator().manual_seed(0)
    )  # a different gradient per row
    (enc * weights).sum().backward()
    shared = {n: p.grad.clone() for n, p in te.named_parameters()}
    te.zero_grad()
    whole = te(ids)[0]
    (whole * weights).sum().backward()
    hook.remove()
    assert seen == [2, 6]
    torch.testing.assert_close(module.encode_prompts(ids), whole, rtol=0, atol=1e-6)
    # summation order differs: float rounding only (a key bias's true gradient is 0, its computed one ~1e-6)
    for n, p in te.named_parameters():
        torch.testing.assert_close(shared[n], p.grad, rtol=1e-3, atol=1e-4, msg=lambda m, n=n: f"{n}: {m}")
    flat = torch.cat([p.grad.flatten() for p in te.parameters()])
    assert (
        torch.cat([shared[n].flatten() for n, _ in te.named_parameters()]) - flat
    ).norm() < 1e-4 * flat.norm()


def test_an_encoder_with_dropout_gets_the_whole_batch():
    module, parts = make_module(with_sfsl=False, lambda_sfsl=0.0)
    module.text_encoder.config.attention_dropout = 0.1
    module.text_encoder.train()
    seen = []
    module.text_encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    module.encode_prompts(make_batch(parts, n_inst=2)["input_ids"])
    assert seen == [4]
