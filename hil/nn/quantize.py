"""Weight and signal quantisers with straight-through gradients."""

from __future__ import annotations

import torch


def straight_through(value: torch.Tensor, quantised: torch.Tensor) -> torch.Tensor:
    """``quantised`` in the forward pass, the identity's gradient to ``value`` in the backward pass.

    Written as q + (v - v) rather than v + (q - v): the added term is exactly zero, so the forward
    value is exactly ``quantised`` (v + (q - v) can be off by a rounding error).
    """
    return quantised.detach() + (value - value.detach())


def ternary(weight: torch.Tensor, threshold_factor: float = 0.7) -> torch.Tensor:
    """Ternary Weight Networks (Li, Zhang & Liu 2016): values exactly {-s, 0, +s}.

    Entries with |w| above ``threshold_factor * mean|w|`` keep their sign; s is the mean magnitude of
    those entries, so the layer's scale is preserved.
    """
    w = weight.detach()
    delta = threshold_factor * w.abs().mean()
    keep = w.abs() > delta
    scale = w.abs()[keep].mean() if keep.any() else w.abs().max()
    q = torch.sign(w) * keep * scale
    return straight_through(weight, q)


def uniform(weight: torch.Tensor, bits: int, per_row: bool = False) -> torch.Tensor:
    """Symmetric uniform k-bit quantisation on the grid s * {-(2^(k-1)-1) .. 2^(k-1)-1}, s from max|w|
    (of the whole tensor, or of each row along the last dimension with ``per_row``)."""
    if bits < 2:
        raise ValueError(f"uniform quantisation needs at least 2 bits, got {bits}")
    levels = 2 ** (bits - 1) - 1
    w = weight.detach()
    top = w.abs().amax(dim=-1, keepdim=True) if per_row else w.abs().max()
    step = torch.where(top > 0, top / levels, torch.ones_like(top))
    return straight_through(weight, torch.round(w / step).clamp(-levels, levels) * step)


def absmax_signal(x: torch.Tensor, bits: int) -> torch.Tensor:
    """A converter with ``bits`` signed bits whose range follows each vector's largest magnitude."""
    levels = 2 ** (bits - 1) - 1
    top = x.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    return straight_through(x, torch.round(x.detach() / top * levels) / levels * top)
