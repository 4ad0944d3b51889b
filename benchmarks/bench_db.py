"""Cost of the run database: writing one calibration, building a 1,000-run history and querying it.

    python benchmarks/bench_db.py [--postgres URL] [--repeats N]

One calibration of a 64x64 array, written through the record helpers into a new
SQLite file and committed: 50 float32 reads of the array as one measurement blob
(204,800 values), 6 per-device statistics (24,576 rows), 30 array statistics and a
noise model. Then a history of 1,000 runs of that array, each committed on its own
with 4 array statistics, every 50th also with the 6 per-device statistics (so one
device has a history of 20 calibrations), and the queries of ``db.history`` on it:
all runs, the trend of one statistic over the 1,000 runs, one device's history
(median of ``--repeats``).

With ``--postgres URL`` (default: ``$HIL_TEST_POSTGRES_URL``) the same runs against
that PostgreSQL database as well, after dropping and recreating its ``public``
schema: give it a scratch database only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from db import Database, history, records, runs
from db.errors import mask_url

ROWS = COLS = 64
READS = 50
DEVICE_QUANTITIES = ("g_min_s", "g_max_s", "stuck", "drift_nu", "read_sigma_s", "programming_sigma_s")
HISTORY_RUNS = 1000
DEVICE_STATS_EVERY = 50
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _bench_array(session):
    instrument = records.get_or_create_instrument(session, "mock", "bench", "SoftwareCrossbar", "1")
    return records.get_or_create_array(session, instrument, "bench-64x64", ROWS, COLS)


def _device_stats(rng: np.random.Generator) -> dict[str, np.ndarray]:
    grids = {name: rng.lognormal(-10, 0.3, (ROWS, COLS)) for name in DEVICE_QUANTITIES}
    grids["stuck"] = rng.random((ROWS, COLS)) < 0.02
    return grids


def write_calibration(db: Database) -> dict[str, float]:
    """One calibration's data through the record helpers, committed; seconds per part."""
    rng = np.random.default_rng(0)
    reads = rng.normal(3e-5, 1e-6, (READS, ROWS, COLS)).astype(np.float32)
    devices = _device_stats(rng)
    array_stats = {f"statistic_{i:02d}": float(rng.normal()) for i in range(30)}
    params = {"read_noise": {"relative": 0.012, "floor_s": 2e-8}, "levels_s": np.linspace(5e-6, 8e-5, 8).tolist(),
              "programming_sigma_s": rng.uniform(1e-7, 1e-6, 8).tolist(), "drift": {"nu": 0.05, "t0_s": 1.0}}
    times = {}
    t_all = time.perf_counter()
    with db.session() as session:
        crossbar = _bench_array(session)
        run = runs.start_run(session, protocol_name="calibrate", protocol_path=None, protocol_text="bench",
                             backend="mock", seed=0, code_version="bench", crossbar_array=crossbar)
        step = runs.start_step(session, run, 0, "calibrate", "calibrate")
        t = time.perf_counter()
        records.add_measurement(session, run, step, "reads", "conductance", "S", reads, crossbar_array=crossbar)
        times["measurement blob (50x64x64 float32)"] = time.perf_counter() - t
        t = time.perf_counter()
        records.add_device_stats(session, run, step, crossbar, devices)
        times[f"device_stats ({len(devices) * ROWS * COLS:,} rows)"] = time.perf_counter() - t
        t = time.perf_counter()
        records.add_array_stats(session, run, step, crossbar, array_stats)
        records.add_noise_model(session, crossbar, params, schema_version=1, run=run, step=step,
                                source_runs=[run.id])
        times["30 array_stats + noise model"] = time.perf_counter() - t
        runs.finish_step(session, step, "completed")
        runs.finish_run(session, run, "completed")
        t = time.perf_counter()
    times["commit"] = time.perf_counter() - t
    times["one calibration, total"] = time.perf_counter() - t_all
    return times


