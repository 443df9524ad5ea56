"""L_SFSL, the spurious feature similarity loss (METHOD.md, "spurgen's precise definition").

    z0_hat = (z_t - sqrt(1-ab_t)·eps_hat) / sqrt(ab_t)          epsilon prediction
    z0_hat = sqrt(ab_t)·z_t - sqrt(1-ab_t)·v_hat                 v-prediction
    x0_hat = D(z0_hat / s), mapped from [-1, 1] to [0, 1], resized to f's input size
    phi(x) = f's global-pool output (input of the final fc layer)
    L_SFSL = 1 - cos(phi(x0_hat), m),   m = mean_r phi(x_ref_r) / ||phi(x_ref_r)||
             averaged over the instance samples with t <= t_max (zero, and not computed, if none)

eps_hat / v_hat is the model's own output, so gradients reach the UNet and the text encoder through the
frozen decoder D and the frozen extractor f. No clamp on this path: a clamp passes no gradient where it
saturates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def predict_z0(
    z_t: torch.Tensor, model_out: torch.Tensor, alpha_bar_t: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """z0_hat from the model's own prediction.  z_t, model_out: (N, 4, h, w); alpha_bar_t: (N,)."""
    ab = alpha_bar_t.to(torch.float32).view(-1, 1, 1, 1)
    z_t, out = z_t.float(), model_out.float()
    if prediction_type == "epsilon":
        return (z_t - (1 - ab).sqrt() * out) / ab.sqrt()
    if prediction_type == "v_prediction":
        return ab.sqrt() * z_t - (1 - ab).sqrt() * out
    raise ValueError(f"unsupported prediction type {prediction_type!r}")


def _decode_precision(device_type: str):
    """Never decode with gradients in float16 (it overflows): leave fp16 autocast, keep bf16/fp32."""
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16:
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


@contextmanager
def checkpointed_decoder(vae: nn.Module, enabled: bool = True) -> Iterator[None]:
    """While active, the decoder recomputes its mid and up blocks in backward instead of storing their
    activations (torch.utils.checkpoint; same values, less memory, one more decoder forward).

    Uses diffusers' Decoder switch, which checks `torch.is_grad_enabled() and self.gradient_checkpointing`
    and so works in eval mode too (diffusers 0.42; experiments/bench.py measures the peak-memory drop).
    Only this decode is affected: the flag is restored afterwards, the encoder and sampling never see it.
    """
    decoder = getattr(vae, "decoder", None)
    if not enabled:
        yield
        return
    if decoder is None or not hasattr(decoder, "gradient_checkpointing"):
        raise ValueError("loss.sfsl.decoder_checkpointing needs a diffusers AutoencoderKL-style VAE")
    if getattr(decoder, "_gradient_checkpointing_func", None) is None:
        decoder._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
    previous = decoder.gradient_checkpointing
    decoder.gradient_checkpointing = True
    try:
        yield
    finally:
        decoder.gradient_checkpointing = previous


