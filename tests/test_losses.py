"""Each loss of METHOD.md against a hand computation on small tensors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spurgen.losses import (
    SpurgenObjective,
    SpuriousFeatureSimilarityLoss,
    StepTensors,
    denoising_losses,
    predict_z0,
)


def test_predict_z0_epsilon_by_hand():
    z_t = torch.tensor([[[[1.0]]]]).expand(1, 4, 1, 1)
    eps = torch.tensor([[[[0.5]]]]).expand(1, 4, 1, 1)
    ab = torch.tensor([0.64])
    # (z_t - sqrt(1-ab) eps) / sqrt(ab) = (1 - 0.6*0.5) / 0.8 = 0.875
    assert torch.allclose(predict_z0(z_t, eps, ab, "epsilon"), torch.full((1, 4, 1, 1), 0.875))


def test_predict_z0_v_prediction_by_hand():
    z_t = torch.full((1, 4, 1, 1), 1.0)
    v = torch.full((1, 4, 1, 1), 0.5)
    ab = torch.tensor([0.64])
    # sqrt(ab) z_t - sqrt(1-ab) v = 0.8 - 0.6*0.5 = 0.5
    assert torch.allclose(predict_z0(z_t, v, ab, "v_prediction"), torch.full((1, 4, 1, 1), 0.5))


def test_predict_z0_inverts_forward_process_with_true_noise():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    z, eps = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    t = torch.tensor([10, 300, 900])
    z_t = sched.add_noise(z, eps, t)
    ab = sched.alphas_cumprod[t]
    assert torch.allclose(predict_z0(z_t, eps, ab, "epsilon"), z, atol=1e-4)
    sched_v = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"
    )
    v = sched_v.get_velocity(z, eps, t)
    assert torch.allclose(predict_z0(z_t, v, ab, "v_prediction"), z, atol=1e-4)


def test_denoising_losses_split_instance_and_prior():
    out = torch.zeros(3, 4, 2, 2)
    target = torch.cat([torch.ones(1, 4, 2, 2), 2 * torch.ones(2, 4, 2, 2)])
    inst, prior = denoising_losses(out, target, n_instance=1)
    assert inst.item() == pytest.approx(1.0)
    assert prior.item() == pytest.approx(4.0)
    inst, prior = denoising_losses(out[:1], target[:1], n_instance=1)
    assert prior.item() == 0.0
    with pytest.raises(ValueError, match="differ"):
        denoising_losses(out, target[:2], 1)


class _Decoder(nn.Module):
    """Stands in for D: decode = the first 3 latent channels times a weight (scaling factor 0.5)."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(scaling_factor=0.5, block_out_channels=(1,))
        self.w = nn.Parameter(torch.ones(()))
        self.calls: list[int] = []  # batch size of each decode

    def decode(self, z):
        self.calls.append(z.shape[0])
        return SimpleNamespace(sample=z[:, :3] * self.w)


class _Flatten(nn.Module):
    """Stands in for f: phi(x) = x flattened; records the dtype and autocast state of each call."""

    input_size = 2

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[torch.dtype, bool]] = []

    def features(self, x):
        self.seen.append((x.dtype, torch.is_autocast_enabled("cpu")))
        return x.flatten(1) * 1.0


AB = torch.linspace(0.99, 0.01, 1000)


def _schedule(prediction_type="epsilon"):
    return SimpleNamespace(alphas_cumprod=AB, config=SimpleNamespace(prediction_type=prediction_type))


def _sfsl(refs=None, **kwargs):
    """An SFSL bound to the fake D and schedule, with references of 3x2x2 images (phi is 12-d)."""
    sfsl = SpuriousFeatureSimilarityLoss(_Flatten(), **kwargs)
    sfsl.bind(_Decoder(), _schedule())
    g = torch.Generator().manual_seed(0)
    sfsl.set_reference_images(torch.rand(3, 3, 2, 2, generator=g) if refs is None else refs)
    return sfsl


def _images(features):
    """Reference images (R, 3, 1, 1) whose flattened pixels are the given features (R, 3)."""
    return torch.tensor(features).view(-1, 3, 1, 1)


def test_cosine_sfsl_uses_normalised_reference_mean():
    sfsl = _sfsl(_images([[0.3, 0.0, 0.0], [0.0, 1.0, 0.0]]))  # different norms: normalise before averaging
    assert torch.allclose(sfsl.target_mean, torch.tensor([0.5, 0.5, 0.0]))
    phi = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    expected = ((1 - 1 / math.sqrt(2)) + 0.0) / 2  # cos((1,0),(.5,.5)) = 1/sqrt2; cos((1,1),(.5,.5)) = 1
    assert sfsl.distance_to_reference(phi).item() == pytest.approx(expected, abs=1e-6)


