"""L_SFSL, the spurious feature similarity loss (METHOD.md, "spurgen's precise definition").

    z0_hat = (z_t - sqrt(1-ab_t)·eps_hat) / sqrt(ab_t)          epsilon prediction
    z0_hat = sqrt(ab_t)·z_t - sqrt(1-ab_t)·v_hat                 v-prediction
    x0_hat = D(z0_hat / s), mapped from [-1, 1] to [0, 1], resized to f's input size
    phi(x) = f's global-pool output (input of the final fc layer)
    L_SFSL = 1 - cos(phi(x0_hat), m),   m = mean_r phi(x_ref_r) / ||phi(x_ref_r)||        distance=cosine
    L_SFSL = mean_d (phi(x0_hat)_d - m_raw,d)^2,   m_raw = mean_r phi(x_ref_r)           distance=mse
             averaged over the instance samples with t <= t_max (zero, and not computed, if none)

eps_hat / v_hat is the model's own output, so gradients reach the UNet and the text encoder through the
frozen decoder D and the frozen extractor f. No clamp on this path: a clamp passes no gradient where it
saturates. Method version 3 (mean_free, the default): the value is METHOD.md's, but in z0_hat each channel's
spatial mean of eps_hat / v_hat is detached, so the SFSL cannot bias it (see SpuriousFeatureSimilarityLoss).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
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


@dataclass
class ExtractorPasses:
    """Images through the extractor f, forward and backward: the cost accounting of a run (run.json, `cost`).
    An image counts once per forward call of f and once when a gradient flows back through f's output."""

    forward: int = 0
    backward: int = 0

    def count(self, phi: torch.Tensor) -> torch.Tensor:
        """phi (N, D), f's output: N forward passes now, N backward passes if and when its gradient is taken."""
        n = int(phi.shape[0])
        self.forward += n
        if phi.requires_grad:
            phi.register_hook(partial(self._backward, n))
        return phi

    def _backward(self, n: int, grad: torch.Tensor) -> None:
        self.backward += n

    def as_dict(self) -> dict[str, int]:
        return {"forward": self.forward, "backward": self.backward}

    def restore(self, counts: dict) -> None:
        """A resumed run continues its counts from the checkpoint."""
        self.forward, self.backward = int(counts.get("forward", 0)), int(counts.get("backward", 0))


@dataclass(frozen=True)
class _Decoder:
    """The frozen VAE D and the schedule's prediction type, bound once by the module. A plain attribute, not a
    submodule: the module owns the VAE, so its weights appear once in the state dict (and not at all in
    checkpoints)."""

    vae: nn.Module
    prediction_type: str