def decode_to_unit(
    vae: nn.Module, z0_hat: torch.Tensor, decode_size: int | None = None, checkpointing: bool = False
) -> torch.Tensor:
    """x0_hat = D(z0_hat / s) mapped to [0, 1].  (N, 4, h, w) -> (N, 3, H, W); not clamped.

    decode_size=None decodes at full resolution; an int decodes z0_hat resized to decode_size / 8
    (the VAE's downsampling factor) latents, a cheaper approximation (METHOD.md, open choices).
    checkpointing=True trades decoder activations for a second decoder forward in backward (same values).
    """
    s = vae.config.scaling_factor
    if decode_size is not None:
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        side = max(1, decode_size // factor)
        if z0_hat.shape[-1] != side:
            z0_hat = F.interpolate(z0_hat, size=(side, side), mode="bilinear", align_corners=False)
    vae_dtype = next(vae.parameters()).dtype
    if vae_dtype == torch.float16:
        raise ValueError("the SFSL decodes with gradients: the VAE must be float32 or bfloat16, not float16")
    with _decode_precision(z0_hat.device.type), checkpointed_decoder(vae, checkpointing):
        x = vae.decode((z0_hat / s).to(vae_dtype)).sample
    return (x.float() + 1) / 2


class SpuriousFeatureSimilarityLoss(nn.Module):
    """L_SFSL with its open choices: distance (cosine | mse), reference (mean | nearest | paired),
    t_max gate, decode_size, every_n_steps; decoder_checkpointing is a memory option that leaves the value
    unchanged. The references' features are set once per run.

    Only the gated instance samples are predicted, decoded and fed to f (`forward` indexes with the gate
    before decoding), so a step whose instance samples all have t > t_max costs no decoder at all."""

    def __init__(
        self,
        distance: str = "cosine",
        reference: str = "mean",
        t_max: int = 500,
        decode_size: int | None = None,
        every_n_steps: int = 1,
        layer: str = "pool",  # applied by the extractor (which module phi reads); recorded here
        decoder_checkpointing: bool = False,
        decode_at_extractor_size: bool = False,  # decode_size = f's input size (overrides decode_size)
    ):
        super().__init__()
        self.layer = layer
        distance, reference = (
            str(getattr(distance, "value", distance)),
            str(getattr(reference, "value", reference)),
        )
        if distance not in ("cosine", "mse"):
            raise ValueError(f"distance must be cosine or mse, got {distance!r}")
        if reference not in ("mean", "nearest", "paired"):
            raise ValueError(f"reference must be mean, nearest or paired, got {reference!r}")
        self.distance, self.reference = distance, reference
        self.t_max, self.decode_size, self.every_n_steps = int(t_max), decode_size, int(every_n_steps)
        self.decoder_checkpointing = bool(decoder_checkpointing)
        self.decode_at_extractor_size = bool(decode_at_extractor_size)
        self.register_buffer("ref_features", torch.empty(0), persistent=False)  # (R, D), unit norm

    @torch.no_grad()
    def set_references(self, features: torch.Tensor) -> None:
        """features: phi of the reference images (R, D), after the training resize/crop."""
        if features.ndim != 2 or features.shape[0] == 0:
            raise ValueError(f"reference features must be (R, D) with R >= 1, got {tuple(features.shape)}")
        self.ref_features = F.normalize(features.float(), dim=1)

    @property
    def target_mean(self) -> torch.Tensor:
        """m = mean over references of phi(x_ref) / ||phi(x_ref)||.  (D,)"""
        return self.ref_features.mean(dim=0)

    def active(self, step: int) -> bool:
        return step % self.every_n_steps == 0

    def gate(self, t: torch.Tensor) -> torch.Tensor:
        return t <= self.t_max

    def distance_to_reference(
        self, phi: torch.Tensor, pair_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean distance of phi (N, D) to the reference target; a scalar."""
        if self.ref_features.numel() == 0:
            raise RuntimeError("SFSL reference features were never set (set_references)")
        phi = phi.float()
        if self.reference == "mean":
            tgt = self.target_mean.expand_as(phi)
        elif self.reference == "paired":
            if pair_index is None:
                raise ValueError("loss.sfsl.reference=paired needs the reference index of each sample")
            tgt = self.ref_features[pair_index]
        else:  # nearest: the reference closest in cosine to each sample
            sims = F.normalize(phi, dim=1) @ self.ref_features.T  # (N, R)
            tgt = self.ref_features[sims.argmax(dim=1)]
        if self.distance == "cosine":
            return (1 - F.cosine_similarity(phi, tgt, dim=1)).mean()
        # mse between unit-normalised features: scale-free like the cosine
        return F.mse_loss(F.normalize(phi, dim=1), F.normalize(tgt, dim=1))

    def forward(
        self,
        z_t: torch.Tensor,
        model_out: torch.Tensor,
        t: torch.Tensor,
        alphas_cumprod: torch.Tensor,
        prediction_type: str,
        vae: nn.Module,
        extractor: nn.Module,
        pair_index: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The instance half only: z_t, model_out (N, 4, h, w), t (N,). None when no sample passes the gate."""
        keep = self.gate(t)
        if not bool(keep.any()):
            return None
        ab = alphas_cumprod.to(t.device)[t[keep]]
        z0_hat = predict_z0(z_t[keep], model_out[keep], ab, prediction_type)
        size = int(extractor.input_size) if self.decode_at_extractor_size else self.decode_size
        x0_hat = decode_to_unit(vae, z0_hat, size, self.decoder_checkpointing)
        phi = extractor.features(x0_hat)
        return self.distance_to_reference(phi, None if pair_index is None else pair_index[keep])
