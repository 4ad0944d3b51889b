"""Analog-aware layers: weights that will live on a crossbar, trained with its non-idealities.

``AnalogLinear`` is a drop-in ``nn.Linear``. With no :class:`AnalogSpec` (the default) it is exactly
the plain layer. With one it quantises its weights (straight-through) and, given a calibrated
:class:`~calibration.noise_model.NoiseModel`, perturbs them as the array would: each weight becomes a
differential pair of conductances scaled into the array's window, which gets programming noise,
stuck devices, drift to an evaluation time with global drift compensation, and read noise; inputs
and outputs pass through DAC and ADC quantisers. The perturbation is redrawn at every forward pass
in training (noise injection) and its gradient is the identity (straight-through).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from calibration.laws import drift_factor, read_sigma, relaxation_shift, telegraph_amplitude
from calibration.laws import programming_error
from calibration.noise_model import NoiseModel

from .blocks import Block, as_numpy
from .quantize import absmax_signal, straight_through, ternary, uniform


class AnalogSpec(BaseModel):
    """How a layer is trained for the array. Defaults: full precision, no noise."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    weights: Literal["float", "kbit", "ternary"] = "float"
    bits: int = Field(8, ge=2, le=16, description="weight bits when weights = kbit")
    noise_model: NoiseModel | None = None
    noise_scale: float = Field(1.0, ge=0, description="multiplies every injected noise")
    programming_noise: bool = True
    read_noise: bool = True
    stuck_cells: bool = True
    stuck_compensation: bool = Field(True, description="the mapping knows the stuck devices and programs their "
                                                       "partners around them")
    drift_time_s: float | None = Field(None, ge=0, description="drift the weights to this time after programming")
    drift_compensation: bool = True
    dac_bits: int | None = Field(None, ge=2, le=24, description="None: the noise model's, or exact without one")
    adc_bits: int | None = Field(None, ge=2, le=24, description="None: the noise model's, or exact without one")
    noise_in_eval: bool = False

    def converter_bits(self) -> tuple[int | None, int | None]:
        periphery = self.noise_model.periphery if self.noise_model is not None else None
        dac = self.dac_bits if self.dac_bits is not None else (periphery.dac_bits if periphery else None)
        adc = self.adc_bits if self.adc_bits is not None else (periphery.adc_bits if periphery else None)
        return dac, adc


def _interp(x: torch.Tensor, xp: list[float], fp: list[float]) -> torch.Tensor:
    """np.interp for tensors (constant beyond the ends)."""
    xp_t = torch.as_tensor(xp, dtype=x.dtype)
    fp_t = torch.as_tensor(fp, dtype=x.dtype)
    if len(xp) == 1:
        return fp_t.expand_as(x)
    idx = torch.searchsorted(xp_t, x.clamp(xp[0], xp[-1])).clamp(1, len(xp) - 1)
    x0, x1 = xp_t[idx - 1], xp_t[idx]
    f0, f1 = fp_t[idx - 1], fp_t[idx]
    t = (x.clamp(xp[0], xp[-1]) - x0) / (x1 - x0)
    return f0 + t * (f1 - f0)


