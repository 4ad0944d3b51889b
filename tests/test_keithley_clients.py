"""The emulated 2636B (emulators/keithley2600.py) against what was not written here: pymeasure's Keithley2600
driver runs a bench session through pyvisa-py unchanged; the emulator's replies are checked against
the examples of the Series 2600B reference manual; and the project's VISA driver (visa_bench.py) reads
replies as the instrument gives them, its own TSP script running under a real Lua."""

import json
import math
import re
import time

import pytest
import pyvisa
from pymeasure.instruments.keithley import Keithley2600
from pyvisa import constants as vc

from drivers import CrossbarError, SoftwareCrossbar
from drivers.emulators.keithley2600 import TspInstrument, TspServer
from drivers.tsp_script import HIL_SCRIPT
from drivers.visa_bench import VisaBenchCrossbar
from tests.bench_helpers import emulators

LOAD_OHMS = 10e3        # the resistor across each channel's terminals in these tests
# pymeasure says it does not know whether the 2600 speaks SCPI; it does not, and the driver does not use it
pytestmark = pytest.mark.filterwarnings("ignore:It is not known whether this device support SCPI:FutureWarning")


@pytest.fixture
def bench(tmp_path):
    def serve(xbar, log, faults):
        return TspServer(TspInstrument(xbar, log=log, load_ohms=LOAD_OHMS), faults=faults)

    with emulators(tmp_path, serve) as start:
        yield start


def address(server) -> str:
    host, port = server.server_address[:2]
    return f"TCPIP0::{host}::{port}::SOCKET"


def connect(server, timeout_ms=2000) -> Keithley2600:
    return Keithley2600(address(server), visa_library="@py", read_termination="\n", write_termination="\n",
                        timeout=timeout_ms)