class SpuriousFeatureSimilarityLoss(nn.Module):
    """L_SFSL (METHOD.md, "spurgen's precise definition"): one object holding everything the term needs.

    - the frozen extractor f (`extractor`, a submodule; it applies `layer` itself, so phi is its output);
    - the decode: the frozen VAE, alphas_cumprod and the prediction type, bound once by the module with
      `bind(vae, noise_scheduler)`;
    - the reference target: `set_reference_images(images)` stores the references (R, 3, H, W) in [0, 1]
      after the training transform (a non-persistent buffer); phi of each reference and m are computed from
      them by `prepare_target()` (the module calls it at fit start; otherwise the first forward does), once,
      on the loss's device, in float32 with autocast off. A resumed run or every DDP rank recomputes the
      same m from the same images; nothing of it is stored in checkpoints.

    Options (the loss.sfsl config node): distance (cosine | mse), reference (mean | nearest | paired), the
    t_max gate, decode_size, every_n_steps; decoder_checkpointing is a memory option that leaves the value
    unchanged; mean_free (on by default: method version 3) leaves the value unchanged but removes the
    gradient on each channel's spatial mean of the model output: with METHOD.md's plain gradient the SFSL
    teaches eps_hat a per-channel bias that raises one-step similarity but that the sampler integrates over its
    steps into a colour drift, lowering the generated images' similarity (measured in the mini world:
    docs/mini_world.md, "The SFSL fault and its fix").
    distance=mse compares unnormalised features, mean_d (phi(x0_hat)_d - m_raw,d)^2 with
    m_raw = mean_r phi(x_ref_r), so lambda_sfsl's scale differs from the cosine's (it follows ||phi||^2).
    reference=nearest takes, per sample, the reference closest under the distance in use (highest cosine, or
    smallest squared distance); reference=paired the sample's own reference (raw features for mse).

    Precision: f runs with autocast disabled, in float32, on the references and on the decoded images alike,
    so phi(x0_hat) and m are computed under the same precision (f's cost is small next to the decode). The
    decode itself keeps mixed precision where it is safe and never runs in float16.

    Only the gated instance samples are predicted, decoded and fed to f (`forward` indexes with the gate
    before decoding), so a step whose instance samples all have t > t_max costs no decoder at all.
    """

    def __init__(  # noqa: PLR0913 - mirrors the loss.sfsl config node, one keyword per open choice
        self,
        extractor: nn.Module,
        distance: str = "cosine",
        reference: str = "mean",
        t_max: int = 500,
        decode_size: int | None = None,
        every_n_steps: int = 1,
        decoder_checkpointing: bool = False,
        decode_at_extractor_size: bool = False,  # decode_size = f's input size (overrides decode_size)
        mean_free: bool = True,  # no SFSL gradient on the per-channel spatial mean of eps_hat / v_hat
    ):
        super().__init__()
        distance, reference = (
            str(getattr(distance, "value", distance)),
            str(getattr(reference, "value", reference)),
        )
        if distance not in ("cosine", "mse"):
            raise ValueError(f"distance must be cosine or mse, got {distance!r}")
        if reference not in ("mean", "nearest", "paired"):
            raise ValueError(f"reference must be mean, nearest or paired, got {reference!r}")
        if extractor is None or not hasattr(extractor, "features"):
            raise ValueError("the SFSL needs a frozen feature extractor with a features(x) method")
        self.extractor = extractor.requires_grad_(False).eval()
        self.distance, self.reference = distance, reference
        self.t_max, self.decode_size, self.every_n_steps = int(t_max), decode_size, int(every_n_steps)
        self.decoder_checkpointing = bool(decoder_checkpointing)
        self.decode_at_extractor_size = bool(decode_at_extractor_size)
        self.mean_free = bool(mean_free)
        self.passes = ExtractorPasses()  # images through f (cost accounting)
        self._decoder: _Decoder | None = None
        self.register_buffer("alphas_cumprod", torch.empty(0), persistent=False)  # (T,)
        self.register_buffer("reference_images", torch.empty(0), persistent=False)  # (R, 3, H, W)
        self.register_buffer("ref_features", torch.empty(0), persistent=False)  # (R, D) raw phi

    def train(self, mode: bool = True) -> SpuriousFeatureSimilarityLoss:
        super().train(mode)
        self.extractor.eval()  # frozen means frozen: BatchNorm statistics never move
        return self

    # -- set once per run ---------------------------------------------------------------------------------
    def bind(self, vae: nn.Module, noise_scheduler) -> SpuriousFeatureSimilarityLoss:
        """The decode: the frozen VAE D, the schedule's alphas_cumprod and prediction type."""
        kind = noise_scheduler.config.prediction_type
        if kind not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction type {kind!r} (epsilon or v_prediction)")
        self._decoder = _Decoder(vae, kind)
        ab = noise_scheduler.alphas_cumprod.detach().to(torch.float32)
        self.alphas_cumprod = ab.to(self.alphas_cumprod.device).clone()
        return self

    @torch.no_grad()
    def set_reference_images(self, images: torch.Tensor) -> None:
        """images: the references (R, 3, H, W) in [0, 1], after the training resize/crop. phi and m follow
        from them in `prepare_target`."""
        if images.ndim != 4 or images.shape[0] == 0 or images.shape[1] != 3:
            raise ValueError(f"reference images must be (R, 3, H, W) with R >= 1, got {tuple(images.shape)}")
        if float(images.min()) < 0 or float(images.max()) > 1:
            raise ValueError("reference images must be in [0, 1] (the training transform, before [-1, 1])")
        self.reference_images = images.detach().to(self.reference_images.device, torch.float32).clone()
        self.ref_features = self.ref_features.new_empty(0)  # recomputed from the new images

    @torch.no_grad()
    def prepare_target(self) -> None:
        """phi of each reference, (R, D), on the loss's device; a no-op once computed."""
        if self.ref_features.numel() > 0:
            return
        if self.reference_images.numel() == 0:
            raise RuntimeError("SFSL reference images were never set (sfsl.set_reference_images)")
        self.ref_features = self.features(self.reference_images)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """phi(x) = f(x) with autocast disabled, in float32 (references and decoded images alike).  (N, D)"""
        with torch.autocast(x.device.type, enabled=False):
            return self.passes.count(self.extractor.features(x.float()).float())

    def reference_points(self) -> torch.Tensor:
        """The references as the distance sees them: phi / ||phi|| for cosine, raw phi for mse.  (R, D)"""
        self.prepare_target()
        if self.distance == "cosine":
            return F.normalize(self.ref_features, dim=1)
        return self.ref_features

    @property
    def target_mean(self) -> torch.Tensor:
        """m = mean_r phi(x_ref_r) / ||phi(x_ref_r)|| (cosine), or m_raw = mean_r phi(x_ref_r) (mse).  (D,)"""
        return self.reference_points().mean(dim=0)

    # -- per step -------------------------------------------------------------------------------------------
    def active(self, step: int) -> bool:
        return step % self.every_n_steps == 0

    def gate(self, t: torch.Tensor) -> torch.Tensor:
        return t <= self.t_max

    def _targets(self, phi: torch.Tensor, pair_index: torch.Tensor | None) -> torch.Tensor:
        """The reference target of each sample.  phi (N, D) -> (N, D)"""
        refs = self.reference_points()
        if self.reference == "mean":
            return refs.mean(dim=0).expand_as(phi)
        if self.reference == "paired":
            if pair_index is None:
                raise ValueError("loss.sfsl.reference=paired needs the reference index of each sample")
            return refs[pair_index.to(refs.device)]
        with torch.no_grad():  # nearest: the closest reference under the distance in use
            if self.distance == "cosine":
                idx = (F.normalize(phi, dim=1) @ refs.T).argmax(dim=1)  # (N,)
            else:
                idx = torch.cdist(phi, refs).argmin(dim=1)
        return refs[idx]

    def distance_to_reference(
        self, phi: torch.Tensor, pair_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean distance of phi (N, D) to the reference target; a scalar."""
        phi = phi.float()
        tgt = self._targets(phi, pair_index)
        if self.distance == "cosine":
            return (1 - F.cosine_similarity(phi, tgt, dim=1)).mean()
        return F.mse_loss(phi, tgt)  # mean over samples and d of (phi_d - m_raw,d)^2: unnormalised

    def forward(
        self,
        z_t: torch.Tensor,
        model_out: torch.Tensor,
        t: torch.Tensor,
        pair_index: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The instance half only: z_t, model_out (N, 4, h, w), t (N,), pair_index (N,) or None.
        None when no sample passes the gate (nothing is decoded)."""
        if self._decoder is None:
            raise RuntimeError(
                "the SFSL is not bound to a VAE and schedule (sfsl.bind(vae, noise_scheduler))"
            )
        keep = self.gate(t)
        if not bool(keep.any()):
            return None
        ab = self.alphas_cumprod.to(t.device)[t[keep]]
        out = model_out[keep]
        if self.mean_free:  # same value; the gradient cannot shift each channel's mean (a bias the sampler
            mean = out.mean(dim=(2, 3), keepdim=True)  # integrates over its steps: docs/mini_world.md)
            out = out - mean + mean.detach()
        z0_hat = predict_z0(z_t[keep], out, ab, self._decoder.prediction_type)
        pairs = None if pair_index is None else pair_index[keep.to(pair_index.device)]
        return self.value_at(z0_hat, pairs)

    @property
    def prediction_type(self) -> str:
        if self._decoder is None:
            raise RuntimeError(
                "the SFSL is not bound to a VAE and schedule (sfsl.bind(vae, noise_scheduler))"
            )
        return self._decoder.prediction_type

    def value_at(self, z0_hat: torch.Tensor, pair_index: torch.Tensor | None = None) -> torch.Tensor:
        """L_SFSL of z0_hat (N, 4, h, w), averaged over N: x0_hat = D(z0_hat / s) in [0, 1], phi, the distance to
        the reference target. The training step and the sampler's guidance (spurgen/methods/guidance.py) both
        take this path."""
        if self._decoder is None:
            raise RuntimeError(
                "the SFSL is not bound to a VAE and schedule (sfsl.bind(vae, noise_scheduler))"
            )
        size = int(self.extractor.input_size) if self.decode_at_extractor_size else self.decode_size
        x0_hat = decode_to_unit(self._decoder.vae, z0_hat, size, self.decoder_checkpointing)
        phi = self.features(x0_hat)
        return self.distance_to_reference(phi, pair_index)
