"""A small calibration history for the history-query and history-CLI tests.

Not a test module: imported by them (pytest puts this directory on ``sys.path``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

from db.records import add_array_stats, add_device_stats, get_or_create_array, get_or_create_instrument
from db.runs import finish_run, finish_step, start_run, start_step

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)
YIELDS = [0.91, 0.93, 0.92, 0.95, 0.97]


def record_run(session, crossbar, started, *, protocol="calibrate", status="completed", minutes=5.0, seed=None,
               step_name="statistics"):
    """A finished run of ``protocol`` on ``crossbar`` that started at ``started``, with one step."""
    run = start_run(session, protocol_name=protocol, protocol_path=None, protocol_text=f"name: {protocol}\n",
                    backend="mock", seed=seed, code_version="0.1.0", crossbar_array=crossbar)
    step = start_step(session, run, 0, step_name, "calibrate")
    finish_step(session, step, status)
    finish_run(session, run, status, error="InstrumentTimeout: no reply" if status == "failed" else None)
    run.started_at = step.started_at = started
    run.finished_at = step.finished_at = started + timedelta(minutes=minutes)
    session.flush()
    return run, step


def build_history(session) -> dict:
    """chip-A (8x8) with five calibrations a day apart, recorded out of time order (the one on
    day 2 failed), chip-B (4x4) with one run of another protocol, and chip-unused without runs.

    Returns the run ids: days 0-4 of chip-A by day, chip-B's as "B".
    """
    instrument = get_or_create_instrument(session, "mock", "bench-1", "SoftCrossbar", "1.0")
    chip_a = get_or_create_array(session, instrument, "chip-A", 8, 8)
    chip_b = get_or_create_array(session, instrument, "chip-B", 4, 4)
    get_or_create_array(session, instrument, "chip-unused", 2, 2)
    runs = {}
    for day in (3, 0, 4, 1, 2):
        run, step = record_run(session, chip_a, T0 + timedelta(days=day), seed=day,
                               status="failed" if day == 2 else "completed")
        add_array_stats(session, run, step, chip_a, {"yield": YIELDS[day], "read_noise_relative": 0.01 * day},
                        units={"yield": "1"})
        add_device_stats(session, run, step, chip_a, {"g_max_s": g_max_grid(day), "stuck": np.eye(8, dtype=bool)})
        runs[day] = run.id
    other, step = record_run(session, chip_b, T0 + timedelta(days=1, hours=1), protocol="program")
    add_array_stats(session, other, step, chip_b, {"yield": 0.5})
    add_device_stats(session, other, step, chip_b, {"g_max_s": np.zeros((4, 4))})
    runs["B"] = other.id
    return runs


def g_max_grid(day: int) -> np.ndarray:
    """chip-A's g_max (S) on ``day``: uniform, but not estimable for cell (0, 0)."""
    grid = np.full((8, 8), 5e-5 + 1e-6 * day)
    grid[0, 0] = np.nan
    return grid