def log_entries(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


# ----------------------------------------------------------------------- a third-party client
def test_pymeasure_runs_a_bench_session_and_the_current_never_exceeds_the_limit(bench):
    server, log = bench()
    limit = 1e-4
    k = connect(server)
    try:
        maker, model, serial, firmware = (f.strip() for f in k.id.split(","))
        assert (maker, model) == ("Keithley Instruments Inc.", "Model 2636B") and serial.isdigit() and firmware
        k.reset()
        k.clear()
        a = k.ChA
        a.apply_voltage(compliance_current=limit)          # voltage source, source autorange, current limit
        a.measure_current(nplc=1)
        assert a.source_mode == "voltage" and a.compliance_current == limit
        # (pymeasure's measure_nplc property maps its reply onto [0.001, 25] as an index: ask for the number)
        assert k.ask("print(smua.measure.nplc)").strip() == "1.00000e+00"
        a.source_output = "ON"
        for level in (0.2, 0.5, 1.0, 2.5, -4.0, 50.0):       # 50 V would drive 5 mA, 50 times the limit
            a.source_voltage = level
            current, voltage = a.current, a.voltage
            if abs(level / LOAD_OHMS) <= limit:             # I = V / R
                assert current == pytest.approx(level / LOAD_OHMS, rel=1e-5) and voltage == pytest.approx(level)
            else:                                           # in compliance: the limit, and the voltage it gives
                assert current == pytest.approx(math.copysign(limit, level), rel=1e-5)
                assert voltage == pytest.approx(current * LOAD_OHMS, rel=1e-5)
            assert abs(current) <= limit
            assert a.resistance == pytest.approx(LOAD_OHMS, rel=1e-5)
        assert k.ChB.current == 0 and k.check_errors() == []
        a.source_output = "OFF"
        assert a.source_output == "OFF" and a.current == 0
    finally:
        k.adapter.close()
    entries = log_entries(log)
    on = [e for e in entries if e["command"] == "output on"]
    assert [(e["channel"], e["compliance_a"]) for e in on] == [("smua", limit)]
    measured = [e for e in entries if e["command"] == "smua.measure.i"]
    assert measured and all(abs(e["current_a"]) <= e["compliance_a"] == limit for e in measured)
    assert [e["in_compliance"] for e in measured if e["voltage_v"] != 0] == [False, False, False, True, True, True]
    assert server.instrument.internal_errors == []


def test_pymeasure_sources_current_on_smub_held_to_the_voltage_limit(bench):
    server, _ = bench()
    k = connect(server)
    try:
        b = k.ChB
        b.apply_current(compliance_voltage=2.0)
        assert b.source_mode == "current" and b.compliance_voltage == 2.0
        b.source_output = "ON"
        b.source_current = 1e-4                      # 1 V across the load: within the limit
        assert b.voltage == pytest.approx(1.0, rel=1e-5) and b.current == pytest.approx(1e-4, rel=1e-5)
        b.source_current = 1e-3                      # would need 10 V: held at 2 V, 0.2 mA flows
        assert b.voltage == pytest.approx(2.0, rel=1e-5) and b.current == pytest.approx(2e-4, rel=1e-5)
        assert k.ask("print(smub.source.compliance)").strip() == "true"
        b.source_output = "OFF"
        assert k.check_errors() == []
    finally:
        k.adapter.close()


def test_a_command_the_instrument_does_not_understand_is_queued_and_answered_with_silence(bench):
    server, _ = bench()
    rm = pyvisa.ResourceManager("@py")
    inst = rm.open_resource(address(server), read_termination="\n", write_termination="\n", timeout=300)
    try:
        inst.write("frobnicate(1)")
        start = time.monotonic()
        with pytest.raises(pyvisa.errors.VisaIOError) as raised:
            inst.read()                             # nothing comes back: the client's own timeout ends the wait
        assert raised.value.error_code == vc.StatusCode.error_timeout and time.monotonic() - start < 2.0
        assert inst.query("print(errorqueue.count)") == "1.00000e+00"      # the next query gets its own answer
        code, message, severity, node = inst.query("print(errorqueue.next())").split("\t")
        assert (float(code), message) == (-286, "TSP Runtime error at line 1: attempt to call global `frobnicate' "
                                                 "(a nil value)")
        assert (float(severity), float(node)) == (20, 1)
    finally:
        inst.close()
    # a SCPI command sent to an instrument in TSP mode, the entry read by pymeasure's own parser
    k = connect(server, timeout_ms=300)
    try:
        k.write(":SOUR:VOLT 1")
        with pytest.raises(pyvisa.errors.VisaIOError):
            k.read()
        assert k.next_error == (-285, "TSP Syntax error at line 1: unexpected symbol near `:'")
        assert k.next_error == (0, "Queue Is Empty")
    finally:
        k.adapter.close()


# ---------------------------------------------------------- the manual's examples, as printed
# (command, output) pairs transcribed from the Series 2600B reference manual's examples
MANUAL_EXAMPLES = [
    ("x = 10 print(x)", ["1.00000e+01"]),                                            # print()
    ("print(tostring(true))", ["true"]),                                               # print()
    ("format.asciiprecision = 10 x = 2.54 printnumber(x) format.asciiprecision = 3 printnumber(x)",
     ["2.540000000e+00", "2.54e+00"]),                                                # format.asciiprecision
    ("errorcode, message = errorqueue.next() print(errorcode, message)",
     ["0.00000e+00\tQueue Is Empty"]),                                                # errorqueue.next()
]


@pytest.mark.parametrize("command, output", MANUAL_EXAMPLES)
def test_printed_replies_are_the_manuals(command, output):
    inst = TspInstrument(SoftwareCrossbar(4, 4, seed=0))
    assert inst.handle(command) == output


def test_the_error_count_and_the_identity_are_printed_as_the_manual_gives_them():
    inst = TspInstrument(SoftwareCrossbar(4, 4, seed=0))
    for bad in ("a b", "c d", "e f", "g h"):
        inst.handle(bad)
    assert inst.handle("count = errorqueue.count print(count)") == ["4.00000e+00"]     # errorqueue.count
    idn = inst.handle("*IDN?")[0]
    assert re.fullmatch(r"Keithley Instruments Inc\., Model 2636B, \d{7}, \d+\.\d+\.\d+", idn)
    # the script equivalent of *IDN? from the manual's table of common commands
    assert inst.handle("print([[Keithley Instruments Inc., Model ]]..localnode.model..[[, ]]..localnode.serialno.."
                       "[[, ]]..localnode.revision)") == [idn]


# ----------------------------------------------- the project's driver, reading the instrument's replies
# The driver's own script under a real Lua, on an instrument whose other answers are transcribed: so the
# driver's parsing is checked against what the instrument writes, not against the emulator.
LUA_PRELUDE = r"""
printed = {}
print = function(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring(select(i, ...)) end
  table.insert(printed, table.concat(parts, "\t"))
end
node = {nil, {channel = {}}}
queue = {}
errorqueue = setmetatable({}, {__index = function(t, k) if k == "count" then return table.getn(queue) end end})
function errorqueue.next()
  if table.getn(queue) == 0 then return 0, "Queue Is Empty", 0, 0 end
  local e = table.remove(queue, 1)
  return e[1], e[2], e[3], e[4]
end
"""


class ScriptedInstrument:
    """A VISA resource stand-in for the driver: *IDN? answered with ``idn``; ``hil`` calls run by the driver's
    script under Lua 5.1, except those named in ``rejected``, which, as a chunk the instrument refuses,
    print nothing and leave ``rejected[name]`` (code, message) in the error queue."""

    def __init__(self, idn: str, rejected: dict | None = None, queued: list | None = None):
        lupa = pytest.importorskip("lupa.lua51")
        self.lua = lupa.LuaRuntime(unpack_returned_tuples=True)
        self.lua.execute(LUA_PRELUDE)
        self.lua.execute(HIL_SCRIPT)
        self.idn, self.rejected, self.replies, self.timeout = idn, rejected or {}, [], 2000
        for code, message in queued or []:
            self._queue(code, message)

    def _queue(self, code: int, message: str) -> None:
        g = self.lua.globals()
        g.table.insert(g.queue, self.lua.table(code, message, 20, 1))

    def write_raw(self, data: bytes) -> None:
        for line in data.decode("ascii").splitlines():
            if line == "*IDN?":
                self.replies.append(self.idn)
            elif (name := line.split("(")[0]) in self.rejected:
                self._queue(*self.rejected[name])
            else:
                self.lua.execute(line)
                printed = self.lua.globals().printed
                self.replies.extend(printed[k] for k in range(1, len(printed) + 1))
                self.lua.execute("printed = {}")

    def read_raw(self) -> bytes:
        if not self.replies:
            raise pyvisa.errors.VisaIOError(vc.StatusCode.error_timeout)
        return (self.replies.pop(0) + "\n").encode("ascii")

    def close(self) -> None:
        pass


def driver_on(instrument: ScriptedInstrument) -> VisaBenchCrossbar:
    x = VisaBenchCrossbar("TCPIP::192.0.2.1::5025::SOCKET", 4, 4, timeout_s=0.05, retries=1, backoff_s=0.001)
    x._inst = instrument                # connected: _open would also upload the script and configure the SMU
    return x


@pytest.mark.parametrize("idn", [
    "Keithley Instruments Inc., Model 2600B, xxxxxxx, yyyyy",        # the manual's format (Rev. B, C)
    "Keithley Instruments, Model 2600B, xxxxxxx, yyyyy",             # the same in Rev. F
])
def test_the_driver_reads_the_identity_as_the_manual_writes_it(idn):
    assert driver_on(ScriptedInstrument(idn))._identify() == [idn.split(",")[0], "Model 2600B", "xxxxxxx", "yyyyy"]


# error-queue entries as 2600-series instruments report them (code, message; severity 20, node 1)
SYNTAX = (-285, "TSP Syntax error at line 1: unexpected symbol near `*'")
RUNTIME = (-286, "TSP Runtime error at line 1: attempt to index field `channel' (a nil value)")


def test_the_driver_drains_the_error_queue_through_its_script():
    x = driver_on(ScriptedInstrument("", queued=[SYNTAX, RUNTIME]))
    assert x._error_queue("test") == [f"{code} {message}" for code, message in (SYNTAX, RUNTIME)]
    assert x._error_queue("test") == []


def test_a_call_the_instrument_rejects_is_reported_with_its_error_not_resent():
    instrument = ScriptedInstrument("", rejected={"hil.time": RUNTIME})
    x = driver_on(instrument)
    with pytest.raises(CrossbarError, match=re.escape(f"error queue holds: {RUNTIME[0]} {RUNTIME[1]}")):
        x.now()
    assert x.retried == 0


def test_the_driver_reads_the_bench_profile_as_lua_prints_it():
    instrument = ScriptedInstrument("")
    instrument.lua.execute("""hilbench = {array_id = "W12-D07", rows = 4, cols = 4, max_read_v = 0.3,
        max_write_v = 2.5, max_compliance_a = 1e-3, min_width_s = 100e-6, max_width_s = 1e-3, cell_time_s = 0.03,
        wl = {{1, 1}, {1, 2}, {1, 3}, {1, 4}}, bl = {{1, 5}, {1, 6}, {1, 7}, {1, 8}},
        force_row = "A", sense_row = "B", ground_row = "C", adc_ranges_a = {1.6e-3, 8e-4}}""")
    x = driver_on(instrument)
    array_id, rows, cols, hard, cell_time, conv = x._profile(x._call("profile"))
    assert (array_id, rows, cols, cell_time) == ("W12-D07", 4, 4, 0.03)
    assert (hard.max_read_voltage_v, hard.max_write_voltage_v, hard.compliance_current_a) == (0.3, 2.5, 1e-3)
    assert (hard.min_pulse_width_s, hard.max_pulse_width_s) == (100e-6, 1e-3)
    assert conv.adc_ranges_a == (1.6e-3, 8e-4) and conv.dac_bits is None
