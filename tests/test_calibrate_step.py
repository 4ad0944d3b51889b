"""The calibrate step through `python -m hil.run`: data, statistics, noise model and report."""

from pathlib import Path

import pytest
from sqlalchemy import func, select

import hil.run
from db import Database
from db.models import Measurement, Run
from hil.noise_models import load_noise_model

ROOT = Path(__file__).resolve().parent.parent

SMALL_CALIBRATION = """name: small_calibration
array: {rows: 32, cols: 32}
steps:
  - kind: calibrate
    name: cal
    pulse_response: {amplitudes_v: [1.2, 1.5], pulses: 10, cells: 8}
    programming: {levels: 4, repeats: 1}
    read_noise: {reads: 20}
    drift: {times_s: [1, 10, 100, 1000], reads: 2}
    periphery: {repeats: 50, sweep_points: 64}
"""


def test_calibration_run_stores_data_model_and_report(tmp_path):
    protocol = tmp_path / "cal.yaml"
    protocol.write_text(SMALL_CALIBRATION, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'cal.db'}"
    reports = tmp_path / "reports"
    assert hil.run.main([str(protocol), "--db", url, "--seed", "3", "--report-dir", str(reports)]) == 0
    with Database.open(url) as db:
        with db.session() as s:
            run = s.scalars(select(Run)).one()
            assert run.status == "completed"
            names = set(s.scalars(select(Measurement.name)))
            assert {"window.after_reset", "window.after_set", "programming.achieved", "read_noise.reads",
                    "drift.mean", "pulse_response.set", "periphery.sweep"} <= names
            values = s.scalar(select(func.sum(Measurement.n)))
            assert values > 32 * 32 * 20
            summary = run.steps[0].summary
        model = load_noise_model(db, array_id="mock-32x32-seed0")
        assert load_noise_model(db, model_id=summary["noise_model_id"]) == model
    assert model.rows == 32 and model.drift is not None and len(model.programming.levels_s) == 4
    assert model.read.relative == pytest.approx(0.005, rel=0.2)
    report = Path(summary["report"])
    assert report.exists() and report.parent.parent == reports
    text = report.read_text(encoding="utf-8")
    for figure in ("yield_map.png", "levels_histogram.png", "read_noise.png", "drift.png", "pulse_response.png"):
        assert f"]({figure})" in text and (report.parent / figure).stat().st_size > 10_000


def test_shipped_calibration_protocol_is_valid():
    from hil.protocol_loader import load_protocol
    step = load_protocol(ROOT / "protocols" / "calibrate.yaml").protocol.steps[0]
    assert step.kind == "calibrate"
    assert all(getattr(step, part) is not None
               for part in ("window", "pulse_response", "programming", "read_noise", "drift", "periphery"))


def test_calibration_voltage_beyond_limits_is_rejected_with_its_line(tmp_path, capsys):
    protocol = tmp_path / "bad.yaml"
    protocol.write_text(SMALL_CALIBRATION.replace("amplitudes_v: [1.2, 1.5]", "amplitudes_v: [1.2, 2.9]"),
                        encoding="utf-8")
    assert hil.run.main([str(protocol), "--db", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    err = capsys.readouterr().err
    assert ":6:" in err and "pulse_response.amplitudes_v[1]" in err and "max_write_voltage_v" in err
    assert not (tmp_path / "x.db").exists()


def test_trend_over_several_calibrations_of_the_same_chip(tmp_path):
    """Three runs (different run seeds) on one simulated chip: one array, three points in its history."""
    from db.history import array_trend, device_history, to_frame

    protocol = tmp_path / "cal.yaml"
    protocol.write_text(SMALL_CALIBRATION.replace("name: cal\n", "name: cal\n    report: false\n"),
                        encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'cal.db'}"
    for seed in (1, 2, 3):
        assert hil.run.main([str(protocol), "--db", url, "--seed", str(seed)]) == 0
    with Database.open(url) as db, db.session() as s:
        trend = array_trend(s, "mock-32x32-seed0", "read_noise_relative")
        runs = s.scalars(select(Run).order_by(Run.id)).all()
        history = device_history(s, "mock-32x32-seed0", 5, 7, quantity="g_max_s")
    assert [t["run_id"] for t in trend] == [r.id for r in runs]
    values = [t["value"] for t in trend]
    assert all(v == pytest.approx(0.005, rel=0.1) for v in values)
    assert len(set(values)) == 3                      # three sessions, three different measurements
    assert list(to_frame(trend)["value"]) == values
    # the chip is the same, so its devices' bounds agree across runs to within read noise
    g_max = [h["value"] for h in history]
    assert len(g_max) == 3 and max(g_max) - min(g_max) < 0.03 * max(g_max)
