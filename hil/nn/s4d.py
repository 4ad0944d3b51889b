"""S4D: a diagonal state-space sequence layer (Gu, Gupta, Goel & Ré 2022) and a classifier built on it.

Per feature channel h the layer is the continuous system

    x'(t) = diag(λ) x(t) + 1 · u(t),    y(t) = 2 Re(C x(t)) + D u(t)

with M = N/2 complex modes (one member of each conjugate pair is kept, hence the 2 Re), discretised
exactly (zero-order hold) with a learnable step Δ per channel:

    Ā = exp(Δλ),    B̄ = (exp(Δλ) - 1) / λ.

Both forms read the system only through :meth:`S4D.discretize`, which returns real tensors and
passes them through ``param_transform`` first, so quantised or perturbed parameters reach the
training form and the streaming form alike:

* parallel (training): y = K * u + D u with K_l = 2 Re(Σ_n C_n B̄_n Ā_n^l), a causal FFT convolution;
* streaming (inference): per channel one (N+1)x(N+1) real matrix maps [x_{k-1}; u_k] to
  [x_k - x_{k-1}; y_k], so a single crossbar MVM per step advances the state and produces the
  output; the state itself is added back digitally. With the digital matvec the same step is the
  diagonal recurrence x_k = Ā x_{k-1} + B̄ u_k, y_k = 2 Re(C x_k) + D u_k, O(N) per channel
  instead of the O(N²) dense product (exact: the system is diagonal).

Outside autograd the streaming form computes the discrete system (and the stacked matrices) once
and reuses it until a parameter or the transform's state changes (:meth:`S4D.cached`), so a
sequence of any length costs one discretisation, not one per step.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .analog import AnalogLinear
from .blocks import Block, as_numpy
from .matvec import digital_matvec
from .s4d_analog import input_gain

Params = dict[str, torch.Tensor]

SSM_PARAMETER_NAMES = ("log_dt", "log_neg_real", "imag")


def identity_transform(params: Params) -> Params:
    return params


def causal_fft_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y_t = Σ_{l<=t} k_l u_{t-l} per channel; u (B, H, L), k (H, L) -> (B, H, L).

    Zero-padding both to 2L makes the FFT's circular convolution equal the linear one on the
    first L outputs (nothing wraps around from the end of the sequence to its start).
    """
    length = u.shape[-1]
    n = 2 * length
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)  # (B, H, 2L)
    return y[..., :length]


def _transform_token(transform) -> tuple | None:
    """The objects a transform's result depends on besides the parameters, or None when it may
    change between calls (a fresh noise draw, or a transform whose state is not known here).

    An :class:`~hil.nn.s4d_analog.S4DAnalog` is deterministic when it holds a frozen chip, has no
    spec, or would draw no noise; its result then follows its spec (frozen, so replaced rather
    than changed) or its chip. Both are kept in the token, so they stay alive and an ``is``
    comparison cannot confuse a new object with a freed one.
    """
    from .s4d_analog import S4DAnalog

    if transform is identity_transform:
        return (transform,)
    if isinstance(transform, S4DAnalog):
        if transform._chip is not None:
            return (transform, transform._chip)
        spec = transform.analog
        if spec is not None and spec.noise_model is not None and (transform.training or spec.noise_in_eval):
            return None
        return (transform, spec)
    return None


def complex_powers(a: torch.Tensor, length: int) -> torch.Tensor:
    """a^l for l = 0..length-1; a complex (...), result (..., length).

    exp(l log a) handles any nonzero a (inside or outside the unit circle, any phase). a = 0 is
    possible once the parameters are quantised (a ternary α and β may both round to zero); log 0
    would give nan, so zeros take a finite stand-in and get their exact powers (1, 0, 0, ...)
    back, while a · a^(l-1) keeps the derivative d a^1 / da = 1 there.
    """
    zero = a == 0
    safe = torch.where(zero, torch.ones_like(a), a)
    exponent = torch.arange(length - 1, device=a.device, dtype=a.real.dtype)
    lower = torch.exp(torch.log(safe)[..., None] * exponent)  # (..., L-1): a^0 .. a^(L-2)
    lower = torch.where(zero[..., None], (exponent == 0).to(lower.dtype), lower)
    return torch.cat([torch.ones_like(a)[..., None], a[..., None] * lower], dim=-1)


