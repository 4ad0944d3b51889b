"""minGRU (Feng et al. 2024, log-space variant): a GRU whose gates see only the current input.

    k_t, c_t = split(W x_t + b)              one (2·d_hidden × d_in) product per step
    z_t      = sigmoid(k_t)
    h_t      = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ g(c_t)

with g(v) = v + 0.5 for v ≥ 0 and sigmoid(v) for v < 0. g keeps the candidate positive, so the
whole recurrence h_t = a_t h_{t-1} + b_t can be computed in log space, and h stays positive.

Training uses Heinsen's log-space scan (cumsum + logcumsumexp, parallel over time); streaming
inference uses :meth:`MinGRU.step`, whose only weight product goes through ``self.matvec``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from hil.nn.analog import AnalogLinear
from hil.nn.matvec import digital_matvec


def g(v: torch.Tensor) -> torch.Tensor:
    """The positive candidate activation: v + 0.5 above zero, sigmoid below (continuous at 0)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def log_g(v: torch.Tensor) -> torch.Tensor:
    # torch.where evaluates both branches and back-propagates through both, so the log branch
    # must be finite for negative v too, or its NaN gradient poisons the selected branch.
    return torch.where(v >= 0, torch.log(F.relu(v) + 0.5), -F.softplus(-v))


def log_space_scan(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t with h_{-1} = 0, all in log space along dim 1; returns h (not log h).

    log h_t = A_t + logcumsumexp_{s≤t}(log b_s - A_s),  A_t = Σ_{s≤t} log a_s.
    """
    a_star = torch.cumsum(log_a, dim=1)
    return torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=1))


class MinGRU(nn.Module):
    """minGRU layer: (batch, length, d_in) -> hidden states (batch, length, d_hidden), all > 0.

    ``linear`` (an :class:`AnalogLinear`) produces ``[k; c]``: rows ``[:d_hidden]`` are the gate
    pre-activation k, rows ``[d_hidden:]`` the candidate pre-activation c.
    """

    def __init__(self, d_in: int, d_hidden: int, bias: bool = True):
        super().__init__()
        self.d_in, self.d_hidden = d_in, d_hidden
        self.linear = AnalogLinear(d_in, 2 * d_hidden, bias=bias)
        self.matvec = digital_matvec

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        """Parallel form. ``h0`` (batch, d_hidden), ≥ 0, is the state before x[:, 0]."""
        k, c = self.linear(x).chunk(2, dim=-1)                     # (B, L, d_hidden) each
        log_a = -F.softplus(k)                                      # log(1 - z)
        log_b = -F.softplus(-k) + log_g(c)                          # log(z · g(c))
        if h0 is None:
            return log_space_scan(log_a, log_b)
        # h0 enters as one extra leading term b_{-1} = h0 with a = 1; a zero state gives
        # log 0 = -inf, which logcumsumexp handles exactly.
        log_a = F.pad(log_a, (0, 0, 1, 0))                          # (B, L+1, d_hidden)
        log_b = torch.cat([torch.log(h0).unsqueeze(1), log_b], dim=1)
        return log_space_scan(log_a, log_b)[:, 1:]

    def init_state(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        """The zero state, (batch, d_hidden)."""
        w = self.linear.weight
        return torch.zeros(batch, self.d_hidden, device=device or w.device, dtype=dtype or w.dtype)

    def step(self, x_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One time step: x_t (batch, d_in), h (batch, d_hidden) -> next h (batch, d_hidden)."""
        k, c = self.matvec(self.linear, x_t).chunk(2, dim=-1)
        return torch.lerp(h, g(c), torch.sigmoid(k))

    def state_size(self) -> int:
        """Numbers of streaming state per sequence: the hidden vector."""
        return self.d_hidden

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_hidden={self.d_hidden}"
