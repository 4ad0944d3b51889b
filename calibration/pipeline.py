"""A whole calibration over the Crossbar interface: measure each part, then fit the NoiseModel.

Order matters: the window pass finds the stuck devices that later parts leave out, the
pulse trains disturb only a few devices and come before programming, and read noise and
drift are measured on the state the last programming round left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from drivers import Crossbar

from .drift import DriftFit, DriftMeasurement, fit_drift, measure_drift
from .noise_model import (ConductanceWindow, Defects, Drift, NoiseModel, Periphery, ProgrammingNoise, ReadNoise)
from .options import CalibrationOptions
from .periphery import PeripheryFit, PeripheryMeasurement, fit_periphery, measure_periphery
from .programming import ProgrammingMeasurement, measure_programming
from .pulse_response import PulseResponseMeasurement, measure_pulse_response
from .read_noise import ReadNoiseFit, ReadNoiseMeasurement, fit_read_noise, measure_read_noise
from .window import WindowMeasurement, measure_window

# (stage, fraction of that stage done, message) for progress displays
Progress = Callable[[str, float, str], None]


@dataclass
class Calibration:
    """Every raw measurement of one calibration, and what was fitted to it."""

    options: CalibrationOptions
    window: WindowMeasurement | None = None
    pulse_response: PulseResponseMeasurement | None = None
    programming: ProgrammingMeasurement | None = None
    read_noise: ReadNoiseMeasurement | None = None
    drift: DriftMeasurement | None = None
    periphery: PeripheryMeasurement | None = None
    read_fit: ReadNoiseFit | None = None
    drift_fit: DriftFit | None = None
    periphery_fit: PeripheryFit | None = None
    stuck_on: np.ndarray | None = None
    stuck_off: np.ndarray | None = None

    @property
    def working(self) -> np.ndarray | None:
        return None if self.stuck_on is None else ~(self.stuck_on | self.stuck_off)


def stages(options: CalibrationOptions) -> list[str]:
    return [name for name in ("window", "pulse_response", "programming", "read_noise", "drift", "periphery")
            if getattr(options, name) is not None]


def run_calibration(xbar: Crossbar, options: CalibrationOptions, rng: np.random.Generator,
                    progress: Progress | None = None) -> Calibration:
    def report(stage: str, done: float, message: str = "") -> None:
        if progress is not None:
            progress(stage, done, message)

    cal = Calibration(options)
    v = options.read_voltage_v
    if options.window:
        report("window", 0.0, "saturating RESET and SET")
        cal.window = measure_window(xbar, options.window, v)
        cal.stuck_on, cal.stuck_off = cal.window.stuck_on, cal.window.stuck_off
        report("window", 1.0, f"yield {100 * cal.window.yield_fraction:.2f}%")
    if options.pulse_response:
        report("pulse_response", 0.0, "pulse trains")
        cal.pulse_response = measure_pulse_response(xbar, options.pulse_response, v, rng, usable=cal.working)
        report("pulse_response", 1.0)
    if options.programming:
        p = options.programming

        def on_iteration(repeat: int, iteration: int, out: int, total: int) -> None:
            done = (repeat + iteration / p.max_iterations) / p.repeats
            report("programming", done, f"round {repeat + 1}/{p.repeats}: {total - out}/{total} in tolerance")

        cal.programming = measure_programming(xbar, p, v, rng, on_iteration=on_iteration)
    if options.read_noise:
        report("read_noise", 0.0, f"{options.read_noise.reads} reads")
        cal.read_noise = measure_read_noise(xbar, options.read_noise, v)
        report("read_noise", 1.0)
    cal.read_fit = _fit_read_noise(cal)
    if options.drift:
        times = options.drift.times_s

        def on_time(k: int, t: float) -> None:
            report("drift", k / len(times), f"waiting until {t:g} s after programming (instrument clock)")

        cal.drift = measure_drift(xbar, options.drift, v, cal.programming.programmed_at_s, on_time=on_time)
        usable = cal.working if cal.working is not None else np.ones(xbar.shape, dtype=bool)
        cal.drift_fit = fit_drift(cal.drift, usable, cal.read_fit)
        report("drift", 1.0)
    if options.periphery:
        report("periphery", 0.0, "MVM sweeps")
        cal.periphery = measure_periphery(xbar, options.periphery)
        cal.periphery_fit = fit_periphery(cal.periphery)
        report("periphery", 1.0)
    return cal


def _fit_read_noise(cal: Calibration) -> ReadNoiseFit | None:
    samples = []
    for m in (cal.read_noise,):
        if m is not None:
            samples.append((m.mean_s, m.std_s ** 2, m.reads_s.shape[0]))
    if cal.window is not None and cal.window.low_reads_s.shape[0] >= 3:
        for reads in (cal.window.low_reads_s, cal.window.high_reads_s):
            samples.append((reads.mean(axis=0), reads.var(axis=0, ddof=1), reads.shape[0]))
    return fit_read_noise(samples) if samples else None


def fit_noise_model(cal: Calibration, *, array_id: str, rows: int, cols: int,
                    source_runs: list[int] | None = None) -> NoiseModel:
    """The NoiseModel of what ``cal`` measured; needs at least the window and some repeated reads."""
    if cal.window is None or cal.read_fit is None:
        raise ValueError("a noise model needs the window measurement and repeated reads (read_noise, "
                         "or window.reads >= 3)")
    working = cal.working
    read = cal.read_fit

    def spread(reads: np.ndarray) -> float:
        g = reads.mean(axis=0)[working]
        # Take out what averaging `n` noisy reads adds to the device-to-device scatter of ln g.
        noise = np.mean((read.sigma(g) / g) ** 2) / reads.shape[0]
        return float(np.sqrt(max(np.var(np.log(g), ddof=1) - noise, 0.0)))

    window = ConductanceWindow(
        g_min_s=float(np.median(cal.window.g_min_s[working])), g_max_s=float(np.median(cal.window.g_max_s[working])),
        g_min_spread=spread(cal.window.low_reads_s), g_max_spread=spread(cal.window.high_reads_s))

    programming = None
    if cal.programming is not None:
        m = cal.programming
        sigma, bias = [], []
        for k in range(len(m.levels_s)):
            sel = (m.level_index == k) & working[None]
            err = m.error_s[sel]
            read_var = np.mean(read.sigma(m.achieved_s[sel]) ** 2) / m.reads
            sigma.append(float(np.sqrt(max(np.var(err, ddof=1) - read_var, 0.0))))
            bias.append(float(np.mean(err)))
        programming = ProgrammingNoise(levels_s=m.levels_s.tolist(), sigma_s=sigma, bias_s=bias,
                                       tolerance_s=m.write_verify[0]["tolerance_s"])

    drift = None
    if cal.drift_fit is not None:
        d = cal.drift_fit
        drift = Drift(nu_mean=d.nu_mean, nu_std=d.nu_std, t0_s=d.t0_s)

    pf = cal.periphery_fit
    periphery = Periphery(read_voltage_v=cal.options.read_voltage_v,
                          dac_bits=pf.dac_bits if pf else None, adc_bits=pf.adc_bits if pf else None,
                          adc_step_a=pf.adc_step_a if pf else None,
                          adc_full_scale_a=pf.adc_full_scale_a if pf else None,
                          output_noise_a=pf.output_noise_a if pf else None,
                          output_noise_upper_a=pf.output_noise_upper_a if pf else None,
                          iv_cubic_per_v2=pf.iv_cubic_per_v2 if pf else None)
    n = working.size
    return NoiseModel(array_id=array_id, rows=rows, cols=cols, window=window, programming=programming,
                      read=ReadNoise(floor_s=read.floor_s, relative=read.relative), drift=drift,
                      defects=Defects(stuck_on_rate=float(cal.stuck_on.sum() / n),
                                      stuck_off_rate=float(cal.stuck_off.sum() / n)),
                      periphery=periphery, source_runs=list(source_runs or []))
