"""Projected gradient ascent (PGD, Madry et al. 2018) on images in [0, 1], in an L2 or L-infinity ball.

    delta_0     = a small random start inside the ball (zero gradient at delta = 0 for a loss at its minimum)
    delta_{k+1} = Proj_{B(eps) ∩ [0,1] - x}( delta_k + alpha * g_k / ||g_k||_2 )     norm = l2
                = Proj_{B(eps) ∩ [0,1] - x}( delta_k + alpha * sign(g_k) )          norm = linf
with g_k the gradient of `loss(x + delta_k)` (summed over the batch: each image's step depends on its own
loss only). The L2 projection scales each image's delta back onto the ball; the box clamp comes after it,
which can only shrink the norm, so the result stays inside both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NORMS = ("l2", "linf")


def _flat_norm(t: torch.Tensor) -> torch.Tensor:  # (B, 1, 1, 1)
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (t.ndim - 1))


def project(delta: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """delta projected onto the eps-ball of `norm`, then clamped so that x + delta stays in [0, 1]."""
    if norm == "l2":
        delta = delta * (eps / _flat_norm(delta)).clamp(max=1.0)
    elif norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
    return (x + delta).clamp(0, 1) - x


def random_start(
    x: torch.Tensor, eps: float, norm: str, generator: torch.Generator, scale: float
) -> torch.Tensor:
    """A start inside the ball: Gaussian noise scaled to `scale`·eps (L2: each image's delta has norm
    scale·eps; L∞: each entry uniform in ±scale·eps), projected."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    if norm == "l2":
        delta = noise * (scale * eps / _flat_norm(noise))
    else:
        delta = (torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1) * (scale * eps)
    return project(delta, x, eps, norm)


def pgd(  # noqa: PLR0913 - the attack's settings, all but loss_fn, x, eps and steps with defaults
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: float,
    steps: int,
    norm: str = "l2",
    alpha: float | None = None,
    generator: torch.Generator | None = None,
    start_scale: float = 0.001,
) -> torch.Tensor:
    """The perturbation delta (same shape as x, no grad) that ascends `loss_fn(x + delta)` (per-image losses,
    (B,)) for `steps` steps of size alpha (default 2.5·eps/steps, Madry's rule) inside the eps-ball of `norm`
    and the [0, 1] box. eps = 0 or steps = 0 returns zeros (steps = 0 with a start: the start)."""
    if eps <= 0:
        return torch.zeros_like(x)
    alpha = 2.5 * eps / max(steps, 1) if alpha is None else alpha
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    x = x.detach()
    delta = random_start(x, eps, norm, gen, start_scale) if start_scale > 0 else torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x + delta).sum(), delta)
        with torch.no_grad():
            step = grad / _flat_norm(grad) if norm == "l2" else grad.sign()
            delta = project(delta + alpha * step, x, eps, norm)
    return delta.detach()
