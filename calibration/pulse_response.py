"""Conductance against pulse number for trains of identical SET and RESET pulses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers import Crossbar

from .options import PulseResponseOptions


@dataclass
class PulseResponseMeasurement:
    amplitudes_v: np.ndarray     # (A,)
    set_curves_s: np.ndarray     # (A, pulses + 1, cells): state before the train, then after each pulse
    reset_curves_s: np.ndarray   # (A, pulses + 1, cells)
    set_cells: np.ndarray        # (A, cells, 2) row, col of each device used
    reset_cells: np.ndarray
    pulse_width_s: float | None = None    # of every pulse of the trains (None: not recorded)


def _read_cells(xbar: Crossbar, cells: np.ndarray, read_voltage_v: float) -> np.ndarray:
    # One block read covering the devices' rows and columns, then pick the devices out of it.
    rows, r_idx = np.unique(cells[:, 0], return_inverse=True)
    cols, c_idx = np.unique(cells[:, 1], return_inverse=True)
    block = xbar.read(rows, cols, voltage_v=read_voltage_v)
    return block[r_idx, c_idx]


def _train(xbar: Crossbar, cells: np.ndarray, start_v: float, amplitude_v: float, options: PulseResponseOptions,
           read_voltage_v: float) -> np.ndarray:
    r, c = cells[:, 0], cells[:, 1]
    for _ in range(2):
        xbar.pulse(r, c, start_v, options.pulse_width_s)
    curve = [_read_cells(xbar, cells, read_voltage_v)]
    for _ in range(options.pulses):
        xbar.pulse(r, c, amplitude_v, options.pulse_width_s)
        curve.append(_read_cells(xbar, cells, read_voltage_v))
    return np.stack(curve)


def measure_pulse_response(xbar: Crossbar, options: PulseResponseOptions, read_voltage_v: float,
                           rng: np.random.Generator, usable: np.ndarray | None = None) -> PulseResponseMeasurement:
    """Each (amplitude, polarity) gets its own devices, chosen at random among ``usable`` ones."""
    shape = xbar.shape
    candidates = np.argwhere(usable if usable is not None else np.ones(shape, dtype=bool))
    n_amp = len(options.amplitudes_v)
    per_train = min(options.cells, len(candidates) // (2 * n_amp))
    if per_train < 1:
        raise ValueError(f"not enough usable devices for {2 * n_amp} pulse trains")
    chosen = candidates[rng.permutation(len(candidates))[:2 * n_amp * per_train]].reshape(2, n_amp, per_train, 2)
    sat = options.saturate_voltage_v
    set_curves, reset_curves = [], []
    for i, amplitude in enumerate(options.amplitudes_v):
        set_curves.append(_train(xbar, chosen[0, i], -sat, amplitude, options, read_voltage_v))
        reset_curves.append(_train(xbar, chosen[1, i], sat, -amplitude, options, read_voltage_v))
    return PulseResponseMeasurement(np.asarray(options.amplitudes_v), np.stack(set_curves), np.stack(reset_curves),
                                    chosen[0], chosen[1], options.pulse_width_s)