def pair_targets(weight: np.ndarray, scale: np.ndarray, g_lo: float, g_hi: float, g_min: float, g_max: float,
                 stuck_pos: np.ndarray, stuck_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Conductances (m, k) of the positive and negative devices for ``weight`` (m, k), each row
    (output) spanning the weight window [g_lo, g_hi] at its ``scale`` (m,); leading dimensions
    broadcast.

    ``stuck_pos``/``stuck_neg`` hold the conductance of stuck devices (NaN where working): a stuck
    device keeps its value and its partner is set to keep the pair's difference, as far as the
    device window [g_min, g_max] allows.
    """
    span = g_hi - g_lo
    safe = np.where(scale > 0, scale, 1.0)[..., None]
    diff = weight / safe * span
    pos = g_lo + np.maximum(diff, 0)
    neg = g_lo + np.maximum(-diff, 0)
    sp, sn = np.isfinite(stuck_pos), np.isfinite(stuck_neg)
    pos = np.where(sn & ~sp, np.clip(np.nan_to_num(stuck_neg) + diff, g_min, g_max), pos)
    neg = np.where(sp & ~sn, np.clip(np.nan_to_num(stuck_pos) - diff, g_min, g_max), neg)
    pos = np.where(sp, stuck_pos, pos)
    neg = np.where(sn, stuck_neg, neg)
    return pos, neg


def perturb_weights(weight: torch.Tensor, spec: AnalogSpec, generator: torch.Generator | None = None,
                    working: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` as the array would realise it, with an identity gradient.

    Each row (the last dimension) is one crossbar output with its own digital rescale, so each row
    is mapped separately: its largest |w| spans the noise model's weight window g_hi - g_lo; w > 0
    raises the positive device of the pair, w < 0 the negative one, the other device sits at g_lo.

    Stuck devices are known from calibration, so (with ``stuck_compensation``) the mapping programs
    the partner of a stuck device to keep the pair's difference where the window allows: a stuck
    device then costs at most the weight itself, never a full-window error. Stuck devices neither
    take programming noise nor drift. ``working`` (a boolean mask broadcasting to ``weight``) marks
    entries the mapping places on working devices: they are never stuck.
    """
    model = spec.noise_model
    if model is None or spec.noise_scale == 0:
        return weight
    w = weight.detach()
    w_max = w.abs().amax(dim=-1, keepdim=True)
    if not bool((w_max > 0).any()):
        return weight
    g_min, g_max = model.window.g_min_s, model.window.g_max_s
    g_lo, g_hi = model.weight_window()
    span = g_hi - g_lo
    scale = spec.noise_scale

    def normal(like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, dtype=like.dtype, generator=generator)

    stuck = torch.zeros((2, *w.shape), dtype=torch.bool)
    stuck_value = torch.full((2, *w.shape), float("nan"), dtype=w.dtype)
    if spec.stuck_cells:
        u = torch.rand(stuck.shape, dtype=w.dtype, generator=generator)
        on_rate, off_rate = scale * model.defects.stuck_on_rate, scale * model.defects.stuck_off_rate
        on = u < on_rate
        stuck = u < on_rate + off_rate
        if working is not None:
            stuck = stuck & ~working.expand_as(w)
            on = on & stuck
        stuck_value = torch.where(on, torch.full_like(u, g_max), torch.full_like(u, g_min))
        levels = model.defects.stuck_levels_s
        if levels:
            # Where calibration found the stuck devices sitting, anywhere in the window.
            pick = torch.randint(len(levels), stuck.shape, generator=generator)
            stuck_value = torch.as_tensor(levels, dtype=w.dtype)[pick]
    # The pair as the mapping programs it (hil.mapping uses the same rule), partners of the stuck
    # devices compensating them when the mapping knows them.
    known = stuck if spec.stuck_compensation else torch.zeros_like(stuck)
    known_value = torch.where(known, stuck_value, torch.full_like(stuck_value, float("nan")))
    pos, neg = pair_targets(w.numpy(), w_max[..., 0].numpy(), g_lo, g_hi, g_min, g_max, known_value[0].numpy(),
                            known_value[1].numpy())
    pair = torch.from_numpy(np.stack([pos, neg])).to(w.dtype)
    if spec.programming_noise and model.programming is not None:
        prog = model.programming
        sigma = _interp(pair, prog.levels_s, prog.sigma_s)
        bias = _interp(pair, prog.levels_s, prog.bias_s)
        if prog.law in ("mixture", "skewed"):
            # A fraction of the devices lands in the wide tail write-verify leaves (calibration.laws).
            fraction = _interp(pair, prog.levels_s, prog.tail_fraction)
            width = _interp(pair, prog.levels_s, prog.tail_width_s)
            up, down = 0.5, None
            if prog.law == "skewed":
                up = _interp(pair, prog.levels_s, prog.tail_up)
                down = _interp(pair, prog.levels_s, prog.tail_width_down_s)
            u = torch.rand(pair.shape, dtype=pair.dtype, generator=generator)
            pair = pair + scale * programming_error(bias, sigma, fraction, width, normal(pair), u, up, down)
        else:
            # The normal law draws no uniform (u = 1 is never in a tail), so its draws stay what they were.
            pair = pair + scale * programming_error(bias, sigma, 0.0, 0.0, normal(pair), 1.0)
    if spec.drift_time_s is not None and model.drift is not None:
        d = model.drift
        programmed = pair
        if d.law in ("shift", "shift_g"):
            # An absolute relaxation of each device, in either direction (calibration.laws.relaxation_shift).
            if d.law == "shift_g":
                m, b1, b0 = (_interp(pair, d.levels_s, c) for c in (
                    d.shift_mean_by_level, d.shift_sigma_by_level, d.shift_sigma_early_by_level))
            else:
                m, b1, b0 = d.shift_mean_s, d.shift_sigma_s, d.shift_sigma_early_s
            pair = pair + relaxation_shift(spec.drift_time_s, d.t0_s, m, scale * b1, scale * b0, normal(pair))
        else:
            if d.law == "power_g":     # exponents by conductance, as calibration measured them
                nu = _interp(pair, d.levels_s, d.nu_mean_by_level) + \
                    scale * _interp(pair, d.levels_s, d.nu_std_by_level) * normal(pair)
            else:
                nu = d.nu_mean + scale * d.nu_std * normal(pair)
            pair = pair * drift_factor(spec.drift_time_s, d.t0_s, nu)
    else:
        programmed = pair
    if spec.stuck_cells:
        pair = torch.where(stuck, stuck_value, pair)
        programmed = torch.where(stuck, stuck_value, programmed)
    if spec.read_noise:
        # Read noise at the deployment time (1/f noise grows with the time since programming), of each
        # device at the conductance it was programmed to and has drifted to.
        age = spec.drift_time_s if spec.drift_time_s is not None else model.read.reference_age_s
        telegraph = 0.0
        if model.read.law == "telegraph":
            # Each drawn chip: a fraction of the devices carries a trap that switches, each with its own
            # amplitude from the law's distribution over devices.
            u = torch.rand(pair.shape, dtype=pair.dtype, generator=generator)
            telegraph = telegraph_amplitude(u, normal(pair), **model.read.telegraph_distribution())
        sigma = read_sigma(pair, **model.read.law_kwargs(age), g_programmed_s=programmed, telegraph=telegraph,
                           **model.read.telegraph_kwargs())
        pair = pair + scale * sigma * normal(pair)
    realised = (pair[0] - pair[1]) / span * w_max
    if spec.drift_time_s is not None and model.drift is not None and spec.drift_compensation:
        # Global drift compensation: one scalar per layer, as a reference MVM read before and after drift
        # gives it (hil.executor: an all-ones probe sums the conductance of both devices of every pair).
        if model.drift.law in ("shift", "shift_g"):
            # An absolute shift moves both devices of a pair alike and leaves the weight, but not the probe:
            # the gain is the probe's ratio, and it rescales weights the shift did not change.
            realised = realised * (programmed.sum() / pair.sum().clamp_min(1e-30))
        else:
            # Multiplicative drift scales the probe and the weights alike: restoring the total weight
            # magnitude is the probe's gain.
            realised = realised * (w.abs().sum() / realised.abs().sum().clamp_min(1e-30))
    return straight_through(weight, realised)


def apply_weight_spec(weight: torch.Tensor, spec: AnalogSpec | None, training: bool,
                      generator: torch.Generator | None = None, per_row: bool = False,
                      working: torch.Tensor | None = None) -> torch.Tensor:
    """Quantisation, then (in training, or in eval if asked) the array's perturbation.

    ``per_row``: k-bit quantisation takes one scale per row (last dimension) instead of one for the
    tensor, for weights whose rows hold values of very different size (the S4D recurrence).
    ``working``: entries placed on working devices (see :func:`perturb_weights`).
    """
    if spec is None:
        return weight
    if spec.weights == "ternary":
        weight = ternary(weight)
    elif spec.weights == "kbit":
        weight = uniform(weight, spec.bits, per_row=per_row)
    if spec.noise_model is not None and (training or spec.noise_in_eval):
        weight = perturb_weights(weight, spec, generator, working)
    return weight


class AnalogLinear(nn.Linear):
    """A linear layer whose product may be computed on a crossbar."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs):
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        self.analog: AnalogSpec | None = None
        self._chip: torch.Tensor | None = None

    def effective_weight(self) -> torch.Tensor:
        """The weight the product uses now (quantised and perturbed when analog training is on)."""
        if self._chip is not None:
            return self._chip
        return apply_weight_spec(self.weight, self.analog, self.training)

    def freeze_noise(self, generator: torch.Generator) -> None:
        """Draw one realisation of the array's perturbation and keep it: one programmed chip."""
        if self.analog is None:
            return
        with torch.no_grad():
            self._chip = apply_weight_spec(self.weight, self.analog, True, generator)

    def unfreeze_noise(self) -> None:
        self._chip = None

    def crossbar_blocks(self) -> tuple[int, int, list[Block]]:
        """One block: the weight as trained (quantised, no noise), its all-zero input columns left out."""
        w = as_numpy(apply_weight_spec(self.weight, self.analog, False))
        used = np.flatnonzero(np.any(w != 0, axis=0))
        return self.in_features, self.out_features, [Block(used, np.arange(w.shape[0]), w[:, used])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.analog
        if spec is None:
            return F.linear(x, self.weight, self.bias)
        dac, adc = spec.converter_bits()
        if dac is not None:
            x = absmax_signal(x, dac)
        if adc is None:
            # One fused product as in the plain layer: a separate "+ bias" rounds differently from
            # addmm on some BLAS builds, and a neutral spec must leave the layer exactly unchanged.
            return F.linear(x, self.effective_weight(), self.bias)
        y = absmax_signal(F.linear(x, self.effective_weight()), adc)
        return y if self.bias is None else y + self.bias


@contextmanager
def simulated_chip(model: nn.Module, seed: int):
    """Within the block, every analog layer uses one fixed draw of its perturbation (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    layers = [m for m in model.modules() if hasattr(m, "freeze_noise")]
    try:
        for layer in layers:
            layer.freeze_noise(generator)
        yield model
    finally:
        for layer in layers:
            layer.unfreeze_noise()


def configure_analog(model: nn.Module, spec: AnalogSpec | None, recurrent: AnalogSpec | None = None) -> int:
    """Give every analog layer of ``model`` its spec; returns how many layers took one.

    Recurrent blocks (``analog_role == "recurrent"``, e.g. the S4D recurrence) take ``recurrent``; without
    it they take ``spec`` at full weight precision, since coarse quantisation of poles near the unit
    circle destroys the memory they hold.
    """
    if recurrent is None and spec is not None:
        recurrent = spec.model_copy(update={"weights": "float"})
    n = 0
    for module in model.modules():
        if hasattr(module, "analog"):
            module.analog = recurrent if getattr(module, "analog_role", None) == "recurrent" else spec
            n += 1
    return n


__all__ = ["AnalogLinear", "AnalogSpec", "apply_weight_spec", "configure_analog", "perturb_weights",
           "simulated_chip"]
