"""History queries: arrays, runs and their filters, trends of array statistics, device histories, noise models."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from db import Database
from db.history import (array_quantities, array_trend, device_history, list_arrays, list_noise_models, list_runs,
                        to_frame)
from db.models import Run
from db.records import add_noise_model, get_array
from history_data import T0, YIELDS, build_history


@pytest.fixture
def history(db_url):
    with Database.open(db_url) as database:
        with database.session() as session:
            runs = build_history(session)
        yield database, runs


def test_trend_over_runs_is_oldest_first_and_per_array(history):
    database, runs = history
    with database.session() as session:
        trend = array_trend(session, "chip-A", "yield")
        other = array_trend(session, "chip-B", "yield")
        assert array_trend(session, "chip-A", "no such quantity") == []
    assert [row["run_id"] for row in trend] == [runs[day] for day in range(5)]
    assert [row["value"] for row in trend] == YIELDS
    assert [row["started_at"] for row in trend] == [T0 + timedelta(days=day) for day in range(5)]
    assert {row["step_name"] for row in trend} == {"statistics"} and {row["unit"] for row in trend} == {"1"}
    assert [(row["run_id"], row["value"]) for row in other] == [(runs["B"], 0.5)]


def test_device_history(history):
    database, runs = history
    with database.session() as session:
        cell = device_history(session, "chip-A", 3, 3)
        g_max = device_history(session, "chip-A", 2, 5, quantity="g_max_s")
        corner = device_history(session, "chip-A", 0, 0, quantity="g_max_s")
        with pytest.raises(ValueError, match=r"\(8, 0\) is outside array 'chip-A', which is 8x8"):
            device_history(session, "chip-A", 8, 0)
    assert [(row["run_id"], row["quantity"]) for row in cell] == [
        (runs[day], quantity) for day in range(5) for quantity in ("g_max_s", "stuck")]
    assert [row["value"] for row in cell if row["quantity"] == "stuck"] == [1.0] * 5
    assert [row["value"] for row in g_max] == [pytest.approx(5e-5 + 1e-6 * day) for day in range(5)]
    assert [row["started_at"] for row in g_max] == [T0 + timedelta(days=day) for day in range(5)]
    assert [row["value"] for row in corner] == [None] * 5


def test_unknown_array_is_named_with_the_known_ones(history):
    database, _ = history
    with database.session() as session:
        for query in (lambda: array_trend(session, "chip-Z", "yield"), lambda: array_quantities(session, "chip-Z"),
                      lambda: device_history(session, "chip-Z", 0, 0), lambda: list_runs(session, array_id="chip-Z"),
                      lambda: list_noise_models(session, array_id="chip-Z")):
            with pytest.raises(LookupError) as info:
                query()
            assert str(info.value) == "no array named 'chip-Z'; known arrays: chip-A, chip-B, chip-unused"


def test_list_arrays(history):
    database, _ = history
    with database.session() as session:
        arrays = list_arrays(session)
    assert arrays == [
        {"array_id": "chip-A", "rows": 8, "cols": 8, "wafer": None, "die": None, "backend": "mock", "instrument_id": "bench-1", "runs": 5,
         "last_run_at": T0 + timedelta(days=4)},
        {"array_id": "chip-B", "rows": 4, "cols": 4, "wafer": None, "die": None, "backend": "mock", "instrument_id": "bench-1", "runs": 1,
         "last_run_at": T0 + timedelta(days=1, hours=1)},
        {"array_id": "chip-unused", "rows": 2, "cols": 2, "wafer": None, "die": None, "backend": "mock", "instrument_id": "bench-1", "runs": 0,
         "last_run_at": None},
    ]
    assert arrays[0]["last_run_at"].tzinfo is not None


def test_list_runs_and_its_filters(history):
    database, runs = history
    with database.session() as session:
        every = list_runs(session)
        assert [row["id"] for row in every] == [runs[4], runs[3], runs[2], runs["B"], runs[1], runs[0]]
        newest = every[0]
        assert newest == {"id": runs[4], "protocol_name": "calibrate", "status": "completed", "backend": "mock",
                          "array_id": "chip-A", "seed": 4, "started_at": T0 + timedelta(days=4),
                          "finished_at": T0 + timedelta(days=4, minutes=5), "duration_s": 300.0, "error": None,
                          "code_version": "0.1.0", "progress": None,
                          "operator": None, "notes": None}

        def ids(**filters):
            return [row["id"] for row in list_runs(session, **filters)]

        assert ids(status="failed") == [runs[2]]
        assert list_runs(session, status="failed")[0]["error"] == "InstrumentTimeout: no reply"
        assert ids(protocol="program") == [runs["B"]]
        assert ids(array_id="chip-B") == [runs["B"]]
        assert ids(array_id="chip-unused") == []
        assert ids(array_id="chip-A", status="completed", limit=2) == [runs[4], runs[3]]
        # since is inclusive, until exclusive; a naive datetime is UTC.
        assert ids(since=T0 + timedelta(days=3)) == [runs[4], runs[3]]
        assert ids(until=datetime(2025, 3, 2, 9, 0)) == [runs[0]]
        assert ids(since=datetime(2025, 3, 2), until=datetime(2025, 3, 3)) == [runs["B"], runs[1]]
        local = timezone(timedelta(hours=2))
        assert ids(since=datetime(2025, 3, 5, 11, 0, tzinfo=local)) == [runs[4]]
        assert ids(limit=0) == []
        with pytest.raises(ValueError, match="status 'done'"):
            list_runs(session, status="done")


def test_noise_models_are_listed_newest_first(history):
    database, runs = history
    with database.session() as session:
        chip_a, chip_b = get_array(session, "chip-A"), get_array(session, "chip-B")
        older = add_noise_model(session, chip_a, {"v": 1}, schema_version=1, source_runs=[runs[0], runs[1]])
        newer = add_noise_model(session, chip_a, {"v": 2}, schema_version=2, source_runs=[runs[2]])
        newer.created_at = older.created_at + timedelta(seconds=1)
        of_b = add_noise_model(session, chip_b, {"v": 3}, schema_version=2, run=session.get(Run, runs["B"]))
        of_b.created_at = older.created_at - timedelta(seconds=1)
    with database.session() as session:
        models = list_noise_models(session)
        of_a = list_noise_models(session, array_id="chip-A")
    assert [m["id"] for m in models] == [newer.id, older.id, of_b.id]
    assert models[0] == {"id": newer.id, "array_id": "chip-A", "run_id": None, "schema_version": 2,
                         "created_at": newer.created_at, "source_runs": [runs[2]]}
    assert [m["id"] for m in of_a] == [newer.id, older.id]
    assert models[2]["run_id"] == runs["B"]


def test_array_quantities(history):
    database, _ = history
    with database.session() as session:
        assert array_quantities(session, "chip-A") == [
            {"quantity": "read_noise_relative", "table": "array_stats", "unit": ""},
            {"quantity": "yield", "table": "array_stats", "unit": "1"},
            {"quantity": "g_max_s", "table": "device_stats", "unit": None},
            {"quantity": "stuck", "table": "device_stats", "unit": None},
        ]
        assert array_quantities(session, "chip-unused") == []


def test_to_frame_has_the_same_rows(history):
    database, _ = history
    with database.session() as session:
        runs = list_runs(session)
        trend = array_trend(session, "chip-A", "yield")
    frame = to_frame(runs)
    assert list(frame.columns) == list(runs[0])
    assert len(frame) == len(runs)
    assert frame["id"].tolist() == [row["id"] for row in runs]
    assert frame["started_at"].tolist() == [row["started_at"] for row in runs]
    assert str(frame["started_at"].dt.tz) == "UTC"
    assert to_frame(trend)["value"].tolist() == YIELDS
    assert to_frame([]).empty
