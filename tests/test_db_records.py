"""Recording a run: provenance, steps, measurements and per-device results, read back later."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError, StatementError

from db import Database
from db.models import CrossbarArray, DeviceResult, Instrument, Measurement, Run, RunStep
from db.records import (add_device_results, add_measurement, finish_run, finish_step, get_or_create_array,
                        get_or_create_instrument, load_measurement_array, start_run, start_step)

PROTOCOL = "name: program\nsteps:\n  - kind: program\n    target: ramp\n"
ROWS = COLS = 64


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'hil.db'}"


@pytest.fixture
def db(db_url):
    with Database.open(db_url) as database:
        yield database


@pytest.fixture
def memory_db():
    with Database.open("sqlite://") as database:
        yield database


def _bench(session):
    instrument = get_or_create_instrument(session, "mock", "mock-0", "SoftCrossbar", "1.0")
    return instrument, get_or_create_array(session, instrument, "chip-A", ROWS, COLS)


def _record_run(session, rng):
    """A completed run with two steps, two measurements and 64x64 device results; returns the inputs."""
    _, crossbar = _bench(session)
    run = start_run(session, protocol_name="program", protocol_path="protocols/program.yaml",
                    protocol_text=PROTOCOL, backend="mock", seed=1234, code_version="0.1.0+abc",
                    options={"seed": np.int64(1234), "noise": {"read_sigma": np.float32(0.5)}},
                    crossbar_array=crossbar)
    read = start_step(session, run, 0, "initial read", "read")
    conductance = rng.uniform(1e-6, 1e-4, size=(ROWS, COLS))
    conductance[3, 4] = np.nan
    conductance[5, 6] = -0.0
    add_measurement(session, run, read, "g_initial", "conductance", "S", conductance, crossbar_array=crossbar,
                    meta={"read_voltage_v": 0.2})
    finish_step(session, read, "completed", summary={"mean_s": float(np.nanmean(conductance))})

    program = start_step(session, run, 1, "program ramp", "program")
    target = np.linspace(1e-6, 1e-4, ROWS * COLS).reshape(ROWS, COLS)
    target[0, :8] = np.nan
    achieved = target * (1 + rng.normal(0, 0.01, size=target.shape))
    achieved[0, :8] = 5e-5  # read, though not programmed
    achieved[0, 8] = np.nan
    iterations = rng.integers(1, 20, size=target.shape)
    success = np.abs(achieved - target) < 0.02 * target
    start = time.perf_counter()
    count = add_device_results(session, run, program, crossbar, target_s=target, achieved_s=achieved,
                               iterations=iterations, success=success)
    elapsed = time.perf_counter() - start
    add_measurement(session, run, program, "iterations", "count", "1", iterations.astype(np.int32))
    finish_step(session, program, "completed")
    finish_run(session, run, "completed")
    return {"run_id": run.id, "conductance": conductance, "target": target, "achieved": achieved,
            "iterations": iterations, "success": success, "count": count, "elapsed": elapsed}


def test_run_is_stored_and_read_back_from_a_new_handle(db_url):
    before = datetime.now(timezone.utc)
    with Database.open(db_url) as db, db.session() as session:
        written = _record_run(session, np.random.default_rng(7))
    assert written["count"] == ROWS * COLS
    assert written["elapsed"] < 0.5

    with Database.open(db_url) as db, db.session() as session:
        run = session.get(Run, written["run_id"])
        assert run.status == "completed" and run.error is None
        assert run.protocol_text == PROTOCOL
        assert run.protocol_hash == hashlib.sha256(PROTOCOL.encode()).hexdigest()
        assert run.seed == 1234 and run.backend == "mock" and run.code_version == "0.1.0+abc"
        assert run.options == {"seed": 1234, "noise": {"read_sigma": 0.5}}
        assert run.crossbar_array.array_id == "chip-A"
        assert run.crossbar_array.instrument.model == "SoftCrossbar"
        for stamp in (run.started_at, run.finished_at):
            assert stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0)
            assert before - timedelta(seconds=1) <= stamp <= datetime.now(timezone.utc)
        assert run.started_at <= run.finished_at

        assert [(s.index, s.name, s.kind, s.status) for s in run.steps] == [
            (0, "initial read", "read", "completed"), (1, "program ramp", "program", "completed")]
        assert run.steps[0].summary["mean_s"] == pytest.approx(np.nanmean(written["conductance"]))
        assert all(s.finished_at.tzinfo is not None for s in run.steps)

        g = run.steps[0].measurements[0]
        assert (g.name, g.kind, g.unit, g.shape, g.dtype) == ("g_initial", "conductance", "S", [ROWS, COLS],
                                                             "float64")
        restored = load_measurement_array(g)
        assert restored.tobytes() == written["conductance"].tobytes()
        assert np.array_equal(restored, written["conductance"], equal_nan=True)
        finite = written["conductance"][np.isfinite(written["conductance"])]
        assert (g.n, g.nan_count) == (finite.size, 1)
        assert g.mean == pytest.approx(finite.mean(), rel=1e-12)
        assert (g.min, g.max) == (finite.min(), finite.max())
        assert g.meta == {"read_voltage_v": 0.2}
        assert g.crossbar_array.array_id == "chip-A"
        assert [m.name for m in run.measurements] == ["g_initial", "iterations"]
        assert load_measurement_array(run.measurements[1]).dtype == np.int32

        results = session.scalars(select(DeviceResult).where(DeviceResult.run_fk == run.id)
                                  .order_by(DeviceResult.row, DeviceResult.col)).all()
        assert len(results) == ROWS * COLS
        assert [(r.row, r.col) for r in results[:3]] == [(0, 0), (0, 1), (0, 2)]
        assert {r.step_fk for r in results} == {run.steps[1].id}
        unprogrammed = results[0]
        assert unprogrammed.target_s is None and unprogrammed.error_s is None
        assert unprogrammed.achieved_s is not None
        unread = results[8]
        assert unread.achieved_s is None and unread.error_s is None and unread.target_s is not None
        cell = session.scalars(select(DeviceResult).where(
            DeviceResult.array_fk == run.array_fk, DeviceResult.row == 17, DeviceResult.col == 42)).one()
        assert cell.target_s == written["target"][17, 42]
        assert cell.achieved_s == written["achieved"][17, 42]
        assert cell.error_s == written["achieved"][17, 42] - written["target"][17, 42]
        assert cell.iterations == written["iterations"][17, 42]
        assert cell.success is bool(written["success"][17, 42])


def test_deleting_a_run_removes_its_children_only(db):
    with db.session() as session:
        first = _record_run(session, np.random.default_rng(1))["run_id"]
    with db.session() as session:
        second = start_run(session, protocol_name="other", protocol_path=None, protocol_text="x",
                           backend="mock", seed=None, code_version="0")
        step = start_step(session, second, 0, "read", "read")
        add_measurement(session, second, step, "g", "conductance", "S", np.ones(3))
        second = second.id

    with db.session() as session:
        session.delete(session.get(Run, first))

    with db.session() as session:
        for model, kept in ((RunStep, 1), (Measurement, 1), (DeviceResult, 0)):
            assert session.scalar(select(func.count()).select_from(model).where(model.run_fk == first)) == 0
            assert session.scalar(select(func.count()).select_from(model).where(model.run_fk == second)) == kept
        assert session.scalar(select(func.count()).select_from(CrossbarArray)) == 1
        assert session.scalar(select(func.count()).select_from(Instrument)) == 1


def test_database_cascades_without_the_orm(memory_db):
    with memory_db.session() as session:
        run_id = _record_run(session, np.random.default_rng(2))["run_id"]
    with memory_db.session() as session:
        session.execute(delete(Run).where(Run.id == run_id))
    with memory_db.session() as session:
        assert session.scalar(select(func.count()).select_from(DeviceResult)) == 0
        assert session.scalar(select(func.count()).select_from(Measurement)) == 0
        assert session.scalar(select(func.count()).select_from(RunStep)) == 0


def test_get_or_create_is_idempotent(memory_db):
    with memory_db.session() as session:
        instrument, crossbar = _bench(session)
        again = get_or_create_instrument(session, "mock", "mock-0", "SoftCrossbar", "1.1")
        assert again.id == instrument.id and again.firmware == "1.1"
        other = get_or_create_instrument(session, "visa", "mock-0", "Keysight", "A.01")
        assert other.id != instrument.id
        assert get_or_create_array(session, instrument, "chip-A", ROWS, COLS).id == crossbar.id
        with pytest.raises(ValueError, match="64x64"):
            get_or_create_array(session, instrument, "chip-A", 32, 32)
        assert session.scalar(select(func.count()).select_from(Instrument)) == 2


def test_objects_can_be_finished_in_a_later_session(memory_db):
    with memory_db.session() as session:
        run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                        seed=None, code_version="0")
        step = start_step(session, run, 0, "s", "read")
    with memory_db.session() as session:
        finish_step(session, step, "failed", error="timeout")
        finish_run(session, run, "failed", error="step 0 failed")
    with memory_db.session() as session:
        stored = session.get(Run, run.id)
        assert (stored.status, stored.error, stored.steps[0].error) == ("failed", "step 0 failed", "timeout")
        assert stored.options is None and stored.seed is None


def test_invalid_statuses_are_refused(memory_db):
    with memory_db.session() as session:
        run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                        seed=None, code_version="0")
        with pytest.raises(ValueError, match="final status"):
            finish_run(session, run, "running")
        with pytest.raises(ValueError, match="final status"):
            finish_step(session, start_step(session, run, 0, "s", "read"), "done")
    with pytest.raises(IntegrityError):
        with memory_db.session() as session:
            session.get(Run, run.id).status = "bogus"


def test_duplicate_step_index_is_refused(memory_db):
    with pytest.raises(IntegrityError):
        with memory_db.session() as session:
            run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                            seed=None, code_version="0")
            start_step(session, run, 0, "a", "read")
            start_step(session, run, 0, "b", "read")


def test_session_rolls_back_on_error(memory_db):
    with pytest.raises(RuntimeError):
        with memory_db.session() as session:
            start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                      seed=None, code_version="0")
            raise RuntimeError("abort")
    with memory_db.session() as session:
        assert session.scalar(select(func.count()).select_from(Run)) == 0


def test_naive_timestamps_are_refused(memory_db):
    with pytest.raises(StatementError, match="naive"):
        with memory_db.session() as session:
            run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                            seed=None, code_version="0")
            run.finished_at = datetime(2024, 1, 1)
            session.flush()


def test_timestamps_are_stored_in_utc(memory_db):
    local = datetime(2024, 6, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    with memory_db.session() as session:
        run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                        seed=None, code_version="0")
        run.finished_at = local
    with memory_db.session() as session:
        stored = session.get(Run, run.id).finished_at
        assert stored == local and stored.tzinfo == timezone.utc and stored.hour == 12


@pytest.mark.parametrize("field, value, message", [
    ("target_s", np.zeros((ROWS, COLS - 1)), "target_s has shape"),
    ("iterations", np.zeros((ROWS, COLS)), "integers"),
    ("success", np.ones((1, ROWS, COLS), dtype=bool), "success has shape"),
])
def test_device_results_check_their_inputs(memory_db, field, value, message):
    with memory_db.session() as session:
        _, crossbar = _bench(session)
        run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                        seed=None, code_version="0")
        step = start_step(session, run, 0, "s", "program")
        grids = {"target_s": np.ones((ROWS, COLS)), "achieved_s": np.ones((ROWS, COLS)),
                 "iterations": np.ones((ROWS, COLS), dtype=np.int64), "success": np.ones((ROWS, COLS), dtype=bool)}
        grids[field] = value
        with pytest.raises(ValueError, match=message):
            add_device_results(session, run, step, crossbar, **grids)


def test_measurement_without_step_or_array(memory_db):
    with memory_db.session() as session:
        run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                        seed=None, code_version="0")
        m = add_measurement(session, run, None, "scalar", "temperature", "K", np.float64(300.5))
    with memory_db.session() as session:
        m = session.get(Measurement, m.id)
        assert m.step_fk is None and m.array_fk is None and m.meta is None and m.shape == []
        assert load_measurement_array(m)[()] == 300.5


def test_json_columns_take_numpy_values_and_drop_non_finite_floats(memory_db):
    with memory_db.session() as session:
        run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                        seed=np.uint32(7), code_version="0",
                        options={"gains": np.array([1.5, np.nan]), 3: (np.bool_(True), np.float32(np.inf))})
        step = start_step(session, run, 0, "s", "read")
        finish_step(session, step, "completed", summary={"rms_error_s": float("nan"), "cells": np.int64(4096)})
    with memory_db.session() as session:
        stored = session.get(Run, run.id)
        assert stored.seed == 7
        assert stored.options == {"gains": [1.5, None], "3": [True, None]}
        assert stored.steps[0].summary == {"rms_error_s": None, "cells": 4096}
