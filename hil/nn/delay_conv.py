"""Depthwise causal delay convolution with learnable spacings (DCLS-1D, Gaussian interpolation).

Each channel c has ``taps`` taps; tap j is a weight w[c, j] and a real-valued delay
p[c, j] ∈ [0, max_delay - 1] (in time steps). The dense kernel, indexed by delay d, is rebuilt
from them at every use:

    kernel[c, d] = Σ_j w[c, j] · φ_cj(d),   φ_cj(d) = softmax_d( -(d - p[c, j])² / (2σ²) )

i.e. a Gaussian bump per tap normalised over the span, so a tap keeps its weight whatever its
width. σ is not learned: it is a scheduled buffer (:meth:`DelayConv1d.set_sigma`,
:func:`sigma_schedule`), started wide so every position gets a gradient and narrowed towards
~0.23 (nearly one-hot), after which :meth:`DelayConv1d.round_positions` turns each tap into an
exact integer delay.

The output is causal: y[t, c] = Σ_d kernel[c, d] · x[t - d, c], so output t sees inputs
t - max_delay + 1 .. t.

Streaming keeps the last ``max_delay - 1`` inputs per channel; with the current input they form
the window (batch, channels, max_delay) whose product with the kernel is a block-diagonal
matrix-vector product, done through ``self.matvec(self.taps, window)``.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .analog import AnalogSpec, apply_weight_spec
from .blocks import Block, as_numpy
from .matvec import digital_matvec

SIGMA_END = 0.23


class DelayTaps(nn.Module):
    """The block-diagonal product window -> output of a :class:`DelayConv1d`, as a matvec layer.

    It owns no parameters: ``kernel()`` asks the parent for its current dense kernel
    (channels, max_delay), so an executor always sees the weights the parallel form uses.
    Input (batch, channels·max_delay) — the window flattened channel-major, window[c, d] = x_{t-d}
    — or (batch, channels, max_delay); output (batch, channels). Like a linear layer it exposes
    ``in_features``, ``out_features``, ``effective_weight()`` (the (C, C·max_delay)
    block-diagonal matrix) and ``bias`` (None).

    Like an :class:`~hil.nn.analog.AnalogLinear` it takes an ``analog`` spec: the kernel is then
    quantised and perturbed as the array would hold it (one row, with its own scale, per channel),
    in both the parallel and the streaming form.
    """

    bias = None

    def __init__(self, kernel_fn: Callable[[], torch.Tensor], channels: int, max_delay: int):
        super().__init__()
        # A bound method, not the parent module: registering the parent as a child would make
        # the module tree cyclic, while a bound method still deep-copies and pickles with it.
        self._kernel_fn = kernel_fn
        self.channels, self.max_delay = channels, max_delay
        self.in_features, self.out_features = channels * max_delay, channels
        self.analog: AnalogSpec | None = None
        self._chip: torch.Tensor | None = None

    def kernel(self) -> torch.Tensor:
        """The dense kernel (channels, max_delay) the products use now."""
        if self._chip is not None:
            return self._chip
        return apply_weight_spec(self._kernel_fn(), self.analog, self.training)

    def freeze_noise(self, generator: torch.Generator) -> None:
        """Draw one realisation of the array's perturbation and keep it: one programmed chip."""
        if self.analog is None:
            return
        with torch.no_grad():
            self._chip = apply_weight_spec(self._kernel_fn(), self.analog, True, generator)

    def unfreeze_noise(self) -> None:
        self._chip = None

    def effective_weight(self) -> torch.Tensor:
        return torch.block_diag(*self.kernel().unsqueeze(1))          # (C, C·max_delay)

    def crossbar_blocks(self) -> tuple[int, int, list[Block]]:
        """One block per channel, its taps only: the delays no tap sits on take no devices."""
        blocks = []
        for c, row in enumerate(as_numpy(self.kernel())):                # (C, D)
            used = np.flatnonzero(row != 0)
            if used.size:
                blocks.append(Block(c * self.max_delay + used, np.array([c]), row[None, used]))
        return self.in_features, self.out_features, blocks

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        window = window.reshape(window.shape[0], self.channels, self.max_delay)
        return torch.einsum("bcd,cd->bc", window, self.kernel())

    def extra_repr(self) -> str:
        return f"channels={self.channels}, max_delay={self.max_delay}"


