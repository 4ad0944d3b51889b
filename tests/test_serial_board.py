"""The serial array-controller board: its line protocol, the real driver through pyserial against
the emulator (TCP, socket:// URLs), faults survived, limits enforced, a calibration end to end."""

import json

import numpy as np
import pytest
from sqlalchemy import select

import hil.run
from db import Database
from db.models import Run
from drivers import InstrumentIOError, LimitViolation, SafetyLimits, SoftwareCrossbar
from drivers import board_protocol as bp
from drivers.emulators.serial_board import BoardEmulator, BoardServer, Faults
from drivers.serial_board import SerialBoardCrossbar
from tests.bench_helpers import assert_same_device, calibrate_on_mock_and_bench, emulators


@pytest.fixture
def board(tmp_path):
    with emulators(tmp_path, lambda xbar, log, faults: BoardServer(BoardEmulator(xbar, log=log), faults=faults)) as start:
        yield start


def test_frames_round_trip_and_corruption_is_detected():
    line = bp.frame(42, "READ 0.2 AAA= AQA=")
    assert bp.parse(line) == (42, "READ 0.2 AAA= AQA=")
    for i in range(len(line) - 1):           # any single changed byte is caught
        bad = bytearray(line)
        bad[i] = ord("#") if bad[i] != ord("#") else ord("%")
        with pytest.raises(bp.FrameError):
            bp.parse(bytes(bad))
    values = np.array([0.0, -1.5e-5, 3.25], np.float64)
    assert np.array_equal(bp.decode(bp.encode(values, "f64"), "f64"), values)
    assert np.array_equal(bp.decode(bp.encode([0, 7, 65535], "u16"), "u16"), [0, 7, 65535])
    with pytest.raises(ValueError):
        bp.encode([70000], "u16")


def test_driver_through_the_emulator_matches_the_in_process_mock(board):
    server, log = board()
    ref = SoftwareCrossbar(16, 16, seed=3).open()
    rng = np.random.default_rng(0)
    with SerialBoardCrossbar(server.url, 16, 16) as x:
        assert x.identity.backend == "serial" and x.converters() == ref.converters()
        for xb in (x, ref):
            xb.pulse([0, 1, 2, 5], [3, 4, 5, 5], [1.8, 1.7, -1.9, 1.6], 1e-5)
        assert np.allclose(x.read(voltage_v=0.2), ref.read(voltage_v=0.2), rtol=1e-6, atol=0)
        v = rng.uniform(-0.2, 0.2, (8, 16))
        assert np.allclose(x.mvm(v), ref.mvm(v), rtol=1e-6, atol=1e-12)
        x.wait(100.0)
        ref.wait(100.0)
        assert x.now() == pytest.approx(ref.now())
        assert x.transactions == {"read": 1, "pulse": 1, "mvm": 1}
    commands = [json.loads(line)["command"] for line in log.read_text().splitlines()]
    assert commands == ["PULSE", "READ", "MVM", "WAIT"]


def test_a_resent_command_is_answered_again_but_executed_once():
    emu = BoardEmulator(SoftwareCrossbar(8, 8, seed=1))
    pulse = bp.frame(5, f"PULSE 0.001 {bp.encode([2], 'u16')} {bp.encode([3], 'u16')} {bp.encode([1.9], 'f64')} "
                        f"{bp.encode([1e-5], 'f64')}")
    first = emu.handle(pulse)
    assert emu.handle(pulse) == first and emu.commands == 1
    once = SoftwareCrossbar(8, 8, seed=1).open()
    once.pulse([2], [3], 1.9, 1e-5)
    assert emu.xbar.read([2], [3], voltage_v=0.2) == pytest.approx(once.read([2], [3], voltage_v=0.2), rel=1e-12)
    assert emu.handle(b"9 NOPE *00000000\n").startswith(b"9 ERR FRAME")
    assert emu.handle(bp.frame(10, "NOPE")).split(b" ")[1:3] == [b"ERR", b"SYNTAX"]


def test_dropped_and_garbled_replies_are_retried_to_the_same_result(board):
    server, _ = board(faults=Faults(drop=0.2, garble=0.2, seed=7))
    ref = SoftwareCrossbar(16, 16, seed=3).open()
    with SerialBoardCrossbar(server.url, 16, 16, timeout_s=0.2, retries=8, backoff_s=0.001) as x:
        for k in range(15):
            cells = [k % 16], [(3 * k) % 16]
            for xb in (x, ref):
                xb.pulse(*cells, 1.8, 1e-5)
            assert x.read(*cells, voltage_v=0.2) == pytest.approx(ref.read(*cells, voltage_v=0.2), rel=1e-6)
        assert x.retried > 5
    # every pulse reached the array exactly once: the arrays agree cell for cell
    assert np.allclose(server.board.xbar.read(voltage_v=0.2), ref.read(voltage_v=0.2), rtol=1e-9)


