"""`python -m hil.history` export, compare, the hiding of runs that never reached an instrument, and
tables that stay readable at any width."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest
from sqlalchemy import select, update

import hil.history
from db import Database
from db.models import DeviceStat, Measurement, Run
from db.records import (add_array_stats, add_device_stats, add_measurement, add_noise_model, get_array,
                        get_or_create_array, get_or_create_instrument, load_measurement_array)
from db.runs import finish_run, finish_step, start_run, start_step
from history_data import build_history

LONG_ERROR = ("InstrumentError: serial-board /dev/ttyUSB0: could not open port /dev/ttyUSB0: [Errno 2] No such "
              "file or directory: '/dev/ttyUSB0' while sending *IDN? after 3 retries of 2.0 s each")
BIG_ID = 9_876_543_210


def cli(capsys, url, *args):
    try:
        code = hil.history.main(["--db", url, *args])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _calibration(session, crossbar, rng, *, yield_, g_max_s, sigma):
    """A completed calibration run on ``crossbar`` with raw arrays, device maps, statistics and a model."""
    run = start_run(session, protocol_name="calibrate", protocol_path=None, protocol_text="name: calibrate\n",
                    backend="mock", seed=1, code_version="0.1.0", crossbar_array=crossbar)
    step = start_step(session, run, 0, "calibration", "calibrate")
    reads = rng.normal(5e-5, 1e-6, size=(3, 4, 5))
    reads[1, 2, 3] = np.nan                   # an unreadable cell: NaN must survive the trip
    add_measurement(session, run, step, "window.after_set", "conductance", "S", reads, crossbar_array=crossbar)
    add_measurement(session, run, step, "drift.mean", "conductance", "S", rng.normal(size=(6, 4, 5)) * 1e-6,
                    crossbar_array=crossbar, meta={"times_s": [1, 10, 100, 1e3, 1e4, 1e5]})
    add_measurement(session, run, step, "pulse_response.set_cells", "cell_index", "1",
                    rng.integers(0, 4, size=(2, 7, 2)), crossbar_array=crossbar)
    add_measurement(session, run, step, "periphery.zero_input", "current", "A", rng.normal(size=9) * 1e-9,
                    crossbar_array=crossbar)
    g_max = np.full((4, 5), g_max_s) + rng.normal(0, 1e-6, size=(4, 5))
    stuck = np.zeros((4, 5), dtype=bool)
    stuck[0, 1] = True
    add_device_stats(session, run, step, crossbar, {"g_max_s": g_max, "stuck_on": stuck})
    add_array_stats(session, run, step, crossbar, {"yield": yield_, "g_max_s": g_max_s},
                    units={"yield": "1", "g_max_s": "S"})
    add_noise_model(session, crossbar, {"schema_version": 1, "array_id": crossbar.array_id, "read": {"relative": sigma},
                                        "window": {"g_max_s": g_max_s}, "drift": {"law": "power"}},
                    schema_version=1, run=run, step=step, source_runs=[run.id])
    finish_step(session, step, "completed")
    finish_run(session, run, "completed")
    return run.id


@pytest.fixture
def lab(tmp_path):
    """Two calibrations of chip-A, one of chip-C, a run without calibration, and a run that never opened."""
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    rng = np.random.default_rng(3)
    with Database.open(url) as database, database.session() as session:
        instrument = get_or_create_instrument(session, "mock", "bench-1", "SoftCrossbar", "1.0")
        chip_a = get_or_create_array(session, instrument, "chip-A", 4, 5)
        chip_c = get_or_create_array(session, instrument, "chip-C", 4, 5)
        first = _calibration(session, chip_a, rng, yield_=0.95, g_max_s=5e-5, sigma=0.010)
        second = _calibration(session, chip_a, rng, yield_=0.90, g_max_s=4e-5, sigma=0.012)
        other = _calibration(session, chip_c, rng, yield_=0.80, g_max_s=6e-5, sigma=0.02)
        bare = start_run(session, protocol_name="read", protocol_path=None, protocol_text="x", backend="mock",
                         seed=None, code_version="0.1.0", crossbar_array=chip_a)
        finish_run(session, bare, "completed")
        unopened = start_run(session, protocol_name="calibrate", protocol_path=None, protocol_text="x",
                             backend="serial-board", seed=None, code_version="0.1.0")
        finish_run(session, unopened, "failed", LONG_ERROR)
        ids = {"first": first, "second": second, "other": other, "bare": bare.id, "unopened": unopened.id}
    return url, ids


# --- export -------------------------------------------------------------------------------------------------


def _stored(url, run_id):
    """What the run stored, read straight from the tables: measurement name -> array, quantity -> map."""
    with Database.open(url) as database, database.session() as session:
        arrays = {m.name: load_measurement_array(m)
                  for m in session.scalars(select(Measurement).where(Measurement.run_fk == run_id))}
        maps: dict[str, np.ndarray] = {}
        for stat in session.scalars(select(DeviceStat).where(DeviceStat.run_fk == run_id)):
            grid = maps.setdefault(stat.quantity, np.full((4, 5), np.nan))
            grid[stat.row, stat.col] = np.nan if stat.value is None else stat.value
    return arrays, maps


@pytest.mark.parametrize("fmt", ["npy", "csv"])
def test_export_round_trips_every_stored_array(lab, capsys, tmp_path, fmt):
    url, ids = lab
    out_dir = tmp_path / f"export-{fmt}"
    code, out, err = cli(capsys, url, "export", str(ids["first"]), "--format", fmt, "--out", str(out_dir))
    assert (code, err) == (0, "")
    assert out.strip() == str(out_dir / "index.json")
    index = json.loads((out_dir / "index.json").read_text())
    assert (index["run"], index["array_id"], index["format"]) == (ids["first"], "chip-A", fmt)
    arrays, maps = _stored(url, ids["first"])
    by_quantity = {entry["quantity"]: entry for entry in index["files"]}
    assert set(by_quantity) == set(arrays) | set(maps)
    for entry in index["files"]:
        path = out_dir / entry["file"]
        assert path.suffix == f".{fmt}" and entry["step"] == "calibration"
        expected = arrays[entry["quantity"]] if entry["source"] == "measurement" else maps[entry["quantity"]]
        if fmt == "npy":
            got = np.load(path, allow_pickle=False)
            assert got.dtype == expected.dtype
        else:
            got = np.loadtxt(path, delimiter=",", ndmin=2).reshape(entry["shape"])
        assert list(got.shape) == list(expected.shape) == entry["shape"]
        np.testing.assert_array_equal(got, expected)  # exactly: NaN in the same places, every digit
    drift = by_quantity["drift.mean"]
    assert (drift["unit"], drift["kind"], drift["meta"]["times_s"][-1]) == ("S", "conductance", 1e5)
    if fmt == "csv":
        header = [line for line in (out_dir / drift["file"]).read_text().splitlines() if line.startswith("#")]
        assert "drift.mean" in header[0] and "flattened to 24 rows x 5 columns" in header[1]
        assert "flattened" in drift["layout"]


def test_export_of_one_step_and_default_directory(lab, capsys, tmp_path, monkeypatch):
    url, ids = lab
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, url, "export", str(ids["second"]), "calibration")
    assert code == 0
    assert out.strip() == f"exports/run-{ids['second']}-calibration/index.json"
    assert (tmp_path / "exports" / f"run-{ids['second']}-calibration" / "calibration" / "window.after_set.npy").exists()


EXPORT_REFUSALS = {
    "unknown run": (lambda ids, d: ["export", "4242", "--out", d], "no run 4242"),
    "unknown step": (lambda ids, d: ["export", str(ids["first"]), "fit", "--out", d], "its steps: calibration"),
    "nothing stored": (lambda ids, d: ["export", str(ids["bare"]), "--out", d], "nothing to export"),
    "bad format": (lambda ids, d: ["export", str(ids["first"]), "--format", "xlsx"], "invalid choice"),
}


@pytest.mark.parametrize("case", sorted(EXPORT_REFUSALS))
def test_export_refusals_are_one_line(lab, capsys, tmp_path, case):
    url, ids = lab
    args, expected = EXPORT_REFUSALS[case]
    code, out, err = cli(capsys, url, *args(ids, str(tmp_path / "x")))
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and expected in err


def test_export_does_not_write_into_an_earlier_export(lab, capsys, tmp_path):
    url, ids = lab
    target = tmp_path / "e"
    assert cli(capsys, url, "export", str(ids["first"]), "--out", str(target))[0] == 0
    before = sorted(p.name for p in target.rglob("*"))
    code, _, err = cli(capsys, url, "export", str(ids["second"]), "--format", "csv", "--out", str(target))
    assert code == 2 and "not an empty directory" in err
    assert sorted(p.name for p in target.rglob("*")) == before


# --- compare ------------------------------------------------------------------------------------------------


def test_compare_puts_each_statistic_beside_its_change(lab, capsys, tmp_path, monkeypatch):
    url, ids = lab
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, url, "--format", "json", "compare", str(ids["first"]), str(ids["second"]))
    assert code == 0
    rows = {(row["source"], row["quantity"]): row for row in json.loads(out)}
    assert rows[("statistic", "yield")] == {
        "source": "statistic", "quantity": "yield", "unit": "1", "a": 0.95, "b": 0.90,
        "change": pytest.approx(-0.05), "relative_change": pytest.approx(-0.05 / 0.95)}
    assert rows[("statistic", "g_max_s")]["unit"] == "S"
    relative = rows[("noise model", "read.relative")]
    assert (relative["a"], relative["b"]) == (0.010, 0.012) and relative["relative_change"] == pytest.approx(0.2)
    # A model parameter already given as a statistic is not repeated; provenance is not compared.
    assert ("noise model", "window.g_max_s") not in rows and ("noise model", "array_id") not in rows
    assert rows[("noise model", "drift.law")]["change"] is None
    figure = tmp_path / "reports" / "history" / f"compare-run-{ids['first']}-run-{ids['second']}.png"
    assert err.strip() == f"figure: {figure.relative_to(tmp_path)}" and figure.stat().st_size > 10_000

    code, out, _ = cli(capsys, url, "compare", str(ids["first"]), str(ids["second"]))
    assert code == 0 and "-5.26%" in out and f"A: run {ids['first']}" in out and "figure:" in out


def test_compare_figure_overlays_both_runs_on_shared_bins(lab):
    url, ids = lab
    with Database.open(url) as database, database.session() as session:
        from db import history
        maps = [{m["quantity"]: m["values"] for m in history.run_device_stats(session, ids[k])}
                for k in ("first", "second")]
    figure = hil.history.compare_figure(maps, ["run A", "run B"], "chip-A")
    (axes,) = figure.axes  # stuck_on is a flag: counted in the title, not drawn
    outlines = [patch for patch in axes.patches]
    assert len(outlines) == 2
    edges = [np.unique(np.round(p.get_path().vertices[:, 0], 12)) for p in outlines]
    np.testing.assert_array_equal(edges[0], edges[1])
    assert "stuck_on: 1 → 1" in figure._suptitle.get_text()
    assert axes.get_xlabel() == "g_max (µS)"


COMPARE_REFUSALS = {
    "no calibration": (lambda ids: ["compare", str(ids["first"]), str(ids["bare"])], "has no calibration"),
    "other array": (lambda ids: ["compare", str(ids["first"]), str(ids["other"])], "--any-array"),
    "unknown run": (lambda ids: ["compare", str(ids["first"]), "4242"], "no run 4242"),
}


@pytest.mark.parametrize("case", sorted(COMPARE_REFUSALS))
def test_compare_refusals_are_one_line(lab, capsys, tmp_path, monkeypatch, case):
    url, ids = lab
    monkeypatch.chdir(tmp_path)
    args, expected = COMPARE_REFUSALS[case]
    code, out, err = cli(capsys, url, *args(ids))
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and expected in err
    assert not (tmp_path / "reports").exists()


def test_compare_across_arrays_when_asked(lab, capsys, tmp_path, monkeypatch):
    url, ids = lab
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, url, "--format", "csv", "compare", str(ids["first"]), str(ids["other"]),
                       "--any-array")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["b"] for r in rows if r["quantity"] == "yield"] == ["0.8"]


# --- runs that never reached an instrument ------------------------------------------------------------------


def test_runs_that_never_opened_are_kept_but_hidden(lab, capsys):
    url, ids = lab
    code, out, _ = cli(capsys, url, "--format", "json", "runs")
    listed = [row["id"] for row in json.loads(out)]
    assert code == 0 and ids["unopened"] not in listed and ids["bare"] in listed
    _, out, _ = cli(capsys, url, "runs")
    assert "(1 run that ended before reaching an instrument is hidden; --all lists it)" in out
    _, out, _ = cli(capsys, url, "--format", "json", "runs", "--all")
    shown = {row["id"]: row for row in json.loads(out)}
    assert shown[ids["unopened"]]["error"] == LONG_ERROR and shown[ids["unopened"]]["array_id"] is None
    _, out, _ = cli(capsys, url, "runs", "--all")
    assert "hidden" not in out


def test_a_run_still_opening_is_not_hidden(lab, capsys):
    url, ids = lab
    with Database.open(url) as database, database.session() as session:
        opening = start_run(session, protocol_name="calibrate", protocol_path=None, protocol_text="x",
                            backend="mock", seed=None, code_version="0.1.0").id
    _, out, _ = cli(capsys, url, "--format", "json", "runs", "--status", "running")
    assert [row["id"] for row in json.loads(out)] == [opening]


# --- tables at any width ------------------------------------------------------------------------------------


@pytest.fixture
def crowded(tmp_path):
    """The history of ``history_data`` plus a failed run with a long error and a long id."""
    url = f"sqlite:///{tmp_path / 'crowded.db'}"
    with Database.open(url) as database, database.session() as session:
        build_history(session)
        run = start_run(session, protocol_name="calibrate-with-a-long-protocol-name", protocol_path=None,
                        protocol_text="x", backend="mock", seed=7, code_version="0.1.0+g1234567.dirty",
                        crossbar_array=get_array(session, "chip-A"))
        finish_run(session, run, "failed", LONG_ERROR)
        session.execute(update(Run).where(Run.id == run.id).values(id=BIG_ID))
        add_noise_model(session, get_array(session, "chip-A"), {"read": {"relative": 0.01}}, schema_version=1,
                        source_runs=[1, 2, 3, 4, 5])
    with Database.open(url) as database, database.session() as session:
        ids = [r for (r,) in session.execute(select(Run.id))]
    return url, ids


@pytest.mark.parametrize("width", [40, 60, 80, 120, 200])
@pytest.mark.parametrize("command", [["runs"], ["arrays"], ["models"], ["trend", "yield", "--array", "chip-A"]])
def test_tables_keep_every_id_and_column_at_any_width(crowded, capsys, monkeypatch, width, command):
    url, ids = crowded
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, err = cli(capsys, url, *command)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= width
    kind = command[0]
    for column in hil.history.TABLE_COLUMNS[kind]:
        assert re.search(rf"(^|[\s│┃]){re.escape(column)}([\s│┃]|$)", out, re.MULTILINE), column
    if kind == "runs":
        cells = {cell.strip() for line in lines for cell in re.split(r"[│┃]", line)}
        assert {str(i) for i in ids} <= cells  # each id whole, in a cell of its own
        # The long error is all there, wrapped rather than cut.
        assert LONG_ERROR.replace(" ", "") in _column_text(lines, "error").replace(" ", "")


def _column_text(lines, name):
    """The text of column ``name`` read down the table, in either layout."""
    rows = [[cell.strip() for cell in re.split(r"[│┃]", line)[1:-1]] for line in lines if line[:1] in "│┃"]
    header = next(row for row in rows if name in row)
    if len(header) > 2:  # side by side
        return "".join(row[header.index(name)] for row in rows if len(row) == len(header))
    text, taking = "", False
    for label, value in rows:  # one block of label-value lines per row
        taking = label == name if label else taking
        text += value if taking else ""
    return text


def test_table_fits_side_by_side_when_there_is_room(crowded, capsys, monkeypatch):
    url, _ = crowded
    monkeypatch.setenv("COLUMNS", "200")
    _, out, _ = cli(capsys, url, "runs")
    header = next(line for line in out.splitlines() if "protocol_name" in line)
    assert all(column in header for column in hil.history.TABLE_COLUMNS["runs"])
    assert str(BIG_ID) in out


def test_compare_an_arrays_two_newest_calibrations(lab, capsys, tmp_path, monkeypatch):
    """--array picks chip-A's two calibrations (older as A), passing over its newer run that calibrated nothing."""
    url, ids = lab
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, url, "--format", "json", "compare", "--array", "chip-A")
    assert code == 0
    yield_row = next(row for row in json.loads(out) if row["quantity"] == "yield")
    assert (yield_row["a"], yield_row["b"]) == (0.95, 0.90)
    code, _, err = cli(capsys, url, "compare", "--array", "chip-C")
    assert code == 2 and "'chip-C' has 1 completed calibration(s); compare needs two" in err
    code, _, err = cli(capsys, url, "compare", str(ids["first"]))
    assert code == 2 and "give two run ids" in err


def test_export_latest_takes_the_arrays_newest_completed_run(lab, capsys, tmp_path):
    url, ids = lab
    code, out, _ = cli(capsys, url, "export", "latest", "--array", "chip-C", "--out", str(tmp_path / "c"))
    assert code == 0
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert index["run"] == ids["other"]
    code, _, err = cli(capsys, url, "export", "latest")
    assert code == 2 and "needs --array" in err
