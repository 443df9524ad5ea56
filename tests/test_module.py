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
from spurgen.module import OptimSettings, SpurgenModule


def make_module(lambda_sfsl=1.0, t_max=1000, prediction_type="epsilon", seed=0, lr=1e-3):
    parts = build_tiny_sd(prediction_type=prediction_type)
    refs = torch.rand(3, 3, 32, 32)
    sfsl = SpuriousFeatureSimilarityLoss(t_max=t_max)
    module = SpurgenModule(
        parts.unet,
        parts.text_encoder,
        parts.tokenizer,
        parts.vae,
        parts.noise_scheduler,
        build_tiny_extractor(),
        SpurgenObjective(1.0, lambda_sfsl, sfsl),
        OptimSettings(lr_unet=lr, lr_text_encoder=lr),
        seed=seed,
        reference_images=refs,
        sample_scheduler=parts.sample_scheduler,
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
    module.prepare_references()
    res = module.compute_losses(make_batch(parts), module.step_generator(0))
    assert res.sfsl_samples > 0
    res.parts["loss_sfsl"].backward()  # the SFSL path alone reaches both trained parts
    g = grad_norms(module)
    assert g["unet"] > 0 and g["text_encoder"] > 0
    assert g["vae"] == 0 and g["feature_extractor"] == 0
    assert not any(p.requires_grad for p in module.vae.parameters())
    assert not any(p.requires_grad for p in module.feature_extractor.parameters())


def test_v_prediction_step_is_finite_with_sfsl():
    module, parts = make_module(prediction_type="v_prediction")
    module.prepare_references()
    res = module.compute_losses(make_batch(parts), module.step_generator(0))
    res.total.backward()
    assert torch.isfinite(res.total) and grad_norms(module)["unet"] > 0


def test_optimizer_has_two_groups_and_no_frozen_parameter():
    module, _ = make_module()
    opt = module.configure_optimizers()
    assert len(opt.param_groups) == 2
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    frozen = {id(p) for p in module.vae.parameters()} | {id(p) for p in module.feature_extractor.parameters()}
    assert not in_opt & frozen
    assert {id(p) for p in module.unet.parameters()} <= in_opt
    assert {id(p) for p in module.text_encoder.parameters()} <= in_opt


def test_frozen_parts_stay_in_eval_mode():
    module, _ = make_module()
    module.train()
    assert module.unet.training and module.text_encoder.training
    assert not module.vae.training and not module.feature_extractor.training
    assert not any(m.training for m in module.feature_extractor.modules())


def _fit(module, parts, steps, tmp_path, precision="32-true", callbacks=()):
    ds = DreamBoothDataset(
        torch.rand(2, 3, 32, 32), tokenize(parts.tokenizer, "a photo of a sks flower"), [], None, 32
    )
    loader = DataLoader(ds, batch_size=2, collate_fn=collate, shuffle=False)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=list(callbacks),
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

    _fit(module, parts, 1, tmp_path, precision="bf16-mixed", callbacks=[Grab()])
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
    assert not any(k.startswith(("vae.", "feature_extractor.")) for k in keys)
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
    module.prepare_references()
    batch = make_batch(parts, seed=1)

    def fixed_sfsl():
        g = module.step_generator(10_000)
        with torch.no_grad():
            return (
                module.compute_losses(batch, g, timesteps=torch.tensor([50, 300, 50, 300]))
                .parts["loss_sfsl"]
                .item()
            )

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
    from spurgen.optim import can_fuse, make_optimizer

    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = make_optimizer("adamw", [{"params": [w]}], lr=1e-3)
    assert opt.defaults["fused"] is True and can_fuse([{"params": [w]}])
    assert make_optimizer("adamw", [{"params": [w]}], fused=False, lr=1e-3).defaults["fused"] is False
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
    cached, _ = make_module(lambda_sfsl=1.0)
    cached.load_state_dict(module.state_dict(), strict=False)
    cached.vae.load_state_dict(module.vae.state_dict())
    cached.feature_extractor.load_state_dict(module.feature_extractor.state_dict())
    cached.cache_latents = True
    for m in (module, cached):
        m.prepare_references()
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
