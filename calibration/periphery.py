"""The MVM periphery seen from outside: ADC step and full scale, and the output noise.

A zero input isolates the output noise (no conductance is driven, so read noise
does not enter); a sweep of all rows from zero to the read limit shows the ADC's
quantisation steps and, if the array conducts enough, its saturation.
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


def measure_periphery(xbar: Crossbar, options: PeripheryOptions) -> PeripheryMeasurement:
    rows, _ = xbar.shape
    zero = xbar.mvm(np.zeros((options.repeats, rows)))
    sweep = np.linspace(0.0, xbar.limits.max_read_voltage_v, options.sweep_points)
    outputs = xbar.mvm(np.repeat(sweep[:, None], rows, axis=1))
    return PeripheryMeasurement(np.asarray(zero, np.float64), sweep, np.asarray(outputs, np.float64),
                                xbar.converters())


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
    step = _quantum(np.concatenate([m.zero_outputs_a.ravel(), m.sweep_outputs_a.ravel()]))
    top = float(np.max(np.abs(m.sweep_outputs_a)))
    # Saturation shows as the largest output repeated over the end of the sweep on some column.
    repeats = np.sum(np.isclose(np.abs(m.sweep_outputs_a), top, rtol=1e-9, atol=0), axis=0)
    full_scale = top if step is not None and repeats.max() > 3 else None
    noise = float(m.zero_outputs_a.std(ddof=1))
    upper = None
    if step is not None and noise == 0.0:
        # Every zero-input output rounded to the same code: the noise is below half a step.
        noise, upper = None, step / 2
    return PeripheryFit(step, full_scale, noise, upper, m.declared.dac_bits, m.declared.adc_bits)