class S4D(nn.Module):
    """Diagonal SSM over H channels with N real state numbers (N/2 complex modes) each.

    Parameters (H channels, M = N/2 modes): ``log_neg_real`` (H, M) with Re λ = -exp(·) so every
    pole is stable whatever the optimiser does; ``imag`` (H, M) = Im λ; ``log_dt`` (H,);
    ``c_re``, ``c_im`` (H, M) = C; ``d`` (H,) = D. B is fixed at 1: a per-mode B would only scale C.
    Initialisation is S4D-Lin, λ_n = -1/2 + iπn.
    """

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        if d_state < 2 or d_state % 2:
            raise ValueError(f"d_state counts real numbers (two per complex mode) and must be even, got {d_state}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.d_model = d_model
        self.d_state = d_state
        modes = d_state // 2
        self.log_dt = nn.Parameter(torch.rand(d_model) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.log_neg_real = nn.Parameter(torch.full((d_model, modes), math.log(0.5)))
        self.imag = nn.Parameter(math.pi * torch.arange(modes, dtype=torch.float32).repeat(d_model, 1))
        # Complex standard normal: unit variance split evenly between the real and imaginary parts.
        self.c_re = nn.Parameter(torch.randn(d_model, modes) * math.sqrt(0.5))
        self.c_im = nn.Parameter(torch.randn(d_model, modes) * math.sqrt(0.5))
        self.d = nn.Parameter(torch.randn(d_model))
        self.param_transform: Callable[[Params], Params] = identity_transform
        self.matvec = digital_matvec
        self.recurrence = S4DRecurrence(self)
        self._cache: tuple | None = None    # (key, {name: value}), see cached()

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}"

    def discretize(self) -> Params:
        """The discrete system both forms use: :meth:`exact_discretization` through ``param_transform``."""
        return self.param_transform(self.exact_discretization())

    def exact_discretization(self) -> Params:
        """The ZOH discretisation of the layer's parameters, as real tensors.

        ``alpha``, ``beta`` (H, M): Ā = alpha + i beta; ``b_re``, ``b_im`` (H, M): B̄;
        ``c_re``, ``c_im`` (H, M): C (the output is 2 Re(C x)); ``d`` (H,): D.
        """
        dt = torch.exp(self.log_dt)[:, None]  # (H, 1)
        lam_re = -torch.exp(self.log_neg_real)  # (H, M)
        lam_im = self.imag
        a, b = dt * lam_re, dt * lam_im
        decay = torch.exp(a)
        alpha, beta = decay * torch.cos(b), decay * torch.sin(b)
        # Ā - 1 written so that it keeps its relative precision when Δλ is tiny (small Δ, low
        # modes): e^a cos b - 1 = expm1(a) cos b - 2 sin²(b/2), no cancellation between near-equal terms.
        num_re = torch.expm1(a) * torch.cos(b) - 2 * torch.sin(b / 2) ** 2
        num_im = beta
        # B̄ = (Ā - 1) / λ; λ ≠ 0 because Re λ < 0.
        norm = lam_re**2 + lam_im**2
        b_re = (num_re * lam_re + num_im * lam_im) / norm
        b_im = (num_im * lam_re - num_re * lam_im) / norm
        return {"alpha": alpha, "beta": beta, "b_re": b_re, "b_im": b_im,
                "c_re": self.c_re, "c_im": self.c_im, "d": self.d}

    def _cache_key(self) -> tuple | None:
        """What the discrete system depends on: the transform's token (identity compared) and each
        parameter's version counter, storage and dtype (an in-place update such as an optimiser
        step bumps the counter; ``.to()`` replaces the storage). None when nothing may be reused:
        under autograd every call must build its own graph, and a noisy transform draws anew."""
        params = (self.log_dt, self.log_neg_real, self.imag, self.c_re, self.c_im, self.d)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return None
        token = _transform_token(self.param_transform)
        if token is None:
            return None
        return token, tuple((p._version, p.data_ptr(), p.dtype) for p in params)

    def cached(self, name: str, build: Callable[[], object]):
        """``build()``, kept under ``name`` and reused while :meth:`_cache_key` is unchanged."""
        key = self._cache_key()
        if key is None:
            self._cache = None
            return build()
        if self._cache is not None:
            token, versions = self._cache[0]
            if not (len(token) == len(key[0]) and all(a is b for a, b in zip(token, key[0]))
                    and versions == key[1]):
                self._cache = None
        if self._cache is None:
            self._cache = (key, {})
        store = self._cache[1]
        if name not in store:
            store[name] = build()
        return store[name]

    def step_discretization(self) -> Params:
        """:meth:`discretize` for the streaming step: computed once per parameter state outside autograd."""
        return self.cached("params", self.discretize)

    @staticmethod
    def kernel_from(params: Params, length: int) -> torch.Tensor:
        """K_l = 2 Re(Σ_n C_n B̄_n Ā_n^l), l = 0..length-1 -> (H, L)."""
        a_bar = torch.complex(params["alpha"], params["beta"])  # (H, M)
        cb = torch.complex(params["c_re"], params["c_im"]) * torch.complex(params["b_re"], params["b_im"])
        powers = complex_powers(a_bar, length)  # (H, M, L)
        return 2 * torch.einsum("hm,hml->hl", cb, powers).real

    def kernel(self, length: int) -> torch.Tensor:
        """The convolution kernel (H, length) of the current (transformed) parameters."""
        return self.kernel_from(self.discretize(), length)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Parallel form: u (B, L, H) -> y (B, L, H)."""
        params = self.discretize()
        k = self.kernel_from(params, u.shape[1])  # (H, L)
        y = causal_fft_conv(u.transpose(1, 2), k).transpose(1, 2)  # (B, L, H)
        return y + params["d"] * u

    def init_state(self, batch: int) -> torch.Tensor:
        """Zero state (batch, H, N): per channel [Re x (M); Im x (M)]."""
        return self.log_dt.new_zeros(batch, self.d_model, self.d_state)

    def step(self, u_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Streaming form: u_t (B, H), state (B, H, N) -> (y_t (B, H), new state (B, H, N)).

        Any matvec other than the digital one (a crossbar executor, a recording or checking one)
        receives the stacked product with :attr:`recurrence`; the digital one would only compute
        that same product densely, so the step takes the O(N) diagonal form instead."""
        if self.matvec is digital_matvec:
            return self.diagonal_step(u_t, state)
        s = torch.cat([state, u_t[..., None]], dim=-1)  # (B, H, N+1)
        out = self.matvec(self.recurrence, s)  # (B, H, N+1): [x_k - x_{k-1}; y_k]
        return out[..., self.d_state], state + out[..., : self.d_state]

    def diagonal_step(self, u_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step as the complex recurrence, mode by mode: x = p + iq, x_k = Ā x_{k-1} + B̄ u_k,
        y_k = 2 Re(C x_k) + D u_k, in real arithmetic on the state layout of :meth:`init_state`."""
        rot_a, rot_b, b_in, c_out, d = self.cached("diagonal", self._diagonal_coefficients)
        x = state.unflatten(-1, (2, self.d_state // 2))  # (B, H, 2, M): [p; q]
        x = torch.addcmul(torch.addcmul(rot_a * x, rot_b, x.flip(-2)), b_in, u_t[..., None, None])
        y = (c_out * x).sum((-2, -1)) + d * u_t
        return y, x.flatten(-2)

    def _diagonal_coefficients(self) -> tuple[torch.Tensor, ...]:
        """The diagonal step's coefficients, each (H, 2, M) on the state viewed as [p; q] (D: (H,)):
        x_k = rot_a x_{k-1} + rot_b swap(x_{k-1}) + b_in u_k with swap([p; q]) = [q; p], i.e.
        p_k = α p - β q + Re B̄ u, q_k = α q + β p + Im B̄ u; and y_k = Σ c_out x_k + D u_k."""
        p = self.step_discretization()
        return (torch.stack([p["alpha"], p["alpha"]], -2), torch.stack([-p["beta"], p["beta"]], -2),
                torch.stack([p["b_re"], p["b_im"]], -2), torch.stack([2 * p["c_re"], -2 * p["c_im"]], -2), p["d"])


class S4DRecurrence(nn.Module):
    """The streaming step of an :class:`S4D` as one real (N+1)x(N+1) matrix per channel.

    With the state split into real and imaginary parts, x = p + iq, each complex mode becomes a
    scaled rotation, and folding the output row in gives, per channel,

        [x_k]   [ Ā_r       B̄_r       ] [x_{k-1}]      Ā_r = [[diag α, -diag β], [diag β, diag α]]
        [y_k] = [ c_r Ā_r   c_r B̄_r + D ] [ u_k   ],     B̄_r = [Re B̄; Im B̄],  c_r = [2 Re C, -2 Im C].

    The output row reads the previous state and the current input (y_k = c_r x_k + D u_k with
    x_k expanded), which is what lets the state update and the output come out of the same MVM.

    What the product computes (and a crossbar holds) is the residual form :meth:`crossbar_matrices`,
    the step matrix minus the identity on the state rows: the array produces x_k - x_{k-1} and the
    state is added back digitally. A pole near the unit circle then sits on the array as Ā - 1,
    which is small, so the array's errors (relative to each row's largest entry) move the pole by
    an amount proportional to |Ā - 1| instead of |Ā| ≈ 1: the long memories stay stable.
    This module owns no parameters: it reads them from its S4D.
    """

    def __init__(self, layer: S4D):
        super().__init__()
        # Kept outside the module tree: registering the parent as a child would make the tree
        # cyclic (state_dict and repr would recurse forever).
        object.__setattr__(self, "_layer", layer)

    def extra_repr(self) -> str:
        n = self._layer.d_state + 1
        return f"channels={self._layer.d_model}, block={n}x{n}"

    def block_matrices(self, params: Params | None = None) -> torch.Tensor:
        """Per-channel step matrices (H, N+1, N+1) from ``params`` (default: the S4D's :meth:`~S4D.discretize`)."""
        p = self._layer.discretize() if params is None else params
        alpha, beta = torch.diag_embed(p["alpha"]), torch.diag_embed(p["beta"])  # (H, M, M)
        a_r = torch.cat([torch.cat([alpha, -beta], dim=-1),
                         torch.cat([beta, alpha], dim=-1)], dim=-2)  # (H, N, N)
        b_r = torch.cat([p["b_re"], p["b_im"]], dim=-1)  # (H, N)
        c_r = torch.cat([2 * p["c_re"], -2 * p["c_im"]], dim=-1)  # (H, N)
        top = torch.cat([a_r, b_r[..., None]], dim=-1)  # (H, N, N+1)
        out_state = torch.einsum("hi,hij->hj", c_r, a_r)  # (H, N)
        out_input = (c_r * b_r).sum(-1) + p["d"]  # (H,)
        bottom = torch.cat([out_state, out_input[:, None]], dim=-1)[:, None, :]  # (H, 1, N+1)
        return torch.cat([top, bottom], dim=-2)  # (H, N+1, N+1)

    def crossbar_matrices(self, params: Params | None = None) -> torch.Tensor:
        """The residual step matrices (H, N+1, N+1): :meth:`block_matrices` minus the identity on the
        state rows, mapping [x_{k-1}; u_k] to [x_k - x_{k-1}; y_k]."""
        blocks = self.block_matrices(params)
        n = self._layer.d_state
        eye = torch.zeros(n + 1, n + 1, dtype=blocks.dtype, device=blocks.device)
        eye[:n, :n] = torch.eye(n, dtype=blocks.dtype, device=blocks.device)
        return blocks - eye

    def step_matrices(self) -> torch.Tensor:
        """:meth:`crossbar_matrices` of the step's discretisation, built once per parameter state
        outside autograd (see :meth:`S4D.cached`)."""
        layer = self._layer
        return layer.cached("residual", lambda: self.crossbar_matrices(layer.step_discretization()))

    def crossbar_blocks(self) -> tuple[int, int, list[Block]]:
        """Only the nonzero pattern of :meth:`crossbar_matrices` takes devices: per mode its two state rows
        read the mode's two state numbers and the input (2 x 3); per channel the output row reads
        everything. The pole's entries (Re Ā - 1 and Im Ā) are critical (see hil.nn.s4d_analog), and the
        input's column is balanced against the state's (input_gain), as training assumes."""
        mats = as_numpy(self.crossbar_matrices())          # (H, N+1, N+1)
        h, n1, _ = mats.shape
        modes = (n1 - 1) // 2
        critical = np.array([[True, True, False], [True, True, False]])
        blocks = []
        for c in range(h):
            base = c * n1
            for m in range(modes):
                lines = np.array([m, modes + m])
                cols = np.array([m, modes + m, n1 - 1])
                w = mats[c][np.ix_(lines, cols)]
                gain = np.array([1.0, 1.0, float(input_gain(np.abs(w[:, :2]).max(), np.abs(w[:, 2]).max()))])
                blocks.append(Block(base + cols, base + lines, w * gain, critical, gain))
            w = mats[c][n1 - 1:, :]
            gain = np.ones(n1)
            gain[-1] = float(input_gain(np.abs(w[0, :-1]).max(), abs(w[0, -1])))
            blocks.append(Block(base + np.arange(n1), np.array([base + n1 - 1]), w * gain, None, gain))
        return h * n1, h * n1, blocks

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """[state; u] (B, H, N+1) -> [next state - state; y] (B, H, N+1)."""
        return torch.einsum("hij,bhj->bhi", self.step_matrices(), s)


class S4DBlock(nn.Module):
    """One residual layer: S4D -> GELU -> dropout -> linear H->2H -> GLU -> dropout, added to the input,
    with LayerNorm after the sum (post-norm) or on the branch input (pre-norm)."""

    def __init__(self, d_model: int, d_state: int, dropout: float = 0.0, prenorm: bool = False,
                 dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        self.prenorm = prenorm
        self.s4d = S4D(d_model, d_state, dt_min=dt_min, dt_max=dt_max)
        self.out_linear = AnalogLinear(d_model, 2 * d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.matvec = digital_matvec

    def _branch_tail(self, y: torch.Tensor, linear: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        # Shared by both forms so that they differ only in how the products are computed.
        z = self.dropout(F.gelu(y))
        z = F.glu(linear(z), dim=-1)  # (..., 2H) -> (..., H)
        return self.dropout(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, H) -> (B, L, H)."""
        z = self.norm(x) if self.prenorm else x
        x = x + self._branch_tail(self.s4d(z), self.out_linear)
        return x if self.prenorm else self.norm(x)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t (B, H), SSM state (B, H, N) -> (output (B, H), new SSM state)."""
        z = self.norm(x_t) if self.prenorm else x_t
        y, state = self.s4d.step(z, state)
        x_t = x_t + self._branch_tail(y, lambda v: self.matvec(self.out_linear, v))
        return (x_t if self.prenorm else self.norm(x_t)), state


class S4DModel(nn.Module):
    """Sequence classifier: encoder -> n_layers S4D blocks -> pool over time -> decoder.

    ``pool`` is ``"mean"`` (over all steps) or ``"last"`` (the last step's features only, for memory
    tasks: a mean would carry an early cue to the end by itself)."""

    def __init__(self, d_input: int, d_output: int, d_model: int = 64, d_state: int = 64, n_layers: int = 2,
                 dropout: float = 0.0, prenorm: bool = False, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 pool: Literal["mean", "last"] = "mean"):
        super().__init__()
        if pool not in ("mean", "last"):
            raise ValueError(f"pool must be mean or last, got {pool!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.pool = pool
        self.encoder = AnalogLinear(d_input, d_model)
        self.layers = nn.ModuleList(S4DBlock(d_model, d_state, dropout, prenorm, dt_min, dt_max)
                                    for _ in range(n_layers))
        self.decoder = AnalogLinear(d_model, d_output)
        self.matvec = digital_matvec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Parallel form: x (B, L, d_input) -> logits (B, d_output)."""
        h = self.encoder(x)  # (B, L, H)
        for layer in self.layers:
            h = layer(h)
        pooled = h[:, -1] if self.pool == "last" else h.mean(dim=1)  # (B, H)
        return self.decoder(pooled)  # (B, d_output)

    def init_state(self, batch: int) -> dict:
        """Streaming state: ``ssm`` list of (batch, H, N) per layer, ``steps`` the number of steps
        taken, and (batch, H) of the last layer's outputs: ``sum`` of them so far (the mean pool,
        accumulated) or, with ``pool="last"``, ``last`` the latest one."""
        ref = self.encoder.weight
        pooled = "last" if self.pool == "last" else "sum"
        return {"ssm": [layer.s4d.init_state(batch) for layer in self.layers],
                pooled: ref.new_zeros(batch, self.d_model), "steps": 0}

    def step(self, x_t: torch.Tensor, state: dict) -> dict:
        """Consume one time step x_t (B, d_input); returns the new state (the old one is left unchanged)."""
        h = self.matvec(self.encoder, x_t)  # (B, H)
        ssm = []
        for layer, s in zip(self.layers, state["ssm"]):
            h, s = layer.step(h, s)
            ssm.append(s)
        if self.pool == "last":
            return {"ssm": ssm, "last": h, "steps": state["steps"] + 1}
        return {"ssm": ssm, "sum": state["sum"] + h, "steps": state["steps"] + 1}

    def readout(self, state: dict) -> torch.Tensor:
        """Logits (B, d_output) for the sequence consumed so far (its mean, or its last step)."""
        if state["steps"] == 0:
            raise ValueError("readout before any step: the pooled features are undefined")
        pooled = state["last"] if self.pool == "last" else state["sum"] / state["steps"]
        return self.matvec(self.decoder, pooled)

    def streaming_state_bytes(self, batch: int = 1, dtype: torch.dtype = torch.float32) -> int:
        """Bytes held between steps: N·H per layer for the SSM states plus H for the pooled features
        (the sum, or the last step's), per sequence. The step counter (one integer shared by the
        batch) is not counted."""
        numel = batch * (len(self.layers) * self.d_state * self.d_model + self.d_model)
        return numel * torch.empty((), dtype=dtype).element_size()

    def parameter_count(self) -> int:
        """Trainable parameters (C counts twice per mode: real and imaginary part)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def param_groups(self, lr: float, ssm_lr: float = 1e-3, weight_decay: float = 0.01) -> list[dict]:
        """AdamW groups: the SSM dynamics (log Δ, Re λ, Im λ) at ``ssm_lr`` without weight decay,
        matrices (linear weights, C) at ``lr`` with ``weight_decay``, and vectors (biases,
        LayerNorm, D) at ``lr`` without it.

        Weight decay on log Δ or log(-Re λ) would pull Δ and |Re λ| toward 1, i.e. toward a
        particular time scale, which is not a regulariser; hence none there.
        """
        ssm_ids = {id(getattr(m, name)) for m in self.modules() if isinstance(m, S4D) for name in SSM_PARAMETER_NAMES}
        ssm, decay, no_decay = [], [], []
        for p in self.parameters():
            if not p.requires_grad:
                continue
            if id(p) in ssm_ids:
                ssm.append(p)
            elif p.ndim >= 2:
                decay.append(p)
            else:
                no_decay.append(p)
        groups = [{"params": ssm, "lr": ssm_lr, "weight_decay": 0.0},
                  {"params": decay, "lr": lr, "weight_decay": weight_decay},
                  {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]
