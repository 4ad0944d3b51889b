"""Hostile and careless input refused before anything runs: strict numbers, physical bounds, the backend's
own limits, seeds the database can store, memory a protocol would need, lying .npy headers; and a lean
start-up that never loads torch for a refusal."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

import hil.run
from db import Database
from db import records, runs
from db.models import Measurement, Run, RunStep
from drivers.mock import SoftwareCrossbar
from hil.memory import estimate
from hil.protocol_loader import ProtocolError, load_protocol
from hil.runner import execute

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def protocol(tmp_path: Path, top: str = "", step: str = "  - kind: read\n", rows: int = 8) -> Path:
    return write(tmp_path, f"name: hostile\narray: {{rows: {rows}, cols: {rows}}}\n{top}steps:\n{step}")


def run_cli(args: list[str], cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


# --------------------------------------------------------------------------- start-up

def test_rejecting_a_protocol_and_listing_runs_never_import_torch(tmp_path):
    bad = protocol(tmp_path, top="limits: {max_read_voltage_v: '0.2'}\n")
    probe = ("import sys, runpy\nsys.argv = ['hil.run', %r]\ntry:\n    runpy.run_module('hil.run', run_name='__main__')\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             "heavy = sorted(m for m in ('torch', 'numba', 'matplotlib', 'hil.nn.s4d', 'scipy') if m in sys.modules)\n"
             "print('CODE', code, 'HEAVY', ','.join(heavy))\n") % str(bad)
    proc = run_cli(["-c", probe], tmp_path)
    assert "CODE 2 HEAVY \n" in proc.stdout, proc.stdout + proc.stderr
    assert "limits.max_read_voltage_v" in proc.stderr

    url = f"sqlite:///{tmp_path / 'h.db'}"
    Database.open(url).close()
    proc = run_cli(["-X", "importtime", "-m", "hil.history", "--db", url, "runs"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "torch" not in imported and "matplotlib" not in imported and "db" in imported


def test_help_is_lean():
    proc = run_cli(["-c", "import sys, hil.run\ntry:\n    hil.run.main(['--help'])\nexcept SystemExit:\n    pass\n"
                          "print('TORCH' if 'torch' in sys.modules else 'LEAN', 'numba' in sys.modules)"], ROOT)
    assert proc.stdout.strip().endswith("LEAN False"), proc.stdout


# --------------------------------------------------------------------------- strict numbers

@pytest.mark.parametrize("top, field", [
    ("limits: {max_read_voltage_v: '0.2'}\n", "limits.max_read_voltage_v"),
    ("limits: {max_pulse_width_s: true}\n", "limits.max_pulse_width_s"),
    ("limits: {max_write_voltage_v: .inf}\n", "limits.max_write_voltage_v"),
    ("limits: {compliance_current_a: .nan}\n", "limits.compliance_current_a"),
    ("mock: {device: {g_max_s: '1e-4'}}\n", "mock.device.g_max_s"),
    ("mock: {device: {drift_nu_mean: .inf}}\n", "mock.device.drift_nu_mean"),
    ("mock: {device: {read_noise_relative: false}}\n", "mock.device.read_noise_relative"),
    ("mock: {device: {dac_bits: 8.0}}\n", "mock.device.dac_bits"),
    ("mock: {device: {output_noise_a: 1.0e+300}}\n", "mock.device.output_noise_a"),
])
def test_numbers_are_strict_and_finite(tmp_path, top, field):
    with pytest.raises(ProtocolError) as info:
        load_protocol(protocol(tmp_path, top=top))
    assert info.value.field == field and info.value.line == 3


@pytest.mark.parametrize("top, step, field", [
    ("limits: {min_pulse_width_s: 1.0e-300}\n", "  - kind: read\n", "limits.min_pulse_width_s"),
    ("limits: {max_read_voltage_v: 1.0e-300}\n", "  - kind: read\n", "limits.max_read_voltage_v"),
    ("limits: {compliance_current_a: 1.0e-300}\n", "  - kind: read\n", "limits.compliance_current_a"),
    ("", "  - kind: read\n    read_voltage_v: 1.0e-300\n", "steps[0].read_voltage_v"),
    ("", "  - kind: program\n    pattern: {kind: checkerboard, g_low_s: 1.0e-5, g_high_s: 5.0e-5}\n"
         "    pulse_width_s: 1.0e-300\n", "steps[0].pulse_width_s"),
])
def test_limits_and_settings_have_physical_floors(tmp_path, top, step, field):
    with pytest.raises(ProtocolError) as info:
        load_protocol(protocol(tmp_path, top=top, step=step))
    assert info.value.field == field


def test_a_step_beyond_the_mocks_own_limit_exits_2_before_a_run_exists(tmp_path):
    # 0.28 V is inside the protocol's limits (0.3 V) but beyond the mock's DAC range (0.25 V): known before
    # opening, so refused with the line, not as a LimitViolation half-way through the run
    path = protocol(tmp_path, step="  - kind: program\n    pattern: {kind: checkerboard, g_low_s: 1.0e-5, "
                                   "g_high_s: 5.0e-5}\n  - kind: read\n    read_voltage_v: 0.28\n")
    db_file = tmp_path / "runs.db"
    code = hil.run.main([str(path), "--db", f"sqlite:///{db_file}"])
    assert code == 2 and not db_file.exists()


def test_the_backend_limit_message_names_file_line_and_field(tmp_path, capsys):
    path = protocol(tmp_path, step="  - kind: read\n    read_voltage_v: 0.28\n")
    assert hil.run.main([str(path), "--db", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{path}:5: steps[0].read_voltage_v: exceeds the mock backend's limit max_read_voltage_v = 0.25 V" in err


# --------------------------------------------------------------------------- seeds and ids

BIG = 2 ** 63


@pytest.mark.parametrize("top, step, field", [
    (f"mock: {{seed: {BIG}}}\n", "  - kind: read\n", "mock.seed"),
    ("", f"  - kind: train\n    task: {{name: period}}\n    model: {{kind: s4d}}\n    seed: {BIG}\n", "steps[0].seed"),
    ("", f"  - kind: train\n    task: {{name: period, seed: {BIG}}}\n    model: {{kind: s4d}}\n", "steps[0].task.seed"),
])
def test_seeds_in_a_protocol_fit_the_database(tmp_path, top, step, field):
    with pytest.raises(ProtocolError) as info:
        load_protocol(protocol(tmp_path, top=top, step=step))
    assert info.value.field == field


@pytest.mark.parametrize("args", [["--seed", str(BIG)], ["--seed", "-1"], ["--resume", str(BIG)], ["--resume", "0"]])
def test_seeds_and_run_ids_on_the_command_line_fit_the_database(tmp_path, capsys, args):
    path = protocol(tmp_path)
    argv = ([str(path)] if args[0] == "--seed" else []) + args + ["--db", f"sqlite:///{tmp_path / 'x.db'}"]
    assert hil.run.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and args[0] in err and "2**63 - 1" in err or "between 1 and" in err
    assert not (tmp_path / "x.db").exists()


def test_the_largest_seed_is_stored(tmp_path):
    path = protocol(tmp_path)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert hil.run.main([str(path), "--db", url, "--seed", str(BIG - 1)]) == 0
    with Database.open(url) as db, db.session() as s:
        assert s.scalars(select(Run.seed)).one() == BIG - 1


# --------------------------------------------------------------------------- memory

def test_a_protocol_asking_for_terabytes_is_refused_with_the_estimate(tmp_path, capsys):
    path = protocol(tmp_path, step="  - kind: read\n    repeats: 10000\n", rows=4096)
    db_file = tmp_path / "x.db"
    assert hil.run.main([str(path), "--db", f"sqlite:///{db_file}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ":4: steps[0]: read_0 needs about" in err and "TiB" in err
    assert "budget of 8.0 GiB" in err and not db_file.exists()


def test_the_memory_budget_can_be_changed(tmp_path, capsys):
    path = protocol(tmp_path, step="  - kind: read\n    repeats: 100\n", rows=64)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert hil.run.main([str(path), "--db", url, "--memory-budget", "0.125"]) == 2
    assert "more than the budget of 128.0 MiB" in capsys.readouterr().err
    assert hil.run.main([str(path), "--db", url, "--memory-budget", "nan"]) == 2
    assert hil.run.main([str(path), "--db", url, "--memory-budget", "1"]) == 0


def test_the_estimate_grows_with_what_a_step_keeps(tmp_path):
    small = load_protocol(protocol(tmp_path, step="  - kind: read\n    repeats: 10\n", rows=256)).protocol
    large = load_protocol(protocol(tmp_path, step="  - kind: read\n    repeats: 1000\n", rows=256)).protocol
    (a,), (b,) = estimate(small), estimate(large)
    raw = 256 * 256 * 8
    # the baseline is shared; what differs is at least the 990 extra maps the step keeps
    assert b.bytes - a.bytes >= 990 * raw


def test_a_lying_npy_header_is_refused_without_allocating(tmp_path):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (100000, 100000)})
    (tmp_path / "huge.npy").write_bytes(buffer.getvalue().ljust(128, b"\0"))
    path = protocol(tmp_path, step="  - kind: program\n    pattern: {kind: file, path: huge.npy}\n")
    with pytest.raises(ProtocolError) as info:
        load_protocol(path)
    assert "has shape (100000, 100000), expected (8, 8) to match the array (from its header" in str(info.value)


def test_a_truncated_npy_is_refused_from_its_header(tmp_path):
    data = np.full((8, 8), 2e-5)
    buffer = io.BytesIO()
    np.save(buffer, data)
    (tmp_path / "short.npy").write_bytes(buffer.getvalue()[:-100])
    path = protocol(tmp_path, step="  - kind: program\n    pattern: {kind: file, path: short.npy}\n")
    with pytest.raises(ProtocolError, match="is truncated: its header claims 8x8 float64 values"):
        load_protocol(path)


# --------------------------------------------------------------------------- garbage measurements

class NaNReads(SoftwareCrossbar):
    """A crossbar whose reads come back as NaN on a few cells (a broken channel, an overflowing model)."""

    def _read(self, rows, cols, voltage_v):
        g = super()._read(rows, cols, voltage_v)
        g[0, :3] = np.nan
        return g


def test_a_step_measuring_nan_fails_the_run_and_keeps_the_data(tmp_path):
    loaded = load_protocol(protocol(tmp_path, step="  - kind: read\n    repeats: 2\n"))
    with Database.open(f"sqlite:///{tmp_path / 'x.db'}") as db:
        outcome = execute(loaded, NaNReads(8, 8, seed=1), db, backend="mock", seed=1)
        assert outcome.status == "failed"
        assert "6 of 128 values of 'conductance'" in outcome.error and "not finite" in outcome.error
        with db.session() as s:
            step = s.scalars(select(RunStep)).one()
            assert step.status == "failed" and "not finite" in step.error
            stored = s.scalars(select(Measurement)).one()
            assert np.isnan(records.load_measurement_array(stored)).sum() == 6


def test_an_infinite_device_parameter_never_reaches_the_mock(tmp_path):
    path = protocol(tmp_path, top="mock: {device: {read_noise_floor_s: .inf}}\n")
    assert hil.run.main([str(path), "--db", f"sqlite:///{tmp_path / 'x.db'}"]) == 2


# --------------------------------------------------------------------------- noise models of unfinished steps

def test_latest_noise_model_skips_models_of_unfinished_steps(tmp_path):
    with Database.open(f"sqlite:///{tmp_path / 'x.db'}") as db, db.session() as s:
        instrument = records.get_or_create_instrument(s, "mock", "m", "model", "1")
        array = records.get_or_create_array(s, instrument, "chip-A", 8, 8)
        run = runs.start_run(s, protocol_name="p", protocol_path=None, protocol_text="x", backend="mock",
                             seed=0, code_version="t")
        done = runs.start_step(s, run, 0, "cal_0", "calibrate")
        good = records.add_noise_model(s, array, {"v": 1}, schema_version=1, run=run, step=done, source_runs=[run.id])
        runs.finish_step(s, done, "completed", summary={})
        cut = runs.start_step(s, run, 1, "cal_1", "calibrate")
        records.add_noise_model(s, array, {"v": 2}, schema_version=1, run=run, step=cut, source_runs=[run.id])
        runs.finish_step(s, cut, "interrupted", error="KeyboardInterrupt")
        assert records.latest_noise_model(s, "chip-A").id == good.id


# --------------------------------------------------------------------------- naming arrays

def test_a_protocol_names_its_array_and_the_command_line_overrides_it(tmp_path):
    from db.models import CrossbarArray
    path = protocol(tmp_path, top="operator: Ada Lovelace\n")
    text = path.read_text().replace("array: {rows: 8, cols: 8}", "array: {rows: 8, cols: 8, name: chip-A, wafer: W12, "
                                                                     "die: x03y07}")
    path.write_text(text)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert hil.run.main([str(path), "--db", url]) == 0
    assert hil.run.main([str(path), "--db", url, "--array", "chip-B", "--operator", "Grace", "--notes", "after anneal"]) == 0
    with Database.open(url) as db, db.session() as s:
        arrays = {a.array_id: a for a in s.scalars(select(CrossbarArray))}
        assert set(arrays) == {"chip-A", "chip-B"}
        assert (arrays["chip-A"].wafer, arrays["chip-A"].die) == ("W12", "x03y07")
        runs = s.scalars(select(Run).order_by(Run.id)).all()
        assert [(r.operator, r.notes) for r in runs] == [("Ada Lovelace", None), ("Grace", "after anneal")]
        assert [r.crossbar_array.array_id for r in runs] == ["chip-A", "chip-B"]


def test_the_same_name_on_another_wafer_fails_instead_of_mixing_histories(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    first = write(tmp_path, "name: a\narray: {rows: 8, cols: 8, name: chip-A, wafer: W1}\nsteps:\n  - kind: read\n", "a.yaml")
    second = write(tmp_path, "name: b\narray: {rows: 8, cols: 8, name: chip-A, wafer: W2}\nsteps:\n  - kind: read\n", "b.yaml")
    assert hil.run.main([str(first), "--db", url]) == 0
    assert hil.run.main([str(second), "--db", url]) == 1
    with Database.open(url) as db, db.session() as s:
        failed = s.scalars(select(Run).where(Run.protocol_name == "b")).one()
        assert failed.status == "failed" and "recorded on wafer 'W1', not 'W2'" in failed.error


@pytest.mark.parametrize("args, message", [
    (["--array", "chip A"], "--array 'chip A'"),
    (["--operator", "a\nb"], "--operator"),
])
def test_bad_labels_on_the_command_line_are_refused(tmp_path, capsys, args, message):
    assert hil.run.main([str(protocol(tmp_path)), "--db", f"sqlite:///{tmp_path / 'x.db'}", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists()


def test_a_step_beyond_a_boards_own_limits_fails_before_the_first_step(tmp_path):
    """A serial board reports its hard limits only when opened: checked then, before any step runs."""
    from drivers import SafetyLimits
    from drivers.emulators.serial_board import BoardEmulator, BoardServer
    from tests.bench_helpers import emulators

    path = protocol(tmp_path, step="  - kind: program\n    pattern: {kind: checkerboard, g_low_s: 1.0e-5, "
                                   "g_high_s: 5.0e-5}\n    max_set_voltage_v: 1.8\n  - kind: read\n", rows=16)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with emulators(tmp_path, lambda xbar, log, faults: BoardServer(BoardEmulator(xbar, log=log), faults=faults)) as start:
        server, log = start(limits=SafetyLimits(max_write_voltage_v=1.5, max_read_voltage_v=0.2))
        assert hil.run.main([str(path), "--db", url, "--backend", "serial", "--resource", server.url]) == 1
    with Database.open(url) as db, db.session() as s:
        run = s.scalars(select(Run)).one()
        assert run.status == "failed" and run.steps == []
        assert ":4: steps[0].max_reset_voltage_v: exceeds the serial backend's limit max_write_voltage_v = 1.5 V " \
               "(got 2.0) (and 1 more problem)" in run.error
    sent = log.read_text()
    assert "PULSE" not in sent and "READ" not in sent.replace("READY", "")


@pytest.mark.parametrize("args", [["model", str(BIG)], ["device", str(BIG), "0", "--array", "x"],
                                  ["compare", "1", str(BIG)], ["export", str(BIG)]])
def test_history_ids_beyond_64_bits_are_refused_in_one_line(tmp_path, capsys, args):
    import hil.history
    url = f"sqlite:///{tmp_path / 'h.db'}"
    Database.open(url).close()
    try:
        code = hil.history.main(["--db", url, *args])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "2**63 - 1" in err


# --------------------------------------------------------------------------- the Python API

def test_run_protocol_from_python_as_the_command_does(tmp_path):
    import hil
    url = f"sqlite:///{tmp_path / 'x.db'}"
    outcome = hil.run_protocol(protocol(tmp_path), db=url, array="chip-P", seed=7)
    assert outcome.status == "completed" and outcome.protocol_name == "hostile"
    with Database(url) as db, db.session() as s:
        run = s.get(Run, outcome.run_id)
        assert (run.seed, run.crossbar_array.array_id) == (7, "chip-P")
    with pytest.raises(hil.BadInput, match=r"p.yaml:3: limits.max_read_voltage_v"):
        hil.run_protocol(protocol(tmp_path, top="limits: {max_read_voltage_v: '0.2'}\n"), db=url)
    with pytest.raises(TypeError, match="unknown option"):
        hil.run_protocol(protocol(tmp_path), db=url, sed=1)
    with Database(url) as db, db.session() as s:
        assert len(s.scalars(select(Run)).all()) == 1


@pytest.mark.parametrize("kind, extra", [
    ("program", "    pattern: {kind: checkerboard, g_low_s: 1.0e-5, g_high_s: 5.0e-5}\n"),
    ("deploy", "    checkpoint: {id: 1}\n"),
    ("calibrate", ""),
])
def test_every_write_verify_takes_the_same_settings_and_checks(tmp_path, kind, extra):
    """program, deploy and the calibration's programming share one declaration of the write-verify settings,
    so a ramp that starts above its maximum is refused at the same field in each."""
    if kind == "calibrate":
        step = "  - kind: calibrate\n    programming: {start_set_voltage_v: 1.9, max_set_voltage_v: 1.2}\n"
        field = "steps[0].programming.start_set_voltage_v"
    else:
        step = f"  - kind: {kind}\n{extra}    start_set_voltage_v: 1.9\n    max_set_voltage_v: 1.2\n"
        field = "steps[0].start_set_voltage_v"
    with pytest.raises(ProtocolError) as info:
        load_protocol(protocol(tmp_path, step=step))
    assert info.value.field == field and "exceeds max_set_voltage_v (1.2)" in info.value.message
