"""Each loss of METHOD.md against a hand computation on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spurgen.losses import (
    SFSLContext,
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


def test_cosine_sfsl_uses_normalised_reference_mean():
    sfsl = SpuriousFeatureSimilarityLoss()
    refs = torch.tensor([[3.0, 0.0], [0.0, 10.0]])  # different norms: normalise before averaging
    sfsl.set_references(refs)
    assert torch.allclose(sfsl.target_mean, torch.tensor([0.5, 0.5]))
    phi = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    expected = ((1 - 1 / math.sqrt(2)) + 0.0) / 2  # cos((1,0),(.5,.5)) = 1/sqrt2; cos((1,1),(.5,.5)) = 1
    assert sfsl.distance_to_reference(phi).item() == pytest.approx(expected, abs=1e-6)


def test_sfsl_nearest_and_paired_references():
    refs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    phi = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    nearest = SpuriousFeatureSimilarityLoss(reference="nearest")
    nearest.set_references(refs)
    cos = F.cosine_similarity(phi, refs, dim=1)  # each sample is nearest to its own index
    assert nearest.distance_to_reference(phi).item() == pytest.approx((1 - cos).mean().item(), abs=1e-6)
    paired = SpuriousFeatureSimilarityLoss(reference="paired")
    paired.set_references(refs)
    swapped = F.cosine_similarity(phi, refs.flip(0), dim=1)
    got = paired.distance_to_reference(phi, torch.tensor([1, 0]))
    assert got.item() == pytest.approx((1 - swapped).mean().item(), abs=1e-6)


class _Identity2D(nn.Module):
    """Stands in for D and f: decode = identity on 4 channels -> first 3 channels."""

    class _Cfg:
        scaling_factor = 0.5
        block_out_channels = (1,)

    def __init__(self):
        super().__init__()
        self.config = self._Cfg()
        self.w = nn.Parameter(torch.ones(()))
        self.calls = 0

    def decode(self, z):
        self.calls += 1

        class Out:
            sample = z[:, :3] * self.w

        return Out

    def features(self, x):
        return x.flatten(1)


def _step(n_inst=2, n_prior=2, t=(100, 800, 100, 100), requires_grad=True):
    torch.manual_seed(0)
    b = n_inst + n_prior
    out = torch.randn(b, 4, 2, 2, requires_grad=requires_grad)
    return StepTensors(out, torch.randn(b, 4, 2, 2), torch.randn(b, 4, 2, 2), torch.tensor(t), n_inst)


def test_objective_weighting_and_t_max_gate_by_hand():
    fake = _Identity2D()
    ab = torch.linspace(0.99, 0.01, 1000)
    ctx = SFSLContext(vae=fake, extractor=fake, alphas_cumprod=ab, prediction_type="epsilon")
    sfsl = SpuriousFeatureSimilarityLoss(t_max=500)
    sfsl.set_references(torch.randn(3, 12))
    obj = SpurgenObjective(lambda_prior=0.5, lambda_sfsl=2.0, sfsl=sfsl)
    step = _step()
    res = obj(step, ctx)
    inst, prior = denoising_losses(step.model_out, step.target, 2)
    # only instance sample 0 (t=100) passes the gate; sample 1 has t=800 > t_max
    z0 = predict_z0(step.z_t[:1], step.model_out[:1], ab[step.t[:1]], "epsilon")
    x0 = (z0[:, :3] / 0.5 + 1) / 2
    manual_sfsl = 1 - F.cosine_similarity(x0.flatten(1), sfsl.target_mean[None], dim=1).mean()
    assert res.parts["loss_sfsl"].item() == pytest.approx(manual_sfsl.item(), abs=1e-5)
    assert res.total.item() == pytest.approx((inst + 0.5 * prior + 2.0 * manual_sfsl).item(), abs=1e-5)
    assert res.sfsl_samples == 1


def test_sfsl_zero_and_not_computed_when_no_sample_passes_the_gate():
    fake = _Identity2D()
    ctx = SFSLContext(fake, fake, torch.linspace(0.99, 0.01, 1000), "epsilon")
    sfsl = SpuriousFeatureSimilarityLoss(t_max=50)
    sfsl.set_references(torch.randn(2, 12))
    res = SpurgenObjective(1.0, 1.0, sfsl)(_step(), ctx)
    assert res.parts["loss_sfsl"].item() == 0.0 and fake.calls == 0


def test_lambda_sfsl_zero_never_decodes():
    fake = _Identity2D()
    ctx = SFSLContext(fake, fake, torch.linspace(0.99, 0.01, 1000), "epsilon")
    sfsl = SpuriousFeatureSimilarityLoss()
    res = SpurgenObjective(1.0, 0.0, sfsl)(_step(), ctx)
    assert fake.calls == 0 and res.parts["loss_sfsl"].item() == 0.0


def test_prior_samples_get_no_sfsl_gradient():
    fake = _Identity2D()
    ctx = SFSLContext(fake, fake, torch.linspace(0.99, 0.01, 1000), "epsilon")
    sfsl = SpuriousFeatureSimilarityLoss(t_max=1000)
    sfsl.set_references(torch.randn(2, 12))
    step = _step(t=(100, 100, 100, 100))
    res = SpurgenObjective(lambda_prior=0.0, lambda_sfsl=1.0, sfsl=sfsl)(step, ctx)
    (res.total - res.parts["loss_instance"]).backward()  # the SFSL part alone
    grad = step.model_out.grad
    assert grad[:2].abs().sum() > 0
    assert grad[2:].abs().sum() == 0


def test_every_n_steps_skips_steps():
    fake = _Identity2D()
    ctx = SFSLContext(fake, fake, torch.linspace(0.99, 0.01, 1000), "epsilon")
    sfsl = SpuriousFeatureSimilarityLoss(t_max=1000, every_n_steps=3)
    sfsl.set_references(torch.randn(2, 12))
    obj = SpurgenObjective(1.0, 1.0, sfsl)
    computed = [obj(_step(), ctx, global_step=s).sfsl_samples > 0 for s in range(6)]
    assert computed == [True, False, False, True, False, False]


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="distance"):
        SpuriousFeatureSimilarityLoss(distance="l1")
    with pytest.raises(ValueError, match=">= 0"):
        SpurgenObjective(lambda_prior=-1.0)
    with pytest.raises(RuntimeError, match="never set"):
        SpuriousFeatureSimilarityLoss().distance_to_reference(torch.randn(2, 3))
