"""Calibration of arrays whose reads a fit cannot take as they are: 0 S, negative, saturated, NaN.

Each crossbar below is the software crossbar behind a read path that misbehaves on chosen cells, as
an instrument the project did not write can: a converter at its floor, a channel with an offset, a
full-scale clip, a broken channel. A calibration on it must finish (or fail with a reason), keep
every raw read as measured and say what it left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from calibration.levels import level_range
from calibration.options import ProgrammingOptions
from db import Database, records
from db.models import Measurement, RunStep
from drivers import DeviceConfig
from drivers.mock import SoftwareCrossbar
from hil.noise_models import load_noise_model
from hil.protocol_loader import load_protocol
from hil.runner import execute

STEP = """  - kind: calibrate
    name: cal
    pulse_response: {amplitudes_v: [1.2, 1.5], pulses: 10, cells: 8}
    programming: {levels: 4, repeats: 1PROGRAMMING}
    read_noise: {reads: 20}
    drift: {times_s: [1, 10, 100, 1000], reads: 2}
    periphery: {repeats: 50, sweep_points: 64}
"""
FULL_SCALE_S = 105e-6
SIZE = 16


def calibrate(tmp_path: Path, xbar, programming: str = ""):
    path = tmp_path / "cal.yaml"
    path.write_text(f"name: robust\narray: {{rows: {SIZE}, cols: {SIZE}}}\nsteps:\n"
                    + STEP.replace("PROGRAMMING", programming), encoding="utf-8")
    db = Database.open(f"sqlite:///{tmp_path / 'cal.db'}")
    outcome = execute(load_protocol(path), xbar, db, backend="mock", seed=1, report_dir=tmp_path / "reports")
    return outcome, db


def stored(db) -> dict[str, np.ndarray]:
    with db.session() as s:
        return {m.name: records.load_measurement_array(m) for m in s.scalars(select(Measurement))}


def step_row(db) -> RunStep:
    with db.session() as s:
        return s.scalars(select(RunStep)).one()


class HostileReads(SoftwareCrossbar):
    """Reads of chosen cells come back as 0 S below a floor, offset below zero, or NaN; every read is
    clipped at a full scale that the highest devices exceed."""

    def __init__(self, *args, floor_cells, offset_cells, nan_cells, **kwargs):
        super().__init__(*args, **kwargs)
        self.floor_cells, self.offset_cells, self.nan_cells = floor_cells, offset_cells, nan_cells

    def _read(self, rows, cols, voltage_v):
        g = super()._read(rows, cols, voltage_v)
        block = np.ix_(rows, cols)
        g = np.where(self.floor_cells[block] & (g < 3e-6), 0.0, g)     # a converter floor at 3 µS
        g = np.where(self.offset_cells[block], g - 4e-6, g)             # a channel 4 µS low
        g = np.minimum(g, FULL_SCALE_S)
        return np.where(self.nan_cells[block], np.nan, g)


def cells(*where) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    for r, c in where:
        mask[r, c] = True
    return mask


def test_calibration_with_zero_negative_saturated_and_nan_reads_completes(tmp_path):
    floor = cells(*[(1, c) for c in range(8)])
    offset = cells(*[(2, c) for c in range(6)])
    nan = cells((5, 5), (5, 6), (9, 1))
    xbar = HostileReads(SIZE, SIZE, seed=4, floor_cells=floor, offset_cells=offset, nan_cells=nan)
    working = ~xbar.truth.stuck
    assert (xbar.truth.g_max_s[working] > FULL_SCALE_S).sum() >= 3     # some devices do saturate
    outcome, db = calibrate(tmp_path, xbar)
    with db:
        assert outcome.status == "completed", outcome.error
        raw = stored(db)
        summary = step_row(db).summary
        model = load_noise_model(db, model_id=summary["noise_model_id"])
    # The raw reads are stored as measured: the NaN, the zeros and the negatives are all there.
    low = raw["window.after_reset"]
    assert np.isnan(low[:, nan]).all() and np.isfinite(low[:, ~nan]).all()
    assert (low[:, floor & working & ~nan] == 0).any() and (low[:, offset & working] < 0).all()
    assert (raw["window.after_set"] == FULL_SCALE_S).any()
    # Counted per measurement in the summary, and the unreadable devices are neither working nor stuck.
    quality = summary["read_quality"]
    assert quality["window.after_reset"]["non_finite"] == 3 and quality["window.after_set"]["non_finite"] == 3
    assert quality["window.after_reset"]["zero"] >= 6 and quality["window.after_reset"]["negative"] == 6
    assert quality["window.after_set"]["saturated"] >= 3
    assert quality["read_noise"]["non_finite"] == 3
    assert summary["unreadable"] == 3
    assert any("left out of the fits" in w for w in summary["warnings"])
    # The model is finite and physical: zeros and negatives did not reach a logarithm.
    window = model.window
    assert 0 < window.g_min_s < 3e-6 and 60e-6 < window.g_max_s <= FULL_SCALE_S
    assert np.isfinite([window.g_min_spread, window.g_max_spread]).all() and window.g_max_spread < 0.2
    assert model.read.relative == pytest.approx(0.005, rel=0.3)
    assert all(np.isfinite(model.programming.sigma_s)) and all(np.isfinite(model.programming.bias_s))
    assert all(level + bias > 0 for level, bias in zip(model.programming.levels_s, model.programming.bias_s))
    assert model.drift is not None and np.isfinite(model.drift.nu_mean)
    report = Path(summary["report"]).read_text(encoding="utf-8")
    assert "## Read quality" in report and "| window.after_reset | 3 |" in report


NARROW = DeviceConfig(g_min_s=1e-6, g_max_s=25e-6)


def test_levels_default_to_the_measured_window(tmp_path):
    outcome, db = calibrate(tmp_path, SoftwareCrossbar(SIZE, SIZE, config=NARROW, seed=2))
    with db:
        assert outcome.status == "completed", outcome.error
        summary = step_row(db).summary
        model = load_noise_model(db, model_id=summary["noise_model_id"])
        targets = stored(db)["programming.targets"]
    levels = summary["programming_levels"]
    assert levels["source"] == "window"
    assert 1e-6 < levels["g_low_s"] < 3e-6 and 15e-6 < levels["g_high_s"] < 22e-6
    assert targets.max() == pytest.approx(levels["g_high_s"])
    assert not summary["warnings"]
    # Every level was reached: no bias beyond the write-verify tolerance.
    assert max(abs(b) for b in model.programming.bias_s) <= model.programming.tolerance_s


def test_levels_outside_the_measured_window_are_clipped_with_a_warning(tmp_path):
    xbar = SoftwareCrossbar(SIZE, SIZE, config=NARROW, seed=2)
    outcome, db = calibrate(tmp_path, xbar, programming=", g_low_s: 5.0e-6, g_high_s: 80.0e-6")
    with db:
        assert outcome.status == "completed", outcome.error
        summary = step_row(db).summary
        model = load_noise_model(db, model_id=summary["noise_model_id"])
    levels = summary["programming_levels"]
    assert levels["source"] == "protocol, clipped to the window"
    assert levels["g_low_s"] == 5e-6 and levels["g_high_s"] < 22e-6     # the low end was inside: kept
    (warning,) = summary["warnings"]
    assert "g_high_s 80 µS lies outside the measured window" in warning
    assert "warning" in Path(summary["report"]).read_text(encoding="utf-8").lower()
    assert max(model.programming.levels_s) < 25e-6
    assert all(level + bias > 0 for level, bias in zip(model.programming.levels_s, model.programming.bias_s))


class NaNEverywhere(SoftwareCrossbar):
    def _read(self, rows, cols, voltage_v):
        return np.full((len(rows), len(cols)), np.nan)


def test_an_array_reading_nan_everywhere_fails_with_a_reason_and_keeps_the_reads(tmp_path):
    outcome, db = calibrate(tmp_path, NaNEverywhere(SIZE, SIZE, seed=1))
    with db:
        assert outcome.status == "failed"
        assert f"{SIZE * SIZE} of {SIZE * SIZE} devices read NaN" in outcome.error
        assert "more than 50% of the array" in outcome.error
        raw = stored(db)
        assert step_row(db).status == "failed"
        assert np.isnan(raw["window.after_reset"]).all() and np.isnan(raw["window.after_set"]).all()
        with db.session() as s:
            assert not list(s.scalars(select(Measurement.name).where(Measurement.name.like("programming%"))))


def test_a_protocol_range_inside_the_window_is_kept():
    options = ProgrammingOptions(g_low_s=5e-6, g_high_s=20e-6)
    assert level_range(options, (1e-6, 25e-6)).source == "protocol"
    assert (level_range(options, (1e-6, 25e-6)).g_low_s, level_range(options, (1e-6, 25e-6)).g_high_s) == (5e-6,
                                                                                                         20e-6)
    assert level_range(ProgrammingOptions(), (1e-6, 101e-6)).g_high_s == pytest.approx(81e-6)


def test_a_bias_below_zero_siemens_is_clipped_and_said():
    """A channel with an offset reads a low level below 0 S: the model must not store that as a bias."""
    from calibration.options import CalibrationOptions
    from calibration.pipeline import Calibration, fit_noise_model
    from calibration.programming import ProgrammingMeasurement
    from calibration.noise_model import ReadNoise
    from calibration.window import WindowMeasurement

    rng = np.random.default_rng(0)
    low = 1e-6 + 0.05e-6 * rng.standard_normal((4, 8, 8))
    high = 50e-6 * np.exp(0.05 * rng.standard_normal((8, 8))) + 0.2e-6 * rng.standard_normal((4, 8, 8))
    window = WindowMeasurement(low, high, 0.2)
    levels = np.array([1e-6, 20e-6])
    index = (np.indices((8, 8)).sum(axis=0) % 2)[None]
    achieved = np.where(index == 0, -0.5e-6, 20e-6) + 0.1e-6 * rng.standard_normal(index.shape)
    programming = ProgrammingMeasurement(levels, index, achieved, reads=4, programmed_at_s=0.0,
                                         write_verify=[{"tolerance_s": 0.4e-6}])
    options = CalibrationOptions(programming=ProgrammingOptions(g_low_s=1e-6, g_high_s=20e-6), pulse_response=None,
                                 read_noise=None, drift=None, periphery=None)
    cal = Calibration(options, window=window, programming=programming, stuck_on=window.stuck_on,
                      stuck_off=window.stuck_off, unreadable=window.unreadable,
                      read_fit=ReadNoise(floor_s=0.05e-6, relative=0.005))
    model = fit_noise_model(cal, array_id="x", rows=8, cols=8)
    assert model.programming.bias_s[0] == -1e-6                      # mean achieved 0 S, not below
    assert abs(model.programming.bias_s[1]) < 0.1e-6
    assert any("below 0 S: bias clipped" in w for w in cal.warnings)
