"""The PCA encoder (experiments/mini_world/pca_encoder.py): an AutoencoderKL encoder whose weights compute
principal components of 4x4 patches, checked against the projection computed directly."""

from __future__ import annotations

import pytest
import torch

from experiments.mini_world import pca_encoder
from experiments.mini_world.vae import VaeTrainConfig, build_mini_vae, fit_patch_pca, train_vae
from spurgen.errors import SpurgenError


def _images(n: int, seed: int) -> torch.Tensor:
    """Smooth random images in [-1, 1] with some fine texture: patches with structure for PCA to find."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(coarse, size=64, mode="bilinear", align_corners=False)
    return (x + 0.2 * torch.randn(n, 3, 64, 64, generator=g)).clamp(-1, 1)


def test_patch_vectors_put_each_4x4_patch_in_row_column_channel_order():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    v = pca_encoder.patch_vectors(x)
    assert v.shape == (2, 2, 2, 48)
    b, i, j, r, c, ch = 1, 1, 0, 2, 3, 1
    assert v[b, i, j, (r * 4 + c) * 3 + ch] == x[b, ch, 4 * i + r, 4 * j + c]


def test_unproject_inverts_project_with_all_components_and_approximates_with_fewer():
    x = _images(4, 5)
    full = pca_encoder.fit(_images(16, 0), 48)
    torch.testing.assert_close(
        pca_encoder.unproject(full, pca_encoder.project(full, x)), x, atol=1e-4, rtol=0
    )
    part = pca_encoder.fit(_images(16, 0), 12)
    err = (pca_encoder.unproject(part, pca_encoder.project(part, x)) - x).pow(2).mean()
    assert 0 < err < x.var()


def test_components_are_orthonormal_sorted_and_their_kept_variance_is_a_fraction():
    pca = pca_encoder.fit(_images(16, 0), 12)
    assert pca.basis.shape == (48, 12)
    assert torch.allclose(pca.basis.T @ pca.basis, torch.eye(12), atol=1e-5)
    assert (pca.variances[:-1] >= pca.variances[1:]).all()
    assert 0.5 < pca.kept_variance < 1.0


@pytest.mark.parametrize("components", [4, 12])
def test_the_encoder_computes_the_projection_on_images_it_was_not_fitted_on(components):
    pca = pca_encoder.fit(_images(16, 0), components)
    vae = pca_encoder.install(build_mini_vae(latent_channels=components, norm_groups=1), pca)
    x = _images(4, 1)
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
    expected = pca_encoder.project(pca, x)
    assert posterior.mean.shape == (4, components, 16, 16)
    # float32 GroupNorm over constants of 300: measured max error 0.005 against latents of std ~1
    assert (posterior.mean - expected).abs().max() < 0.02
    assert torch.allclose(posterior.std, torch.full_like(posterior.std, float(torch.exp(torch.tensor(-7.0)))))
    assert not any(p.requires_grad for p in vae.encoder.parameters())
    assert all(p.requires_grad for p in vae.decoder.parameters())


def test_the_encoder_survives_a_save_and_reload_in_float32(tmp_path):
    from diffusers import AutoencoderKL

    from experiments.mini_world.pretrain import save_vae

    pca = pca_encoder.fit(_images(16, 0), 12)
    vae = pca_encoder.install(build_mini_vae(latent_channels=12, norm_groups=1), pca)
    save_vae(vae, tmp_path / "vae", half=False)
    loaded = AutoencoderKL.from_pretrained(tmp_path / "vae", torch_dtype=torch.float32)
    x = _images(2, 2)
    with torch.no_grad():
        z = loaded.encode(x).latent_dist.mean
    assert (z - pca_encoder.project(pca, x)).abs().max() < 0.02


def test_an_architecture_it_cannot_be_written_into_is_refused_by_name():
    pca = pca_encoder.fit(_images(8, 0), 12)
    with pytest.raises(SpurgenError, match="one GroupNorm group"):
        pca_encoder.install(build_mini_vae(latent_channels=12, norm_groups=8), pca)
    with pytest.raises(SpurgenError, match="latent_channels = components"):
        pca_encoder.install(build_mini_vae(latent_channels=4, norm_groups=1), pca)
    with pytest.raises(SpurgenError, match="block widths"):
        pca_encoder.install(build_mini_vae((16, 16, 32), latent_channels=12, norm_groups=1), pca)


def test_training_with_the_pca_encoder_moves_only_the_decoder():
    cfg = VaeTrainConfig(steps=2, batch=2, latent_channels=12, norm_groups=1, encoder="pca", pca_crops=8,
                         perceptual_weight=0.0)  # fmt: skip
    torch.manual_seed(cfg.seed)
    before = build_mini_vae(cfg.channels, cfg.latent_channels, cfg.norm_groups)
    pca_encoder.install(before, fit_patch_pca(cfg), cfg.pca_logvar)
    vae, res = train_vae(cfg, log=lambda _: None)
    assert len(res.first_losses) == 2
    for (name, a), b in zip(before.state_dict().items(), vae.state_dict().values(), strict=True):
        if name.startswith(("encoder.", "quant_conv.")):
            assert torch.equal(a, b), name
    assert not torch.equal(before.decoder.conv_out.weight, vae.decoder.conv_out.weight)


def test_an_unknown_encoder_kind_is_a_one_line_error():
    with pytest.raises(SpurgenError, match="'learned' or 'pca'"):
        train_vae(VaeTrainConfig(steps=1, batch=1, encoder="vq"), log=lambda _: None)


def test_the_command_trains_a_pca_autoencoder_and_stores_it_in_float32(tmp_path):
    import json

    from safetensors import safe_open

    from experiments.mini_world.pretrain import MANIFEST, main

    rc = main(["--part", "vae", "--out", str(tmp_path), "--steps", "1", "--batch", "1", "--no-gate",
               "--encoder", "pca", "--norm-groups", "1", "--latent-channels", "12", "--perceptual-weight", "0"])  # fmt: skip
    assert rc == 0
    record = json.loads((tmp_path / MANIFEST).read_text())["parts"]["vae"]
    assert record["config"]["encoder"] == "pca" and record["storage"] == "float32"
    with safe_open(tmp_path / "vae" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


def test_the_command_refuses_a_pca_encoder_with_several_groups(capsys):
    from experiments.mini_world.pretrain import main

    with pytest.raises(SystemExit) as info:
        main(["--part", "vae", "--encoder", "pca", "--norm-groups", "8"])
    assert info.value.code == 2 and "--norm-groups 1" in capsys.readouterr().err


def test_equalising_latent_channels_is_exact_and_gives_unit_stds():
    """quant_conv divides each latent channel by its std, post_quant_conv multiplies it back: D(E(x)) is
    unchanged, the channels come out with unit std on the crops measured, and the posterior std scales too."""
    from experiments.mini_world.vae import _scaling_crops, equalise_latent_channels, reconstruct

    pca = pca_encoder.fit(_images(16, 0), 12)
    vae = pca_encoder.install(build_mini_vae(latent_channels=12, norm_groups=1), pca, logvar=-6.0).eval()
    x = _images(3, 3)
    before = reconstruct(vae, x)
    with torch.no_grad():
        std_before = vae.encode(x).latent_dist.std
    stds = equalise_latent_channels(vae, seed=0, n=32)
    assert len(stds) == 12 and min(stds) > 0
    torch.testing.assert_close(reconstruct(vae, x), before, atol=1e-5, rtol=0)
    with torch.no_grad():
        z = vae.encode(_scaling_crops(0, 32)).latent_dist.mean
        std_after = vae.encode(x).latent_dist.std
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.ones(12), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        std_after, std_before / torch.tensor(stds).view(1, 12, 1, 1), rtol=1e-4, atol=0
    )


def test_the_pca_recipe_is_one_flag_and_flags_still_override_it():
    from experiments.mini_world.pretrain import parse_args
    from experiments.mini_world.vae import PCA_RECIPE

    args = parse_args(["--part", "vae", "--recipe", "pca", "--steps", "5"])
    assert args.steps == 5 and args.photo_splits == PCA_RECIPE["photo_splits"]
    for key in ("lr", "encoder", "latent_channels", "norm_groups", "augment", "train_crop", "pca_logvar",
                "equalise_channels", "perceptual_weight"):  # fmt: skip
        assert getattr(args, key) == PCA_RECIPE[key], key
    shipped = parse_args(["--part", "vae"])  # the shipped recipe is the default
    assert all(getattr(shipped, key) == value for key, value in PCA_RECIPE.items())
    assert not shipped.equalise_channels  # the shipped generator trained on the PCA scales
    learned = parse_args(["--part", "vae", "--recipe", "learned"])
    assert learned.encoder == VaeTrainConfig.encoder == "learned" and learned.latent_channels == 4