def test_a_lost_board_ends_the_command_with_an_io_error(board):
    server, _ = board(faults=Faults(disconnect_after=3))       # IDN?, LIM?, CONV? answered, not the read
    with SerialBoardCrossbar(server.url, 16, 16, timeout_s=0.2, retries=2, backoff_s=0.001) as x:
        with pytest.raises(InstrumentIOError, match="'READ'"):
            x.read(voltage_v=0.2)
    server, _ = board(faults=Faults(disconnect_after=2))
    with pytest.raises(InstrumentIOError, match="'CONV\\?'"):
        SerialBoardCrossbar(server.url, 16, 16, timeout_s=0.2, retries=1, backoff_s=0.001).open()


def test_the_boards_hard_limits_tighten_the_drivers_and_nothing_beyond_them_is_sent(board):
    server, log = board(limits=SafetyLimits(max_write_voltage_v=1.5, max_read_voltage_v=0.2))
    with SerialBoardCrossbar(server.url, 16, 16, limits=SafetyLimits(max_write_voltage_v=2.0)) as x:
        assert x.limits.max_write_voltage_v == 1.5 and x.limits.max_read_voltage_v == 0.2
        with pytest.raises(LimitViolation, match="max_write_voltage_v"):
            x.pulse([0], [0], 1.8, 1e-5)
        with pytest.raises(LimitViolation):
            x.mvm(np.full(16, 0.25))
        x.pulse([0], [0], 1.5, 1e-5)
    sent = [json.loads(line) for line in log.read_text().splitlines()]
    assert [s["command"] for s in sent] == ["PULSE"] and sent[0]["max_voltage_v"] == 1.5


def test_a_shape_mismatch_is_refused_at_open(board):
    server, _ = board()
    with pytest.raises(Exception, match="16x16 array, 32x32 was expected"):
        SerialBoardCrossbar(server.url, 32, 32).open()


def test_calibration_through_the_serial_emulator_agrees_with_the_in_process_mock(board, tmp_path):
    server, _ = board(rows=32, cols=32, seed=0)
    mock, on_bench = calibrate_on_mock_and_bench(tmp_path, "serial", server.url)
    assert_same_device(mock, on_bench, "mock-32x32-seed0")


def test_the_emulator_command_prints_the_resource_to_use():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "drivers.emulate", "serial", "--port", "0", "--rows", "8",
                             "--cols", "8"], stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        use = proc.stdout.readline().split()
        assert use[:3] == ["use:", "--backend", "serial"] and use[3] == "--resource"
        with SerialBoardCrossbar(use[4], 8, 8) as x:
            assert x.read([0], [0], voltage_v=0.2).shape == (1, 1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


TWO_STEPS = """name: two_steps
array: {rows: 16, cols: 16}
steps:
  - kind: program
    name: levels
    pattern: {kind: levels, levels: 4, g_low_s: 5.0e-6, g_high_s: 80.0e-6}
  - kind: read
    name: after
    read_voltage_v: 0.2
    repeats: 3
"""


@pytest.mark.parametrize("when", ["programming", "reading back"])
def test_a_board_lost_mid_run_fails_the_run_cleanly_and_keeps_what_was_measured(board, tmp_path, when):
    protocol = tmp_path / "two.yaml"
    protocol.write_text(TWO_STEPS, encoding="utf-8")
    clean, _ = board()
    assert hil.run.main([str(protocol), "--db", f"sqlite:///{tmp_path / 'clean.db'}", "--backend", "serial",
                         "--resource", clean.url]) == 0
    total = clean.board.commands                 # the last 3 are the read step's
    after = 5 if when == "programming" else total - 2
    server, _ = board(faults=Faults(disconnect_after=after))
    url = f"sqlite:///{tmp_path / 'lost.db'}"
    assert hil.run.main([str(protocol), "--db", url, "--backend", "serial", "--resource", server.url]) == 1
    with Database.open(url) as db:
        with db.session() as s:
            run = s.scalars(select(Run)).one()
            assert run.status == "failed" and "connection lost" in run.error
            statuses = [st.status for st in run.steps]
            # the step the board was lost in failed; any before it completed and kept its data
            assert statuses[-1] == "failed" and all(x == "completed" for x in statuses[:-1])
            assert len(statuses) == (1 if when == "programming" else 2)
        with db.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
