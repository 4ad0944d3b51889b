"""A calibration's raw measurements under the names they are stored by, and a calibration rebuilt from them.

The calibrate step stores every raw array of a :class:`~calibration.pipeline.Calibration` with a name
("window.after_reset", "read_noise.reads", "drift.mean", ...), a kind, a unit and a small JSON ``meta``
(the drift times, the programming levels, ...). :func:`raw_arrays` gives that list;
:func:`calibration_from_raw` is its inverse for the measurements the fits use (window, pulse response,
programming, read noise, drift), so that measurements read back from the database, or imported from a
file, go through the same fits as those measured live.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .drift import DriftMeasurement
from .options import CalibrationOptions, ProgrammingOptions
from .programming import ProgrammingMeasurement
from .pulse_response import PulseResponseMeasurement
from .read_noise import ReadNoiseMeasurement
from .window import WindowMeasurement

# What the window stage calls stuck when nothing says otherwise (calibration.options.WindowOptions).
DEFAULT_STUCK_FRACTION = 0.2
DEFAULT_READ_VOLTAGE_V = 0.2


@dataclass(frozen=True)
class RawArray:
    """One stored raw array: ``values`` in ``unit``, of ``kind``, with its ``meta``."""

    name: str
    kind: str
    unit: str
    values: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def raw_arrays(cal) -> list[RawArray]:
    """Every raw array of ``cal`` (a Calibration), as measured (NaN and infinities included)."""
    out: list[RawArray] = []
    v = cal.options.read_voltage_v

    def put(name, kind, unit, values, **meta):
        out.append(RawArray(name, kind, unit, values, meta))

    if cal.window is not None:
        fraction = cal.window.stuck_fraction
        put("window.after_reset", "conductance", "S", cal.window.low_reads_s, read_voltage_v=v,
            stuck_fraction=fraction)
        put("window.after_set", "conductance", "S", cal.window.high_reads_s, read_voltage_v=v,
            stuck_fraction=fraction)
    if cal.pulse_response is not None:
        pr = cal.pulse_response
        put("pulse_response.set", "conductance", "S", pr.set_curves_s, amplitudes_v=pr.amplitudes_v.tolist(),
            read_voltage_v=v, pulse_width_s=pr.pulse_width_s)
        put("pulse_response.reset", "conductance", "S", pr.reset_curves_s, amplitudes_v=(-pr.amplitudes_v).tolist(),
            read_voltage_v=v, pulse_width_s=pr.pulse_width_s)
        put("pulse_response.set_cells", "cell_index", "1", pr.set_cells)
        put("pulse_response.reset_cells", "cell_index", "1", pr.reset_cells)
    if cal.programming is not None:
        p = cal.programming
        settle = cal.options.programming.settle_s if cal.options.programming is not None else None
        put("programming.targets", "target_conductance", "S", p.targets_s, levels_s=p.levels_s.tolist(),
            level_source=cal.levels.source if cal.levels else None)
        put("programming.achieved", "conductance", "S", p.achieved_s, reads=p.reads, write_verify=p.write_verify,
            settle_s=settle, read_voltage_v=v)
    if cal.read_noise is not None:
        put("read_noise.reads", "conductance", "S", cal.read_noise.reads_s, age_s=cal.read_noise.age_s,
            read_voltage_v=v)
    if cal.drift is not None:
        put("drift.mean", "conductance", "S", cal.drift.mean_s, times_s=cal.drift.times_s.tolist(),
            reads=cal.drift.reads, read_voltage_v=v)
        if cal.drift.var_s is not None:
            # read noise at each drift time: what the read-noise law's time dependence was chosen from
            put("drift.variance", "conductance_variance", "S^2", cal.drift.var_s, times_s=cal.drift.times_s.tolist(),
                reads=cal.drift.reads)
    if cal.check is not None:
        c = cal.check
        put("check.cells", "cell_index", "1", c.cells)
        put("check.targets", "target_conductance", "S", c.targets_s, levels_s=c.levels_s.tolist())
        put("check.achieved", "conductance", "S", c.achieved_s, reads=c.programming_reads, write_verify=c.write_verify)
        if c.reads_s is not None:
            put("check.reads", "conductance", "S", c.reads_s)
        if c.drift is not None:
            put("check.drift", "conductance", "S", c.drift.mean_s, times_s=c.drift.times_s.tolist(), reads=c.drift.reads)
    if cal.periphery is not None:
        put("periphery.zero_input", "current", "A", cal.periphery.zero_outputs_a)
        put("periphery.sweep", "current", "A", cal.periphery.sweep_outputs_a, sweep_v=cal.periphery.sweep_v.tolist())
    return out


def device_stats(cal) -> dict[str, np.ndarray]:
    """The per-device statistics the calibrate step stores with its raw arrays."""
    devices: dict[str, np.ndarray] = {}
    if cal.window is not None:
        devices.update(g_min_s=cal.window.g_min_s, g_max_s=cal.window.g_max_s, stuck_on=cal.stuck_on,
                       stuck_off=cal.stuck_off, unreadable=cal.window.unreadable)
    if cal.programming is not None:
        devices["programming_error_s"] = cal.programming.error_s[-1]
    if cal.read_noise is not None:
        devices["read_sigma_s"] = cal.read_noise.std_s
    if cal.drift is not None and cal.drift_fit is not None:
        devices["drift_nu"] = cal.drift_fit.nu
    return devices


def options_for(read_voltage_v: float | None, settle_s: float | None) -> CalibrationOptions:
    """Options describing measurements that were not taken from options: the fits read only the read
    voltage (recorded with the noise model) and the programming stage's settling time (the age of the
    achieved reads). The stages themselves are None: nothing is to be measured."""
    programming = None if settle_s is None else ProgrammingOptions.model_construct(settle_s=float(settle_s))
    return CalibrationOptions.model_construct(
        read_voltage_v=float(read_voltage_v if read_voltage_v is not None else DEFAULT_READ_VOLTAGE_V),
        window=None, pulse_response=None, programming=programming, read_noise=None, drift=None, periphery=None,
        check=None)


def calibration_from_raw(arrays: Mapping[str, tuple[np.ndarray, Mapping[str, Any] | None]]):
    """A Calibration holding the measurements named in ``arrays`` (name -> (values, meta)), as
    :func:`raw_arrays` names them; the held-out check and the periphery are not rebuilt (the check is a
    verdict on the model fitted then, the periphery needs the converters the instrument declared).
    Nothing is fitted: see :func:`calibration.pipeline.fit_measured`."""
    from .pipeline import Calibration

    def get(name):
        values, meta = arrays.get(name, (None, None))
        return (None, {}) if values is None else (np.asarray(values), dict(meta or {}))

    voltages = [meta.get("read_voltage_v") for _, meta in arrays.values() if meta and meta.get("read_voltage_v")]
    achieved, achieved_meta = get("programming.achieved")
    cal = Calibration(options_for(voltages[0] if voltages else None, achieved_meta.get("settle_s")))
    low, low_meta = get("window.after_reset")
    high, _ = get("window.after_set")
    if low is not None and high is not None:
        cal.window = WindowMeasurement(low.astype(np.float64), high.astype(np.float64),
                                       float(low_meta.get("stuck_fraction", DEFAULT_STUCK_FRACTION)))
    set_curves, set_meta = get("pulse_response.set")
    reset_curves, _ = get("pulse_response.reset")
    set_cells, _ = get("pulse_response.set_cells")
    reset_cells, _ = get("pulse_response.reset_cells")
    if all(a is not None for a in (set_curves, reset_curves, set_cells, reset_cells)):
        cal.pulse_response = PulseResponseMeasurement(np.asarray(set_meta["amplitudes_v"], np.float64), set_curves,
                                                      reset_curves, set_cells, reset_cells,
                                                      set_meta.get("pulse_width_s"))
    targets, targets_meta = get("programming.targets")
    if achieved is not None and targets is not None:
        levels = np.asarray(targets_meta["levels_s"], np.float64)
        index = _level_index(targets, levels)
        cal.programming = ProgrammingMeasurement(levels, index, achieved.astype(np.float64),
                                                 int(achieved_meta.get("reads", 1)), 0.0,
                                                 list(achieved_meta.get("write_verify") or []))
    reads, reads_meta = get("read_noise.reads")
    if reads is not None:
        age = reads_meta.get("age_s")
        cal.read_noise = ReadNoiseMeasurement(reads.astype(np.float64), None if age is None else float(age))
    mean, mean_meta = get("drift.mean")
    if mean is not None:
        var, _ = get("drift.variance")
        cal.drift = DriftMeasurement(np.asarray(mean_meta["times_s"], np.float64), mean.astype(np.float64),
                                     int(mean_meta.get("reads", 1)), None if var is None else var.astype(np.float64))
    return cal


def _level_index(targets: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """The index into ``levels`` of each target (the nearest level; 0 where the target is NaN)."""
    t = np.where(np.isfinite(targets), targets, levels[0])
    return np.abs(t[..., None] - levels).argmin(axis=-1)
