"""The MVM periphery seen from outside: ADC step and full scale, the output noise, the I-V curve.

A zero input isolates the output noise (no conductance is driven, so read noise
does not enter); a sweep of all rows from zero to the read limit shows the ADC's
quantisation steps, if the array conducts enough its saturation, and the shape of
each column's current against voltage. Cells conduct more than ohmically as the
voltage rises (I = g V (1 + kappa V^2) to first order for the sinh-like curves of
filamentary devices); an MVM drives every row at its own voltage, so that curvature
is a systematic, input-dependent gain error unless the inputs are pre-distorted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers import ConverterSpec, Crossbar

from .options import PeripheryOptions


@dataclass
class PeripheryMeasurement:
    zero_outputs_a: np.ndarray    # (repeats, cols)
    sweep_v: np.ndarray           # (points,)
    sweep_outputs_a: np.ndarray   # (points, cols)
    declared: ConverterSpec


@dataclass(frozen=True)
class PeripheryFit:
    adc_step_a: float | None      # None: no quantisation resolvable
    adc_full_scale_a: float | None  # None: never saturated in the sweep
    output_noise_a: float | None  # None: below the ADC step
    output_noise_upper_a: float | None
    dac_bits: int | None
    adc_bits: int | None
    iv_cubic_per_v2: float | None = None  # kappa; None: no column carried enough current to fit it


def measure_periphery(xbar: Crossbar, options: PeripheryOptions) -> PeripheryMeasurement:
    rows, _ = xbar.shape
    declared = xbar.converters()
    zero = xbar.mvm(np.zeros((options.repeats, rows)))
    sweep = np.linspace(0.0, xbar.limits.max_read_voltage_v, options.sweep_points)
    if declared.dac_bits is not None and declared.dac_range_v:
        # On the DAC's own grid, so the voltages fitted against are the ones applied: off-grid
        # requests are rounded by up to half a code, an error as large as the I-V curvature.
        lsb = declared.dac_range_v / (2 ** (declared.dac_bits - 1) - 1)
        top = np.floor(xbar.limits.max_read_voltage_v / lsb + 1e-9)
        sweep = np.unique(np.minimum(np.floor(sweep / lsb + 0.5), top)) * lsb
    outputs = xbar.mvm(np.repeat(sweep[:, None], rows, axis=1))
    return PeripheryMeasurement(np.asarray(zero, np.float64), sweep, np.asarray(outputs, np.float64), declared)


def _quantum(values: np.ndarray) -> float | None:
    """The step of a quantised set of values, or None if they do not sit on a common grid."""
    levels = np.unique(values)
    if levels.size < 3:
        return None
    steps = np.diff(levels)
    step = float(steps.min())
    if step <= 0:
        return None
    codes = levels / step
    return step if np.allclose(codes, np.round(codes), atol=1e-3) else None


def fit_periphery(m: PeripheryMeasurement) -> PeripheryFit:
    """The converters and output noise; non-finite outputs (stored as measured) are left out of every estimate."""
    zero = m.zero_outputs_a[np.isfinite(m.zero_outputs_a)]
    sweep = m.sweep_outputs_a
    finite_sweep = sweep[np.isfinite(sweep)]
    step = _quantum(np.concatenate([zero, finite_sweep]))
    top = float(np.max(np.abs(finite_sweep))) if finite_sweep.size else 0.0
    # Saturation shows as the largest output repeated over the end of the sweep on some column.
    repeats = np.sum(np.isclose(np.abs(sweep), top, rtol=1e-9, atol=0), axis=0)
    full_scale = top if step is not None and top > 0 and repeats.max() > 3 else None
    noise = float(zero.std(ddof=1)) if zero.size > 1 else None
    upper = None
    if step is not None and noise == 0.0:
        # Every zero-input output rounded to the same code: the noise is below half a step.
        noise, upper = None, step / 2
    return PeripheryFit(step, full_scale, noise, upper, m.declared.dac_bits, m.declared.adc_bits,
                        fit_iv_cubic(m.sweep_v, m.sweep_outputs_a, step, full_scale))


def fit_iv_cubic(sweep_v: np.ndarray, outputs_a: np.ndarray, adc_step_a: float | None,
                 full_scale_a: float | None) -> float | None:
    """kappa of I = a V + a kappa V^3, the median over columns of a least-squares fit of each column.

    Points at or near saturation are left out; a column takes part only if its current reaches a
    hundred ADC steps (or, without a known step, a hundredth of the largest column), so that the
    cubic term, a few percent of the current, stands above quantisation."""
    v = np.asarray(sweep_v, np.float64)
    i = np.asarray(outputs_a, np.float64)
    top = np.abs(i[np.isfinite(i)]).max() if np.isfinite(i).any() else 0.0
    if top == 0 or v.size < 4:
        return None
    limit = 0.98 * (full_scale_a if full_scale_a is not None else np.inf)
    floor = 100 * adc_step_a if adc_step_a else top / 100
    basis = np.stack([v, v ** 3], axis=1)
    kappas = []
    for col in i.T:
        keep = np.isfinite(col) & (np.abs(col) < limit) & (v > 0)
        if keep.sum() < 4 or np.abs(col[keep]).max() < floor:
            continue
        (a, c), *_ = np.linalg.lstsq(basis[keep], col[keep], rcond=None)
        if a > 0:
            kappas.append(c / a)
    return float(np.median(kappas)) if kappas else None
