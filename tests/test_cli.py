"""`python -m hil.run` end to end: the quickstart, faults mid-run, and bad protocols rejected untouched."""

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

import drivers.mock
import hil.run
from db import Database
from db.models import DeviceResult, Measurement, Run
from db.records import load_measurement_array
from drivers import SoftwareCrossbar

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "protocols" / "quickstart.yaml"


def small_protocol(tmp_path: Path, steps: str, name="small") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""name: {name}
array: {{rows: 16, cols: 16}}
steps:
{steps}""", encoding="utf-8")
    return path


PROGRAM_AND_READ = """  - kind: program
    pattern: {kind: levels, levels: 4, g_low_s: 1.0e-5, g_high_s: 6.0e-5}
  - kind: read
    repeats: 2
"""


def test_quickstart_end_to_end_in_a_subprocess(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    proc = subprocess.run([sys.executable, "-m", "hil.run", str(QUICKSTART), "--backend", "mock", "--db", url],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "program_levels" in proc.stdout and "readback" in proc.stdout and "completed" in proc.stdout
    with Database.open(url) as db, db.session() as s:
        run = s.scalars(select(Run)).one()
        assert run.status == "completed" and run.error is None and run.finished_at is not None
        assert run.protocol_text == QUICKSTART.read_text(encoding="utf-8")
        assert [st.status for st in run.steps] == ["completed", "completed"]
        assert s.scalar(select(func.count()).select_from(DeviceResult)) == 64 * 64
        ok = s.scalar(select(func.count()).select_from(DeviceResult).where(DeviceResult.success.is_(True)))
        assert ok / 4096 > 0.97
        achieved = s.scalars(select(Measurement).where(Measurement.name == "achieved")).one()
        assert load_measurement_array(achieved).shape == (64, 64)
        summary = run.steps[0].summary
        assert summary["iterations"] <= 20
        assert summary["instrument_calls"] == 1 + 2 * summary["iterations"]


def test_same_seed_gives_bit_identical_measurements(tmp_path):
    path = small_protocol(tmp_path, PROGRAM_AND_READ)
    blobs = []
    for i, seed in enumerate([5, 5, 6]):
        url = f"sqlite:///{tmp_path / f'r{i}.db'}"
        assert hil.run.main([str(path), "--db", url, "--seed", str(seed)]) == 0
        with Database.open(url) as db, db.session() as s:
            run = s.scalars(select(Run)).one()
            assert run.seed == seed
            blobs.append([m.data for m in s.scalars(select(Measurement).order_by(Measurement.id))])
    assert blobs[0] == blobs[1]
    assert blobs[0] != blobs[2]


def test_fault_mid_run_marks_run_failed_and_keeps_earlier_measurements(tmp_path, monkeypatch):
    path = small_protocol(tmp_path, """  - kind: read
    name: before
    repeats: 3
  - kind: program
    name: doomed
    pattern: {kind: checkerboard, g_low_s: 1.0e-5, g_high_s: 6.0e-5}
""")
    real = drivers.mock.SoftwareCrossbar

    def flaky(*args, **kwargs):
        return real(*args, fail_on_transaction=8, **kwargs)

    # the backend imports the mock when it is chosen, so the module's attribute is the one to patch
    monkeypatch.setattr(drivers.mock, "SoftwareCrossbar", flaky)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    assert hil.run.main([str(path), "--db", url]) == 1
    with Database.open(url) as db, db.session() as s:
        run = s.scalars(select(Run)).one()
        assert run.status == "failed" and "InstrumentTimeout" in run.error and run.finished_at is not None
        before, doomed = sorted(run.steps, key=lambda st: st.index)
        assert before.status == "completed" and doomed.status == "failed" and "no reply" in doomed.error
        kept = s.scalars(select(Measurement).where(Measurement.step_fk == before.id)).one()
        assert load_measurement_array(kept).shape == (3, 16, 16)
        assert s.scalar(select(func.count()).select_from(DeviceResult)) == 0
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"


BAD_PROTOCOLS = {
    "syntax": ("name: x\narray: {rows: 4, cols: 4\nsteps: []\n", ":3: yaml syntax error"),
    "wrong type": ("name: x\narray: {rows: many, cols: 4}\nsteps: [{kind: read}]\n", "array.rows"),
    "unknown key": ("name: x\narray: {rows: 4, cols: 4}\nsteps:\n  - kind: read\n    repets: 3\n", "repets"),
    "out of range": ("name: x\narray: {rows: 4, cols: 4}\nsteps:\n  - kind: read\n    repeats: 0\n",
                     "steps[0].repeats"),
    "beyond safety limit": ("name: x\narray: {rows: 4, cols: 4}\nsteps:\n  - kind: program\n"
                            "    pattern: {kind: random, g_low_s: 1.0e-6, g_high_s: 2.0e-6}\n"
                            "    max_set_voltage_v: 5.0\n", "max_set_voltage_v"),
    "python tag": ("name: !!python/object/apply:os.system ['true']\narray: {rows: 4, cols: 4}\n"
                   "steps: [{kind: read}]\n", "tag"),
    "alias bomb": ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)), "alias"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROTOCOLS) + ["missing", "not utf-8", "huge"])
def test_bad_protocol_exits_2_with_one_line_and_touches_nothing(case, tmp_path, mocker, capsys):
    path = tmp_path / "bad.yaml"
    expected = None
    if case in BAD_PROTOCOLS:
        text, expected = BAD_PROTOCOLS[case]
        path.write_text(text, encoding="utf-8")
    elif case == "not utf-8":
        path.write_bytes(b"name: x\ndescription: caf\xe9\n")
        expected = ":2"
    elif case == "huge":
        path.write_text("name: x\n" + "#" * (2 << 20) + "\n", encoding="utf-8")
        expected = "large"
    backend = mocker.spy(hil.run, "make_backend")
    opened = mocker.spy(SoftwareCrossbar, "_open")
    db_file = tmp_path / "never.db"
    code = hil.run.main([str(path), "--db", f"sqlite:///{db_file}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert str(path) in err
    if expected:
        assert expected.lower() in err.lower()
    assert backend.call_count == 0 and opened.call_count == 0
    assert not db_file.exists()


def test_unknown_backend_is_rejected_by_the_command_line(tmp_path, capsys):
    # any registered plug-in is a valid name, so the name is checked against the registry, not by argparse
    assert hil.run.main([str(QUICKSTART), "--backend", "telepathy", "--db", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    err = capsys.readouterr().err
    assert "telepathy" in err and "choose one of: arc2, mock, serial, visa" in err
    assert not (tmp_path / "x.db").exists()


def test_unusable_database_url_exits_2_before_any_instrument_io(tmp_path, mocker, capsys):
    opened = mocker.spy(SoftwareCrossbar, "_open")
    code = hil.run.main([str(QUICKSTART), "--db", "nosuchdialect://x"])
    assert code == 2 and opened.call_count == 0
    assert "nosuchdialect" in capsys.readouterr().err


def test_database_url_from_environment(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("HIL_DB_URL", url)
    path = small_protocol(tmp_path, "  - kind: read\n")
    assert hil.run.main([str(path)]) == 0
    assert (tmp_path / "env.db").exists()