class DelayConv1d(nn.Module):
    """Depthwise causal delay convolution: (batch, length, channels) -> (batch, length, channels).

    Parameters: ``weight`` and ``positions``, both (channels, taps). Buffers: ``sigma`` (the
    Gaussian width, in time steps) and ``integer_delays`` (set by :meth:`round_positions`; the
    kernel then puts each weight exactly at its rounded delay).
    """

    def __init__(self, channels: int, max_delay: int, taps: int, sigma: float | None = None):
        super().__init__()
        if max_delay < 1 or taps < 1:
            raise ValueError("max_delay and taps must be at least 1")
        self.channels, self.max_delay, self.taps_per_channel = channels, max_delay, taps
        self.weight = nn.Parameter(torch.empty(channels, taps))
        self.positions = nn.Parameter(torch.empty(channels, taps))
        self.register_buffer("sigma", torch.tensor(float(sigma if sigma is not None else max_delay / 3)))
        self.register_buffer("integer_delays", torch.tensor(False))
        self.taps = DelayTaps(self.kernel, channels, max_delay)
        self.matvec = digital_matvec
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.taps_per_channel)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.positions.uniform_(0.0, self.max_delay - 1)

    def set_sigma(self, sigma: float) -> None:
        self.sigma.fill_(float(sigma))

    def clamp_positions(self) -> None:
        """Keep every tap inside the span; call after each optimiser step."""
        with torch.no_grad():
            self.positions.clamp_(0.0, self.max_delay - 1)

    def round_positions(self, integer_delays: bool = True) -> None:
        """Round the delays to whole steps; with ``integer_delays`` the kernel becomes exactly sparse."""
        with torch.no_grad():
            self.positions.round_().clamp_(0.0, self.max_delay - 1)
            self.integer_delays.fill_(integer_delays)

    def delays(self) -> torch.Tensor:
        """The taps' integer delays (channels, taps), as used once rounded."""
        return self.positions.detach().round().clamp(0, self.max_delay - 1).long()

    def interpolation(self) -> torch.Tensor:
        """φ (channels, taps, max_delay): each tap's spread over the delays, summing to 1 per tap."""
        d = torch.arange(self.max_delay, device=self.positions.device, dtype=self.positions.dtype)
        if bool(self.integer_delays):
            return F.one_hot(self.delays(), self.max_delay).to(self.positions.dtype)
        # softmax is the normalised Gaussian, and stays finite even for a tap far outside the span
        logits = -(d - self.positions.unsqueeze(-1)) ** 2 / (2 * self.sigma**2)
        return torch.softmax(logits, dim=-1)

    def kernel(self) -> torch.Tensor:
        """The dense kernel (channels, max_delay); column d multiplies x_{t-d}."""
        return torch.einsum("ct,ctd->cd", self.weight, self.interpolation())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Parallel form: x (batch, length, channels) -> (batch, length, channels)."""
        u = F.pad(x.transpose(1, 2), (self.max_delay - 1, 0))    # (B, C, max_delay - 1 + L)
        # conv1d correlates: output t reads u[t + i] = x[t + i - (max_delay-1)], i.e. delay
        # max_delay-1-i, so the delay-indexed kernel is flipped.
        w = self.taps.kernel().flip(-1).unsqueeze(1)                # (C, 1, max_delay)
        return F.conv1d(u, w, groups=self.channels).transpose(1, 2)

    def init_state(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        """The past inputs, all zero: (batch, channels, max_delay - 1), [..., i] = x_{t-1-i}."""
        w = self.weight
        return torch.zeros(batch, self.channels, self.max_delay - 1,
                           device=device or w.device, dtype=dtype or w.dtype)

    def step(self, x_t: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t (batch, channels), past (batch, channels, max_delay-1) -> (y_t (batch, channels), past)."""
        window = torch.cat([x_t.unsqueeze(-1), past], dim=-1)      # (B, C, max_delay), [..., d] = x_{t-d}
        y = self.matvec(self.taps, window.reshape(window.shape[0], -1))
        return y, window[..., :-1]

    def state_size(self) -> int:
        """Numbers of streaming state per sequence: (max_delay - 1) past inputs per channel."""
        return (self.max_delay - 1) * self.channels

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, max_delay={self.max_delay}, taps={self.taps_per_channel}, "
                f"sigma={float(self.sigma):.3g}, integer_delays={bool(self.integer_delays)}")


def sigma_schedule(epoch: int, sigma_start: float, decay_epochs: int, sigma_end: float = SIGMA_END) -> float:
    """σ for ``epoch`` (0-based): geometric decay from ``sigma_start`` to ``sigma_end`` over
    ``decay_epochs`` epochs, then held, i.e. σ_e = σ_0 · α^min(e, E) with α = (σ_end/σ_0)^(1/E)."""
    if decay_epochs <= 0:
        return sigma_end
    return sigma_start * (sigma_end / sigma_start) ** (min(epoch, decay_epochs) / decay_epochs)


def delay_convs(model: nn.Module) -> Iterator[DelayConv1d]:
    return (m for m in model.modules() if isinstance(m, DelayConv1d))


def set_delay_sigma(model: nn.Module, sigma: float) -> None:
    for conv in delay_convs(model):
        conv.set_sigma(sigma)


def clamp_delay_positions(model: nn.Module) -> None:
    for conv in delay_convs(model):
        conv.clamp_positions()


def round_delay_positions(model: nn.Module, integer_delays: bool = True) -> None:
    for conv in delay_convs(model):
        conv.round_positions(integer_delays)