def test_mse_sfsl_is_mse_of_unnormalised_features_to_raw_mean():
    sfsl = _sfsl(_images([[0.2, 0.4, 0.0], [0.6, 0.0, 1.0]]), distance="mse")
    assert torch.allclose(sfsl.target_mean, torch.tensor([0.4, 0.2, 0.5]))  # m_raw, not normalised
    phi = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    # sample 0: (0.6^2 + 0.2^2 + 0.5^2) / 3 = 0.65 / 3; sample 1: (0.4^2 + 0.8^2 + 1.5^2) / 3 = 3.05 / 3
    expected = (0.65 / 3 + 3.05 / 3) / 2
    assert sfsl.distance_to_reference(phi).item() == pytest.approx(expected, abs=1e-6)
    assert sfsl.distance_to_reference(2 * phi).item() > 2 * expected  # not scale-free: follows ||phi||^2


def test_mse_nearest_and_paired_use_raw_reference_features():
    refs = [[0.2, 0.0, 0.0], [0.0, 0.9, 0.0]]
    phi = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    nearest = _sfsl(_images(refs), distance="mse", reference="nearest")
    # nearest in squared distance: sample 0 -> ref 0 (0.64/3 vs 1.81/3), sample 1 -> ref 1 (0.16/3)
    assert nearest.distance_to_reference(phi).item() == pytest.approx((0.64 / 3 + 0.16 / 3) / 2, abs=1e-6)
    paired = _sfsl(_images(refs), distance="mse", reference="paired")
    got = paired.distance_to_reference(phi, torch.tensor([1, 0]))  # (1+0.81)/3 and (0.04+0.25)/3
    assert got.item() == pytest.approx((1.81 / 3 + 0.29 / 3) / 2, abs=1e-6)


def test_sfsl_nearest_and_paired_references():
    refs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    phi = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
    nearest = _sfsl(refs.view(2, 3, 1, 1), reference="nearest")
    cos = F.cosine_similarity(phi, refs, dim=1)  # each sample is nearest to its own index
    assert nearest.distance_to_reference(phi).item() == pytest.approx((1 - cos).mean().item(), abs=1e-6)
    paired = _sfsl(refs.view(2, 3, 1, 1), reference="paired")
    swapped = F.cosine_similarity(phi, refs.flip(0), dim=1)
    got = paired.distance_to_reference(phi, torch.tensor([1, 0]))
    assert got.item() == pytest.approx((1 - swapped).mean().item(), abs=1e-6)


def _step(n_inst=2, n_prior=2, t=(100, 800, 100, 100), requires_grad=True):
    torch.manual_seed(0)
    b = n_inst + n_prior
    out = torch.randn(b, 4, 2, 2, requires_grad=requires_grad)
    return StepTensors(out, torch.randn(b, 4, 2, 2), torch.randn(b, 4, 2, 2), torch.tensor(t), n_inst)


def test_objective_weighting_and_t_max_gate_by_hand():
    sfsl = _sfsl(t_max=500)
    obj = SpurgenObjective(lambda_prior=0.5, lambda_sfsl=2.0, sfsl=sfsl)
    step = _step()
    res = obj(step)
    inst, prior = denoising_losses(step.model_out, step.target, 2)
    # only instance sample 0 (t=100) passes the gate; sample 1 has t=800 > t_max
    z0 = predict_z0(step.z_t[:1], step.model_out[:1], AB[step.t[:1]], "epsilon")
    x0 = (z0[:, :3] / 0.5 + 1) / 2
    m = F.normalize(sfsl.reference_images.flatten(1), dim=1).mean(0)
    manual_sfsl = 1 - F.cosine_similarity(x0.flatten(1), m[None], dim=1).mean()
    assert res.parts["loss_sfsl"].item() == pytest.approx(manual_sfsl.item(), abs=1e-5)
    assert res.total.item() == pytest.approx((inst + 0.5 * prior + 2.0 * manual_sfsl).item(), abs=1e-5)
    assert res.sfsl_samples == 1 and sfsl._decoder.vae.calls == [1]  # only the gated sample is decoded


def test_t_max_is_gated_in_and_t_max_plus_one_out():
    sfsl = _sfsl(t_max=500)
    res = SpurgenObjective(1.0, 1.0, sfsl)(_step(t=(500, 501, 0, 0)))
    assert res.sfsl_samples == 1 and sfsl._decoder.vae.calls == [1]
    sfsl = _sfsl(t_max=500)
    res = SpurgenObjective(1.0, 1.0, sfsl)(_step(t=(501, 999, 0, 0)))
    assert res.sfsl_samples == 0 and sfsl._decoder.vae.calls == []


def test_sfsl_zero_and_not_computed_when_no_sample_passes_the_gate():
    sfsl = _sfsl(t_max=50)
    res = SpurgenObjective(1.0, 1.0, sfsl)(_step())
    assert res.parts["loss_sfsl"].item() == 0.0 and sfsl._decoder.vae.calls == []


