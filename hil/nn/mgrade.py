"""mGRADE (Torchet et al. 2025): delay convolution followed by a minGRU, and its two baselines.

Block (the paper's exact ordering and norm placement are not public; this is a pre-norm
residual block, chosen because it keeps an un-normalised residual stream that stacks well and
because every piece of it streams one step at a time):

    u = LayerNorm(x)                        per time step
    u = DelayConv1d(u)                      depthwise learnable delays: the short-term cache
    u = MinGRU(u)                           d_model -> d_hidden: long-range context, u > 0
    u = LayerNorm(u)                        re-centres the positive minGRU state
    y = x + Dropout(MLP(u))                 MLP: d_hidden -> mlp_ratio·d_model -> d_model (GELU)

The MLP's output layer maps back to d_model, so d_hidden may differ from d_model without an
extra projection. The baselines drop one part: :class:`ConvBlock` has no MinGRU (a pure
convolutional, TCN-like stack, given a longer ``max_delay``), :class:`RecurrentBlock` no
DelayConv1d (a pure minGRU stack).

Model: encoder (AnalogLinear) -> blocks -> LayerNorm -> pool over time -> decoder
(AnalogLinear). Pooling comes before the decoder so that streaming keeps d_model numbers (the
running mean, or the last step's features) and runs the decoder once, in :meth:`readout`. The
pool is the mean over all steps by default; memory tasks read out the last step only
(``pool="last"``), since a running mean would carry an early cue to the end by itself and let a
model with a short receptive field pass a long-memory test.

Streaming memory (:meth:`streaming_state_bytes`) counts what must persist between steps of one
sequence: per DelayConv1d the (max_delay - 1)·d_model past inputs (the current input arrives with
the step and is not state), per MinGRU its d_hidden state, and the d_model pooled features of the
readout. Parameters are counted apart (:meth:`parameter_count`); the running mean's step counter
(one integer per sequence, the same for every model) and transient activations are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from hil.nn.analog import AnalogLinear
from hil.nn.delay_conv import DelayConv1d, clamp_delay_positions, delay_convs, sigma_schedule
from hil.nn.matvec import digital_matvec
from hil.nn.mingru import MinGRU


class MLP(nn.Module):
    """Two AnalogLinear layers with GELU between: (..., d_in) -> (..., d_out)."""

    def __init__(self, d_in: int, d_inner: int, d_out: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = AnalogLinear(d_in, d_inner)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = AnalogLinear(d_inner, d_out)
        self.matvec = digital_matvec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))

    def step(self, x_t: torch.Tensor) -> torch.Tensor:
        return self.matvec(self.fc2, self.drop(self.act(self.matvec(self.fc1, x_t))))


class _ResidualBlock(nn.Module):
    """x + MLP(LN(rnn(conv(LN(x))))), with the conv and/or the rnn present."""

    def __init__(self, d_model: int, *, max_delay: int | None, taps: int | None, recurrent: bool,
                 d_hidden: int | None, mlp_ratio: float, dropout: float, sigma: float | None):
        super().__init__()
        self.d_model = d_model
        self.norm_in = nn.LayerNorm(d_model)
        self.conv = DelayConv1d(d_model, max_delay, taps, sigma) if max_delay is not None else None
        self.rnn = MinGRU(d_model, d_hidden or d_model) if recurrent else None
        d_mix = self.rnn.d_hidden if self.rnn is not None else d_model
        self.norm_mix = nn.LayerNorm(d_mix)
        self.mlp = MLP(d_mix, int(mlp_ratio * d_model), d_model, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, length, d_model) -> (batch, length, d_model)."""
        u = self.norm_in(x)
        if self.conv is not None:
            u = self.conv(u)
        if self.rnn is not None:
            u = self.rnn(u)                                          # (B, L, d_hidden)
        return x + self.drop(self.mlp(self.norm_mix(u)))

    def init_state(self, batch: int, device=None, dtype=None) -> dict[str, torch.Tensor]:
        state = {}
        if self.conv is not None:
            state["past"] = self.conv.init_state(batch, device, dtype)     # (B, d_model, max_delay-1)
        if self.rnn is not None:
            state["hidden"] = self.rnn.init_state(batch, device, dtype)    # (B, d_hidden)
        return state

    def step(self, x_t: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """x_t (batch, d_model) -> (y_t (batch, d_model), next state)."""
        u = self.norm_in(x_t)
        new = {}
        if self.conv is not None:
            u, new["past"] = self.conv.step(u, state["past"])
        if self.rnn is not None:
            u = new["hidden"] = self.rnn.step(u, state["hidden"])
        return x_t + self.drop(self.mlp.step(self.norm_mix(u))), new

    def state_size(self) -> int:
        """Numbers of streaming state per sequence (see the module docstring)."""
        return sum(m.state_size() for m in (self.conv, self.rnn) if m is not None)


class MGradeBlock(_ResidualBlock):
    """DelayConv1d -> MinGRU -> LayerNorm -> MLP, pre-norm and residual; (B, L, d_model) -> same."""

    def __init__(self, d_model: int, max_delay: int, taps: int, d_hidden: int | None = None,
                 mlp_ratio: float = 2, dropout: float = 0.0, sigma: float | None = None):
        super().__init__(d_model, max_delay=max_delay, taps=taps, recurrent=True, d_hidden=d_hidden,
                         mlp_ratio=mlp_ratio, dropout=dropout, sigma=sigma)


class ConvBlock(_ResidualBlock):
    """DelayConv1d -> LayerNorm -> MLP, pre-norm and residual: no recurrence."""

    def __init__(self, d_model: int, max_delay: int, taps: int, mlp_ratio: float = 2,
                 dropout: float = 0.0, sigma: float | None = None):
        super().__init__(d_model, max_delay=max_delay, taps=taps, recurrent=False, d_hidden=None,
                         mlp_ratio=mlp_ratio, dropout=dropout, sigma=sigma)


class RecurrentBlock(_ResidualBlock):
    """MinGRU -> LayerNorm -> MLP, pre-norm and residual: no convolution."""

    def __init__(self, d_model: int, d_hidden: int | None = None, mlp_ratio: float = 2,
                 dropout: float = 0.0):
        super().__init__(d_model, max_delay=None, taps=None, recurrent=True, d_hidden=d_hidden,
                         mlp_ratio=mlp_ratio, dropout=dropout, sigma=None)


@dataclass
class StreamState:
    """Everything a model carries from one step to the next, for a batch of sequences."""

    blocks: list[dict[str, torch.Tensor]]
    mean: torch.Tensor      # (batch, d_model): what the readout decodes, the running mean of the final
                            # features, or with pool="last" the latest step's features
    steps: int = 0


Pool = Literal["mean", "last"]


class SequenceClassifier(nn.Module):
    """encoder -> blocks -> LayerNorm -> pool over time (``mean`` or ``last``) -> decoder; parallel
    and streaming forms."""

    def __init__(self, d_input: int, d_output: int, d_model: int, blocks: list[_ResidualBlock],
                 pool: Pool = "mean"):
        super().__init__()
        self.d_input, self.d_output, self.d_model = d_input, d_output, d_model
        if pool not in ("mean", "last"):
            raise ValueError(f"pool must be mean or last, got {pool!r}")
        self.pool = pool
        self.encoder = AnalogLinear(d_input, d_model)
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = nn.LayerNorm(d_model)
        self.decoder = AnalogLinear(d_model, d_output)
        self.matvec = digital_matvec

    def after_step(self) -> None:
        """Called by the training loop after each optimiser step: keep delays inside the span."""
        clamp_delay_positions(self)

    def after_epoch(self, epoch: int, epochs: int) -> None:
        """Narrow the delay interpolation over the first half of training (wide first, so every
        position gets a gradient; near one-hot at the end, so delays become precise)."""
        for conv in delay_convs(self):
            start = getattr(conv, "sigma_start", None)
            if start is None:
                start = conv.sigma_start = float(conv.sigma)
            conv.set_sigma(sigma_schedule(epoch + 1, start, max(epochs // 2, 1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, length, d_input) -> per-step features (batch, length, d_model), causal."""
        u = self.encoder(x)
        for block in self.blocks:
            u = block(u)
        return self.norm_out(u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, length, d_input) -> logits (batch, d_output)."""
        u = self.features(x)
        return self.decoder(u[:, -1] if self.pool == "last" else u.mean(dim=1))

    def init_state(self, batch: int, device=None, dtype=None) -> StreamState:
        w = self.encoder.weight
        device, dtype = device or w.device, dtype or w.dtype
        return StreamState(blocks=[b.init_state(batch, device, dtype) for b in self.blocks],
                           mean=torch.zeros(batch, self.d_model, device=device, dtype=dtype))

    def step(self, x_t: torch.Tensor, state: StreamState) -> StreamState:
        """Consume one input frame x_t (batch, d_input); returns the next state."""
        u = self.matvec(self.encoder, x_t)
        blocks = []
        for block, s in zip(self.blocks, state.blocks):
            u, s = block.step(u, s)
            blocks.append(s)
        u = self.norm_out(u)
        steps = state.steps + 1
        pooled = u if self.pool == "last" else state.mean + (u - state.mean) / steps
        return StreamState(blocks=blocks, mean=pooled, steps=steps)

    def readout(self, state: StreamState) -> torch.Tensor:
        """Logits (batch, d_output) for the sequence seen so far, from its pooled features."""
        return self.matvec(self.decoder, state.mean)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def streaming_state_numbers(self) -> int:
        """Numbers of streaming state per sequence: Σ blocks (delay buffers, minGRU states) + d_model."""
        return sum(b.state_size() for b in self.blocks) + self.d_model

    def streaming_state_bytes(self, batch: int = 1, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of state kept between steps for ``batch`` sequences stored as ``dtype``.

        Per block: (max_delay - 1)·d_model for a DelayConv1d, d_hidden for a MinGRU; plus the
        d_model pooled features. Parameters, the step counter and transient activations are not counted.
        """
        itemsize = torch.empty((), dtype=dtype).element_size()
        return batch * self.streaming_state_numbers() * itemsize

    def param_groups(self, lr: float, position_lr_factor: float = 100.0,
                     weight_decay: float = 0.0) -> list[dict]:
        """Optimiser groups: weights (with ``weight_decay``), biases and norms (no decay), and delay
        positions at ``lr · position_lr_factor`` without decay — positions move in whole time steps
        and need far larger updates than the weights. Empty groups are left out."""
        positions = {id(c.positions) for c in delay_convs(self)}
        groups = {"weights": [], "no_decay": [], "positions": []}
        for module in self.modules():
            for name, p in module.named_parameters(recurse=False):
                if id(p) in positions:
                    groups["positions"].append(p)
                elif isinstance(module, nn.LayerNorm) or name == "bias":
                    groups["no_decay"].append(p)
                else:
                    groups["weights"].append(p)
        settings = {"weights": (lr, weight_decay), "no_decay": (lr, 0.0),
                    "positions": (lr * position_lr_factor, 0.0)}
        return [{"name": k, "params": v, "lr": settings[k][0], "weight_decay": settings[k][1]}
                for k, v in groups.items() if v]


class MGradeModel(SequenceClassifier):
    """mGRADE: ``n_layers`` :class:`MGradeBlock` s. Receptive field of the convolutions alone:
    n_layers·(max_delay - 1) + 1 steps; the minGRUs carry context beyond it."""

    def __init__(self, d_input: int, d_output: int, d_model: int = 64, n_layers: int = 2,
                 max_delay: int = 16, taps: int = 4, d_hidden: int | None = None,
                 mlp_ratio: float = 2, dropout: float = 0.0, sigma: float | None = None, pool: Pool = "mean"):
        blocks = [MGradeBlock(d_model, max_delay, taps, d_hidden, mlp_ratio, dropout, sigma)
                  for _ in range(n_layers)]
        super().__init__(d_input, d_output, d_model, blocks, pool)


class ConvModel(SequenceClassifier):
    """Pure convolutional baseline (TCN-like): :class:`ConvBlock` s with a longer ``max_delay``;
    receptive field n_layers·(max_delay - 1) + 1 steps, memory grows with it."""

    def __init__(self, d_input: int, d_output: int, d_model: int = 64, n_layers: int = 2,
                 max_delay: int = 64, taps: int = 8, mlp_ratio: float = 2, dropout: float = 0.0,
                 sigma: float | None = None, pool: Pool = "mean"):
        blocks = [ConvBlock(d_model, max_delay, taps, mlp_ratio, dropout, sigma) for _ in range(n_layers)]
        super().__init__(d_input, d_output, d_model, blocks, pool)


class RecurrentModel(SequenceClassifier):
    """Pure recurrent baseline: :class:`RecurrentBlock` s (minGRU), constant memory per layer."""

    def __init__(self, d_input: int, d_output: int, d_model: int = 64, n_layers: int = 2,
                 d_hidden: int | None = None, mlp_ratio: float = 2, dropout: float = 0.0, pool: Pool = "mean"):
        blocks = [RecurrentBlock(d_model, d_hidden, mlp_ratio, dropout) for _ in range(n_layers)]
        super().__init__(d_input, d_output, d_model, blocks, pool)
