"""Recording a run: provenance, steps, measurements and per-device results, read back later."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError, StatementError

from db import Database
from db.models import (ArrayStat, CrossbarArray, DeviceResult, DeviceStat, Instrument, Measurement, NoiseModelRecord,
                       Run, RunStep)
from db.records import (add_array_stats, add_device_results, add_device_stats, add_measurement, add_noise_model,
                        get_noise_model, get_or_create_array, get_or_create_instrument, latest_noise_model,
                        load_measurement_array)
from db.runs import finish_run, finish_step, start_run, start_step

PROTOCOL = "name: program\nsteps:\n  - kind: program\n    target: ramp\n"
ROWS = COLS = 64


@pytest.fixture
def db(db_url):
    with Database.open(db_url) as database:
        yield database


@pytest.fixture
def scratch_db(db_backend, request):
    """An empty database that need not outlive the test: SQLite in memory, or the PostgreSQL test database."""
    url = "sqlite://" if db_backend == "sqlite" else request.getfixturevalue("db_url")
    with Database.open(url) as database:
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


def test_database_cascades_without_the_orm(scratch_db):
    with scratch_db.session() as session:
        run_id = _record_run(session, np.random.default_rng(2))["run_id"]
    with scratch_db.session() as session:
        session.execute(delete(Run).where(Run.id == run_id))
    with scratch_db.session() as session:
        assert session.scalar(select(func.count()).select_from(DeviceResult)) == 0
        assert session.scalar(select(func.count()).select_from(Measurement)) == 0
        assert session.scalar(select(func.count()).select_from(RunStep)) == 0


def test_get_or_create_is_idempotent(scratch_db):
    with scratch_db.session() as session:
        instrument, crossbar = _bench(session)
        again = get_or_create_instrument(session, "mock", "mock-0", "SoftCrossbar", "1.1")
        assert again.id == instrument.id and again.firmware == "1.1"
        other = get_or_create_instrument(session, "visa", "mock-0", "Keysight", "A.01")
        assert other.id != instrument.id
        assert get_or_create_array(session, instrument, "chip-A", ROWS, COLS).id == crossbar.id
        with pytest.raises(ValueError, match="64x64"):
            get_or_create_array(session, instrument, "chip-A", 32, 32)
        assert session.scalar(select(func.count()).select_from(Instrument)) == 2


def test_objects_can_be_finished_in_a_later_session(scratch_db):
    with scratch_db.session() as session:
        run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                        seed=None, code_version="0")
        step = start_step(session, run, 0, "s", "read")
    with scratch_db.session() as session:
        finish_step(session, step, "failed", error="timeout")
        finish_run(session, run, "failed", error="step 0 failed")
    with scratch_db.session() as session:
        stored = session.get(Run, run.id)
        assert (stored.status, stored.error, stored.steps[0].error) == ("failed", "step 0 failed", "timeout")
        assert stored.options is None and stored.seed is None


def test_invalid_statuses_are_refused(scratch_db):
    with scratch_db.session() as session:
        run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                        seed=None, code_version="0")
        with pytest.raises(ValueError, match="final status"):
            finish_run(session, run, "running")
        with pytest.raises(ValueError, match="final status"):
            finish_step(session, start_step(session, run, 0, "s", "read"), "done")
    with pytest.raises(IntegrityError):
        with scratch_db.session() as session:
            session.get(Run, run.id).status = "bogus"


def test_duplicate_step_index_is_refused(scratch_db):
    with pytest.raises(IntegrityError):
        with scratch_db.session() as session:
            run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                            seed=None, code_version="0")
            start_step(session, run, 0, "a", "read")
            start_step(session, run, 0, "b", "read")


def test_session_rolls_back_on_error(scratch_db):
    with pytest.raises(RuntimeError):
        with scratch_db.session() as session:
            start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                      seed=None, code_version="0")
            raise RuntimeError("abort")
    with scratch_db.session() as session:
        assert session.scalar(select(func.count()).select_from(Run)) == 0


def test_naive_timestamps_are_refused(scratch_db):
    with pytest.raises(StatementError, match="naive"):
        with scratch_db.session() as session:
            run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                            seed=None, code_version="0")
            run.finished_at = datetime(2024, 1, 1)
            session.flush()


def test_timestamps_are_stored_in_utc(scratch_db):
    local = datetime(2024, 6, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    with scratch_db.session() as session:
        run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                        seed=None, code_version="0")
        run.finished_at = local
    with scratch_db.session() as session:
        stored = session.get(Run, run.id).finished_at
        assert stored == local and stored.tzinfo == timezone.utc and stored.hour == 12


@pytest.mark.parametrize("field, value, message", [
    ("target_s", np.zeros((ROWS, COLS - 1)), "target_s has shape"),
    ("iterations", np.zeros((ROWS, COLS)), "integers"),
    ("success", np.ones((1, ROWS, COLS), dtype=bool), "success has shape"),
])
def test_device_results_check_their_inputs(scratch_db, field, value, message):
    with scratch_db.session() as session:
        _, crossbar = _bench(session)
        run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                        seed=None, code_version="0")
        step = start_step(session, run, 0, "s", "program")
        grids = {"target_s": np.ones((ROWS, COLS)), "achieved_s": np.ones((ROWS, COLS)),
                 "iterations": np.ones((ROWS, COLS), dtype=np.int64), "success": np.ones((ROWS, COLS), dtype=bool)}
        grids[field] = value
        with pytest.raises(ValueError, match=message):
            add_device_results(session, run, step, crossbar, **grids)


def test_measurement_without_step_or_array(scratch_db):
    with scratch_db.session() as session:
        run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                        seed=None, code_version="0")
        m = add_measurement(session, run, None, "scalar", "temperature", "K", np.float64(300.5))
    with scratch_db.session() as session:
        m = session.get(Measurement, m.id)
        assert m.step_fk is None and m.array_fk is None and m.meta is None and m.shape == []
        assert load_measurement_array(m)[()] == 300.5


def test_json_columns_take_numpy_values_and_drop_non_finite_floats(scratch_db):
    with scratch_db.session() as session:
        run = start_run(session, protocol_name="p", protocol_path=None, protocol_text="t", backend="mock",
                        seed=np.uint32(7), code_version="0",
                        options={"gains": np.array([1.5, np.nan]), 3: (np.bool_(True), np.float32(np.inf))})
        step = start_step(session, run, 0, "s", "read")
        finish_step(session, step, "completed", summary={"rms_error_s": float("nan"), "cells": np.int64(4096)})
    with scratch_db.session() as session:
        stored = session.get(Run, run.id)
        assert stored.seed == 7
        assert stored.options == {"gains": [1.5, None], "3": [True, None]}
        assert stored.steps[0].summary == {"rms_error_s": None, "cells": 4096}


def _calibration_run(session, crossbar):
    run = start_run(session, protocol_name="calibrate", protocol_path=None, protocol_text="t", backend="mock",
                    seed=None, code_version="0", crossbar_array=crossbar)
    return run, start_step(session, run, 0, "statistics", "calibrate")


def test_device_stats_one_row_per_device_and_quantity_in_one_fast_insert(db):
    rng = np.random.default_rng(3)
    quantities = {f"q{i}_s": rng.uniform(1e-6, 1e-4, size=(ROWS, COLS)) for i in range(6)}
    quantities["q0_s"][2, 3] = np.nan
    quantities["drift_nu"] = rng.normal(0.05, 0.01, size=(ROWS, COLS)).astype(np.float32)
    quantities["stuck"] = rng.random((ROWS, COLS)) < 0.02
    with db.session() as session:
        _, crossbar = _bench(session)
        run, step = _calibration_run(session, crossbar)
        add_device_stats(session, run, step, crossbar, {"warm_up": np.zeros((ROWS, COLS))})
        start = time.perf_counter()
        count = add_device_stats(session, run, step, crossbar, quantities)
        elapsed = time.perf_counter() - start
    assert count == ROWS * COLS * 8
    if db.engine.dialect.name == "sqlite":
        assert elapsed < 0.5
    with db.session() as session:
        per_quantity = dict(session.execute(
            select(DeviceStat.quantity, func.count()).where(DeviceStat.run_fk == run.id)
            .group_by(DeviceStat.quantity)).all())
        assert per_quantity == {name: ROWS * COLS for name in [*quantities, "warm_up"]}

        def value(quantity, row, col):
            return session.scalars(select(DeviceStat.value).where(
                DeviceStat.array_fk == crossbar.id, DeviceStat.quantity == quantity,
                DeviceStat.row == row, DeviceStat.col == col)).one()

        assert value("q0_s", 2, 3) is None
        assert value("q0_s", 17, 42) == quantities["q0_s"][17, 42]
        assert value("q5_s", 63, 0) == quantities["q5_s"][63, 0]
        assert value("drift_nu", 5, 9) == float(quantities["drift_nu"][5, 9])
        stuck = session.scalars(select(DeviceStat.value).where(DeviceStat.quantity == "stuck")).all()
        assert set(stuck) <= {0.0, 1.0} and sum(stuck) == quantities["stuck"].sum()
        stat = session.scalars(select(DeviceStat).where(DeviceStat.quantity == "q1_s").limit(1)).one()
        assert (stat.run_fk, stat.step_fk) == (run.id, step.id)
        assert stat.created_at.tzinfo is not None


@pytest.mark.parametrize("quantities, message", [
    ({"g_min_s": np.zeros((ROWS, COLS - 1))}, "g_min_s has shape"),
    ({"label": np.full((ROWS, COLS), "x")}, "real numbers"),
    ({"": np.zeros((ROWS, COLS))}, "name"),
    ({"ok": np.zeros((ROWS, COLS)), "bad": np.zeros((2, 2))}, "bad has shape"),
])
def test_device_stats_check_every_input_before_writing(scratch_db, quantities, message):
    with scratch_db.session() as session:
        _, crossbar = _bench(session)
        run, step = _calibration_run(session, crossbar)
        with pytest.raises(ValueError, match=message):
            add_device_stats(session, run, step, crossbar, quantities)
        assert session.scalar(select(func.count()).select_from(DeviceStat)) == 0


def test_array_stats_with_units_and_without_step(scratch_db):
    with scratch_db.session() as session:
        _, crossbar = _bench(session)
        run, step = _calibration_run(session, crossbar)
        count = add_array_stats(session, run, step, crossbar,
                                {"yield": np.float64(0.97), "read_noise_relative": 0.012, "stuck_any": np.bool_(True),
                                 "programming_sigma_s@level3": float("nan"), "cells": np.int64(4096)},
                                units={"yield": "1", "programming_sigma_s@level3": "S"})
        assert count == 5
        assert add_array_stats(session, run, None, crossbar, {}) == 0
        add_array_stats(session, run, None, crossbar, {"temperature_k": 300.0}, units={"temperature_k": "K"})
        with pytest.raises(ValueError, match="'tmp'"):
            add_array_stats(session, run, None, crossbar, {"temperature_k": 1.0}, units={"tmp": "K"})
        with pytest.raises(ValueError, match="real number"):
            add_array_stats(session, run, None, crossbar, {"bad": "0.5"})
    with scratch_db.session() as session:
        stats = {s.quantity: s for s in session.scalars(select(ArrayStat))}
        assert {q: (s.value, s.unit) for q, s in stats.items()} == {
            "yield": (0.97, "1"), "read_noise_relative": (0.012, ""), "stuck_any": (1.0, ""),
            "programming_sigma_s@level3": (None, "S"), "cells": (4096.0, ""), "temperature_k": (300.0, "K")}
        assert stats["yield"].step_fk == step.id and stats["temperature_k"].step_fk is None


def test_noise_models_add_get_latest(scratch_db):
    params = {"read_noise": {"relative": np.float32(0.01), "floor_s": 1e-8}, "levels": np.array([1.0, 2.0]),
              "drift_nu": float("inf")}
    with scratch_db.session() as session:
        _, crossbar = _bench(session)
        run, step = _calibration_run(session, crossbar)
        first = add_noise_model(session, crossbar, params, schema_version=1, run=run, step=step,
                                source_runs=[run.id, np.int64(run.id)])
        second = add_noise_model(session, crossbar, {"read_noise": {"relative": 0.02}}, schema_version=2)
        # The newest by creation time, whatever the ids say (of a completed step: see the next test).
        first.created_at = second.created_at + timedelta(seconds=1)
        finish_step(session, step, "completed", summary={})
        with pytest.raises(ValueError, match="source_runs"):
            add_noise_model(session, crossbar, {}, schema_version=1, source_runs=["3"])
        with pytest.raises(ValueError, match="dict"):
            add_noise_model(session, crossbar, [1, 2], schema_version=1)
        with pytest.raises(ValueError, match="schema_version"):
            add_noise_model(session, crossbar, {}, schema_version=1.5)
    with scratch_db.session() as session:
        stored = get_noise_model(session, first.id)
        assert stored.params == {"read_noise": {"relative": pytest.approx(0.01), "floor_s": 1e-8},
                                 "levels": [1.0, 2.0], "drift_nu": None}
        assert (stored.schema_version, stored.run_fk, stored.step_fk) == (1, run.id, step.id)
        assert stored.source_runs == [run.id, run.id]
        assert stored.crossbar_array.array_id == "chip-A"
        assert get_noise_model(session, second.id).source_runs == []
        assert latest_noise_model(session, "chip-A").id == first.id
        with pytest.raises(LookupError, match="12345"):
            get_noise_model(session, 12345)
        with pytest.raises(LookupError, match="no array named 'chip-Z'; known arrays: chip-A"):
            latest_noise_model(session, "chip-Z")
        other = get_or_create_array(session, get_or_create_instrument(session, "mock", "mock-0", "S", "1"),
                                    "chip-B", 4, 4)
        with pytest.raises(LookupError, match="'chip-B' has no noise model"):
            latest_noise_model(session, other.array_id)


def test_deleting_a_run_removes_its_statistics_and_keeps_its_noise_models(db):
    with db.session() as session:
        _, crossbar = _bench(session)
        run, step = _calibration_run(session, crossbar)
        add_device_stats(session, run, step, crossbar, {"g_max_s": np.ones((ROWS, COLS))})
        add_array_stats(session, run, step, crossbar, {"yield": 1.0})
        model = add_noise_model(session, crossbar, {"a": 1}, schema_version=1, run=run, step=step,
                                source_runs=[run.id])
    with db.session() as session:
        session.execute(delete(Run).where(Run.id == run.id))
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(DeviceStat)) == 0
        assert session.scalar(select(func.count()).select_from(ArrayStat)) == 0
        kept = session.get(NoiseModelRecord, model.id)
        assert (kept.run_fk, kept.step_fk, kept.source_runs, kept.params) == (None, None, [run.id], {"a": 1})


def test_runs_starting_at_once_on_a_new_array_all_get_it(db):
    # Every thread looks first, finds nothing, and inserts: only one insert can win.
    barrier = threading.Barrier(4)
    errors, ids = [], []

    def start():
        try:
            with db.session() as session:
                session.execute(select(func.count()).select_from(CrossbarArray))
                barrier.wait(timeout=30)
                instrument = get_or_create_instrument(session, "mock", "bench-9", "SoftCrossbar", "1.0")
                ids.append(get_or_create_array(session, instrument, "chip-new", 16, 16).id)
        except Exception as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(ids) == 4 and len(set(ids)) == 1
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Instrument)) == 1


def test_checkpoints_round_trip_and_latest_by_name(tmp_path):
    from db import Database
    from db.records import add_checkpoint, get_checkpoint, latest_checkpoint

    blob = bytes(range(256)) * 10
    with Database.open(f"sqlite:///{tmp_path / 'ck.db'}") as db:
        with db.session() as s:
            first = add_checkpoint(s, name="s4d_digits", model_kind="s4d", task="digits", config={"d_model": 64},
                                   state=blob, code_version="x", metrics={"test_accuracy": 0.97})
            second = add_checkpoint(s, name="s4d_digits", model_kind="s4d", task="digits", config={"d_model": 32},
                                    state=b"later", code_version="x")
        with db.session() as s:
            assert get_checkpoint(s, first.id).state == blob
            assert get_checkpoint(s, first.id).metrics == {"test_accuracy": 0.97}
            assert latest_checkpoint(s, "s4d_digits").id == second.id
            with pytest.raises(LookupError, match="no checkpoint named 'other'"):
                latest_checkpoint(s, "other")
            with pytest.raises(LookupError, match="12345"):
                get_checkpoint(s, 12345)