def test_lambda_sfsl_zero_never_decodes():
    sfsl = _sfsl()
    res = SpurgenObjective(1.0, 0.0, sfsl)(_step())
    assert sfsl._decoder.vae.calls == [] and res.parts["loss_sfsl"].item() == 0.0
    assert not sfsl.extractor.seen  # f never ran: not on the references either
    res = SpurgenObjective(1.0, 0.0, None)(_step())  # no SFSL at all
    assert res.parts["loss_sfsl"].item() == 0.0 and res.sfsl_samples == 0


def test_prior_samples_get_no_sfsl_gradient():
    sfsl = _sfsl(t_max=1000)
    step = _step(t=(100, 100, 100, 100))
    res = SpurgenObjective(lambda_prior=0.0, lambda_sfsl=1.0, sfsl=sfsl)(step)
    (res.total - res.parts["loss_instance"]).backward()  # the SFSL part alone
    grad = step.model_out.grad
    assert grad[:2].abs().sum() > 0
    assert grad[2:].abs().sum() == 0


def test_every_n_steps_skips_steps():
    obj = SpurgenObjective(1.0, 1.0, _sfsl(t_max=1000, every_n_steps=3))
    computed = [obj(_step(), global_step=s).sfsl_samples > 0 for s in range(6)]
    assert computed == [True, False, False, True, False, False]


def test_extractor_runs_in_float32_without_autocast_on_references_and_decoded_images():
    sfsl = _sfsl(t_max=1000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = SpurgenObjective(1.0, 1.0, sfsl)(_step()).parts["loss_sfsl"]
    assert sfsl.extractor.seen == [(torch.float32, False)] * 2  # the references, then the decoded images
    assert value.dtype == torch.float32


def test_reference_features_are_computed_once_and_never_stored():
    sfsl = _sfsl()
    sfsl.prepare_target()
    first = sfsl.ref_features.clone()
    sfsl.prepare_target()
    SpurgenObjective(1.0, 1.0, sfsl)(_step(t=(10, 10, 10, 10)))
    assert len(sfsl.extractor.seen) == 2  # once for the references, once for the decoded batch
    assert not {"reference_images", "ref_features", "alphas_cumprod"} & set(sfsl.state_dict())
    again = _sfsl()  # a resumed run: the same images give the same features
    again.prepare_target()
    assert torch.equal(again.ref_features, first)
    sfsl.set_reference_images(torch.zeros(1, 3, 2, 2))  # new images: the features follow them
    assert torch.equal(sfsl.target_mean, torch.zeros(12))


def test_invalid_options_and_unprepared_states_are_rejected():
    with pytest.raises(ValueError, match="distance"):
        SpuriousFeatureSimilarityLoss(_Flatten(), distance="l1")
    with pytest.raises(ValueError, match="feature extractor"):
        SpuriousFeatureSimilarityLoss(None)
    with pytest.raises(ValueError, match=">= 0"):
        SpurgenObjective(lambda_prior=-1.0)
    with pytest.raises(ValueError, match="needs an SFSL"):
        SpurgenObjective(lambda_sfsl=0.1, sfsl=None)
    with pytest.raises(RuntimeError, match="never set"):
        SpuriousFeatureSimilarityLoss(_Flatten()).distance_to_reference(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match="not bound"):
        SpuriousFeatureSimilarityLoss(_Flatten())(
            torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.zeros(1)
        )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _sfsl(torch.full((1, 3, 2, 2), -1.0))


def test_mean_free_keeps_the_value_and_removes_only_the_channel_mean_gradient():
    """Method version 3: the SFSL's value is METHOD.md's; its gradient on eps_hat has zero spatial mean per
    sample and channel (no bias the sampler could integrate); without mean_free the same step's gradient has
    a mean, and mean_free's gradient is that gradient less its per-channel mean."""
    grads, values = {}, {}
    for mean_free in (True, False):
        step = _step(t=(100, 300, 100, 100))
        res = SpurgenObjective(0.0, 1.0, _sfsl(t_max=1000, mean_free=mean_free))(step)
        res.parts["loss_sfsl"].backward()
        grads[mean_free], values[mean_free] = step.model_out.grad[:2], res.parts["loss_sfsl"].item()
    assert values[True] == pytest.approx(values[False], abs=1e-7)
    assert grads[True].mean(dim=(2, 3)).abs().max() < 1e-7
    assert grads[False].mean(dim=(2, 3)).abs().max() > 1e-4
    centred = grads[False] - grads[False].mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(grads[True], centred, atol=1e-6)


def test_mean_free_is_the_default_of_the_config_and_the_class():
    import inspect

    from omegaconf import OmegaConf

    from spurgen.config import CONF_DIR, METHOD_VERSION

    node = OmegaConf.load(f"{CONF_DIR}/loss/default.yaml")
    assert node.sfsl.mean_free is True and METHOD_VERSION == "3"
    default = inspect.signature(SpuriousFeatureSimilarityLoss).parameters["mean_free"].default
    assert default is True
