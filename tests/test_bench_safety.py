"""Safety, as a property: whatever is asked of the real driver, nothing beyond the configured limits
reaches the instrument. The emulated instrument (the serial board, or the SMU bench over VISA)
accepts far more than the driver is configured for, and logs every command it receives;
randomised requests (in and out of limits, NaNs, wrong shapes) go through the driver, and the log
must never show a voltage, current or width beyond the limits."""

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import CrossbarError, SafetyLimits, SoftwareCrossbar
from drivers.emulators.serial_board import BoardEmulator, BoardServer
from drivers.serial_board import SerialBoardCrossbar
from drivers.emulators.keithley2600 import TspInstrument, TspServer
from drivers.visa_bench import VisaBenchCrossbar

ROWS = COLS = 8
# what the board itself would take (its hard limits) ...
BOARD = SafetyLimits(max_read_voltage_v=0.25, max_write_voltage_v=5.0, compliance_current_a=0.1,
                     min_pulse_width_s=1e-9, max_pulse_width_s=0.5)
# ... and what the bench is configured for: the driver must hold to this
CONFIGURED = SafetyLimits(max_read_voltage_v=0.2, max_write_voltage_v=1.8, compliance_current_a=5e-4,
                          min_pulse_width_s=1e-6, max_pulse_width_s=1e-4)


# the serial board's and the SMU bench's programming commands
PULSES = ("PULSE", "hil.pulse")


@pytest.fixture(scope="module", params=["serial", "visa"])
def bench(request, tmp_path_factory):
    log = tmp_path_factory.mktemp("safety") / "commands.jsonl"
    array = SoftwareCrossbar(ROWS, COLS, seed=0, limits=BOARD)
    if request.param == "serial":
        server = BoardServer(BoardEmulator(array, log=log)).start()
        driver, address = SerialBoardCrossbar, server.url
    else:
        server = TspServer(TspInstrument(array, log=log)).start()
        driver, address = VisaBenchCrossbar, server.resource

    def connect(limits):
        return driver(address, ROWS, COLS, limits=limits, timeout_s=5.0)

    xbar = connect(CONFIGURED).open()
    yield xbar, log, connect
    xbar.close()
    server.stop()


anything = st.floats(allow_nan=True, allow_infinity=True, width=64)
near = st.one_of(st.floats(-6, 6), anything)          # mostly plausible values, some absurd ones


@st.composite
def requests(draw):
    kind = draw(st.sampled_from(["pulse", "read", "mvm"]))
    n = draw(st.integers(1, 5))
    if kind == "pulse":
        cells = draw(st.lists(st.tuples(st.integers(-1, ROWS), st.integers(-1, COLS)), min_size=n, max_size=n,
                              unique=True))
        amps = draw(st.lists(near, min_size=n, max_size=n))
        widths = draw(st.lists(st.one_of(st.floats(1e-9, 1e-3), anything), min_size=n, max_size=n))
        compliance = draw(st.one_of(st.none(), st.floats(-1e-3, 2e-3), anything))
        return kind, (cells, amps, widths, compliance)
    if kind == "read":
        return kind, draw(st.one_of(st.floats(-0.5, 0.5), anything))
    return kind, draw(st.lists(st.lists(st.one_of(st.floats(-0.3, 0.3), anything), min_size=ROWS, max_size=ROWS),
                               min_size=1, max_size=3))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_no_out_of_limit_command_reaches_the_instrument(bench, request):
    xbar, log, _ = bench
    kind, args = request
    try:
        if kind == "pulse":
            cells, amps, widths, compliance = args
            xbar.pulse([c[0] for c in cells], [c[1] for c in cells], amps, widths, compliance_a=compliance)
        elif kind == "read":
            xbar.read([0, 1], [2, 3], voltage_v=args)
        else:
            xbar.mvm(np.array(args))
    except CrossbarError:
        pass                                  # refused: fine, as long as nothing out of limits went out
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        v = entry.get("max_voltage_v")
        if entry["command"] in PULSES:
            assert v <= CONFIGURED.max_write_voltage_v
            assert 0 < entry["compliance_a"] <= CONFIGURED.compliance_current_a
            assert CONFIGURED.min_pulse_width_s <= entry["min_width_s"]
            assert entry["max_width_s"] <= CONFIGURED.max_pulse_width_s
        elif v is not None:
            assert math.isfinite(v) and v <= CONFIGURED.max_read_voltage_v + 1e-7   # f32 rounding of MVM inputs
        if "compliance_a" in entry:          # every current limit the instrument was given, pulse or not
            assert 0 < entry["compliance_a"] <= CONFIGURED.compliance_current_a


def test_the_safety_test_can_fail(bench):
    """A driver with the board's wide limits does send what the property test forbids."""
    xbar, log, connect = bench
    kept = log.read_text().splitlines()
    wide = connect(BOARD).open()
    try:
        wide.pulse([0], [0], 3.0, 1e-5)
    finally:
        wide.close()
    sent = [json.loads(line) for line in log.read_text().splitlines()[len(kept):]]
    pulses = [e for e in sent if e["command"] in PULSES]
    assert len(pulses) == 1 and pulses[0]["max_voltage_v"] > CONFIGURED.max_write_voltage_v
    # leave the shared log, and the instrument's current limit, as the property test expects them
    log.write_text("".join(line + "\n" for line in kept))
    xbar.restrict_limits(CONFIGURED)