def build_history(db: Database) -> tuple[float, int]:
    """1,000 runs, one transaction each; returns the seconds taken and the device_stats rows written."""
    rng = np.random.default_rng(1)
    device_rows = 0
    t0 = time.perf_counter()
    for i in range(HISTORY_RUNS):
        with db.session() as session:
            crossbar = _bench_array(session)
            run = runs.start_run(session, protocol_name="calibrate", protocol_path=None, protocol_text="bench",
                                 backend="mock", seed=i, code_version="bench", crossbar_array=crossbar)
            step = runs.start_step(session, run, 0, "calibrate", "calibrate")
            records.add_array_stats(session, run, step, crossbar,
                                    {"yield": 0.99 - 1e-5 * i, "read_noise_relative": 0.012, "stuck_fraction": 0.01,
                                     "window_ratio": 8.0 + rng.normal(0, 0.1)}, units={"yield": "1"})
            if i % DEVICE_STATS_EVERY == 0:
                device_rows += records.add_device_stats(session, run, step, crossbar, _device_stats(rng))
            runs.finish_step(session, step, "completed")
            runs.finish_run(session, run, "completed")
            run.started_at = step.started_at = T0 + timedelta(hours=i)
    return time.perf_counter() - t0, device_rows


def time_query(db: Database, query: Callable, repeats: int) -> tuple[float, int]:
    """Median seconds of ``query(session)`` over ``repeats`` fresh sessions, and how many rows it gave."""
    seconds = []
    for _ in range(repeats):
        with db.session() as session:
            t = time.perf_counter()
            rows = query(session)
            seconds.append(time.perf_counter() - t)
    return statistics.median(seconds), len(rows)


def run_backend(name: str, fresh_url: Callable[[], str], repeats: int, table: Table) -> None:
    """Both benchmarks on one backend, each on an empty database from ``fresh_url()``."""
    with Database.open(fresh_url()) as db:
        for label, seconds in write_calibration(db).items():
            table.add_row(name, label, "", _ms(seconds))
    with Database.open(fresh_url()) as db:
        seconds, device_rows = build_history(db)
        table.add_row(name, f"build history: {HISTORY_RUNS:,} runs, {device_rows:,} device_stats rows",
                      f"{HISTORY_RUNS:,}", _ms(seconds))
        queries = {
            "list_runs (all)": lambda s: history.list_runs(s),
            "array_trend over the runs": lambda s: history.array_trend(s, "bench-64x64", "yield"),
            "device_history of one device": lambda s: history.device_history(s, "bench-64x64", 17, 42),
            "list_arrays": lambda s: history.list_arrays(s),
        }
        for label, query in queries.items():
            seconds, count = time_query(db, query, repeats)
            table.add_row(name, label, f"{count:,}", _ms(seconds))


def _emptied(url: str) -> str:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()
    return url


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", metavar="URL", default=os.environ.get("HIL_TEST_POSTGRES_URL"),
                        help="also run against this scratch PostgreSQL database (default: $HIL_TEST_POSTGRES_URL)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    table = Table(title="run database: one 64x64 calibration, then a 1,000-run history", title_justify="left")
    for column, justify in (("backend", "left"), ("operation", "left"), ("rows", "right"), ("time", "right")):
        table.add_column(column, justify=justify)
    with tempfile.TemporaryDirectory() as tmp:
        files = (f"sqlite:///{Path(tmp) / f'bench-{i}.db'}" for i in range(2))
        run_backend("sqlite", lambda: next(files), args.repeats, table)
    if args.postgres:
        table.add_section()
        run_backend("postgresql", lambda: _emptied(args.postgres), args.repeats, table)
        table.caption = f"postgresql: {mask_url(args.postgres)}"
    # Not a terminal (a log, CI): give the table room rather than rich's 80 columns.
    Console(width=None if sys.stdout.isatty() else 120).print(table)


if __name__ == "__main__":
    main()
