"""The SMU + switch-matrix bench over VISA: the emulated instrument's TSP handling, the real driver
through pyvisa-py and a real socket against the emulator, faults survived, limits enforced on both
sides, compliance before output, and a calibration end to end."""

import base64
import json
import subprocess
import sys
import zlib

import numpy as np
import pytest

import hil.run
from drivers import CrossbarError, InstrumentIOError, LimitViolation, SafetyLimits, SoftwareCrossbar
from drivers.emulators.faults import Faults
from drivers.emulators.keithley2600 import BenchProfile, TspInstrument, TspServer, _numeric_table, frame, unsingles
from drivers.tsp_script import HIL_SCRIPT, SCRIPT_NAME
from drivers.visa_bench import VisaBenchCrossbar, _floats, _ints, _unframe
from tests.bench_helpers import assert_same_device, calibrate_on_mock_and_bench, emulators
from tests.test_calibrate_step import SMALL_CALIBRATION


@pytest.fixture
def bench(tmp_path):
    with emulators(tmp_path, lambda xbar, log, faults: TspServer(TspInstrument(xbar, log=log), faults=faults)) as start:
        yield start


def entries(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


def loaded_instrument(seed=1, rows=8, cols=8) -> TspInstrument:
    inst = TspInstrument(SoftwareCrossbar(rows, cols, seed=seed))
    for line in [f"loadscript {SCRIPT_NAME}", *HIL_SCRIPT.splitlines(), "endscript", f"{SCRIPT_NAME}.run()",
                 "smua.source.limiti = 0.001", "smub.source.limiti = 0.001"]:
        assert inst.handle(line) == []
    return inst


# ------------------------------------------------------------------ the emulated instrument
def test_a_bad_chunk_gets_no_reply_and_an_error_queue_entry():
    inst = TspInstrument(SoftwareCrossbar(8, 8, seed=1))
    assert len(inst.handle("*IDN?")[0].split(",")) == 4
    assert inst.handle("smua.source.limiti = 1e-4") == []
    assert inst.handle("print(smua.source.limiti)") == ["1.00000e-04"]
    bad = ["smua.source.limiti =", "print(1,", "smua.source.bogus = 1", "frobnicate()", "hil.time(5)", "x y z"]
    for chunk in bad:
        assert inst.handle(chunk) == [], chunk
    assert inst.handle("print(errorqueue.count)") == [f"{len(bad)}.00000e+00"]
    code, message, severity, _ = inst.handle("print(errorqueue.next())")[0].split("\t")
    assert float(code) == -285 and "Syntax error" in message and float(severity) == 20
    assert inst.handle("errorqueue.clear()") == [] and inst.handle("print(errorqueue.count)") == ["0.00000e+00"]
    # a script that is not the driver's runs as plain statements; hil stays undefined
    for line in ["loadscript other", "print('hello')", "endscript"]:
        assert inst.handle(line) == []
    assert inst.handle("other.run()") == ["hello"] and inst.handle("hil.time(6)") == []
    assert inst.handle("print(errorqueue.count)") == ["1.00000e+00"] and inst.internal_errors == []
    # moving relays with the source live is counted (the driver never does it)
    for line in ["smua.source.limiti = 1e-4", "smua.source.output = smua.OUTPUT_ON", "smua.source.levelv = 0.2",
                 'node[2].channel.exclusiveclose("1A01,1B02")']:
        inst.handle(line)
    assert inst.hot_switches == 1 and inst.handle('print(node[2].channel.getclose("allslots"))') == ["1A01,1B02"]


def test_the_script_answers_framed_replies_and_executes_a_resent_call_once():
    inst = loaded_instrument()
    pulse = "hil.pulse(41, 0.001, {2}, {3}, 1.9, 1e-05)"
    first = inst.handle(pulse)
    assert inst.handle(pulse) == first and inst.executed["pulse"] == 1 and inst.repeats == 1
    call_id, status, payload = _unframe(first[0])
    assert (call_id, status, payload) == (41, "OK", "1")
    body, _, check = first[0].rpartition("\t")
    assert zlib.adler32(body.encode()) == int(check)
    once = SoftwareCrossbar(8, 8, seed=1).open()
    once.pulse([2], [3], 1.9, 1e-5)
    got = unsingles(_unframe(inst.handle("hil.read(42, 0.2, {2}, {3})")[0])[2])
    assert got[0] == pytest.approx(once.read([2], [3], voltage_v=0.2)[0, 0], rel=1e-7)
    # the script's own limits: refused, nothing applied
    refused = inst.handle("hil.pulse(43, 0.001, {2}, {3}, 2.6, 1e-05)")
    assert _unframe(refused[0])[1:] == ("ERR", "LIMIT amplitude 2.6000000000000001 V")
    assert inst.executed["pulse"] == 1 and inst.handle("print(errorqueue.count)") == ["0.00000e+00"]
    assert _unframe(inst.handle('hil.mvm(44, 1, nil, "AAA")')[0])[1] == "ERR"


def test_the_tsp_script_itself_runs_under_lua():
    """The uploaded Lua, run by a real Lua 5.1 against a scripted SMU and matrix: its replies are the
    emulator's, byte for byte where they can be, and it pulses, reads and superposes as documented."""
    lupa = pytest.importorskip("lupa.lua51")
    lua = lupa.LuaRuntime(unpack_returned_tuples=True, encoding=None)
    lua.execute(LUA_INSTRUMENT)
    rng = np.random.default_rng(1)
    rows, cols = 5, 4
    g = rng.uniform(1e-6, 1e-4, (rows, cols))
    env = lua.globals()
    for r in range(rows):
        env[b"G"][r + 1] = lua.table(*g[r].tolist())
    profile = BenchProfile("chip-7", rows, cols, 0.3, 2.5, 1e-3, 1e-8, 1e-3, 0.03)
    table = lua.table_from({b"array_id": b"chip-7", b"rows": rows, b"cols": cols, b"max_read_v": 0.3,
                            b"max_write_v": 2.5, b"max_compliance_a": 1e-3, b"min_width_s": 1e-8,
                            b"max_width_s": 1e-3, b"cell_time_s": 0.03, b"force_row": b"A", b"sense_row": b"B",
                            b"ground_row": b"C"})
    table[b"wl"] = lua.table_from([lua.table(1, k + 1) for k in range(rows)])
    table[b"bl"] = lua.table_from([lua.table(2, k + 1) for k in range(cols)])
    env[b"hilbench"] = table
    f32 = lua.execute(HIL_SCRIPT.encode() + b"\nreturn f32")

    def call(chunk):
        before = len(env[b"printed"])
        lua.execute(chunk.encode())
        return [env[b"printed"][k].decode() for k in range(before + 1, len(env[b"printed"]) + 1)]

    values = np.concatenate([rng.normal(0, 1, 100) * 10.0 ** rng.integers(-44, 38, 100), [0.0, -0.0, 1e-45, 1e39]])
    with np.errstate(over="ignore"):
        assert all(bytes(f32(float(x))) == np.array([x], "<f4").tobytes() for x in values)
    assert call("hil.profile(7)") == [frame(7, "OK", profile.payload())]
    reply = _unframe(call("hil.read(8, 0.2, {0,2,4}, {1,3})")[0])
    assert reply[:2] == (8, "OK")
    assert np.allclose(unsingles(reply[2]).reshape(3, 2), g[np.ix_([0, 2, 4], [1, 3])], rtol=1.2e-7, atol=0)
    v = rng.uniform(-0.2, 0.2, (3, rows)).astype(np.float32)
    v[0, 1], v[1] = 0.0, 0.1
    reply = _unframe(call(f'hil.mvm(9, 3, nil, "{base64.b64encode(v.astype("<f4").tobytes()).decode()}")')[0])
    assert np.allclose(unsingles(reply[2]).reshape(3, cols), v.astype(np.float64) @ g, rtol=1e-6, atol=1e-12)
    pulse = "hil.pulse(10, 0.0002, {0,1,4}, {3,2,0}, {1.5,-1.2,1.8}, 1e-06)"
    answer = call(pulse)
    assert call(pulse) == answer and _unframe(answer[0])[1:] == ("OK", "3")
    applied = [tuple(p.values()) for p in env[b"pulses"].values()]
    # (row, col, level A, level B, B pulsed too, width, A's limit, outputs A and B, lines on the bias row)
    assert applied == [(0, 3, 1.5, 0.75, True, 1e-6, 2e-4, 1, 1, rows + cols - 2),
                       (1, 2, -1.2, -0.6, True, 1e-6, 2e-4, 1, 1, rows + cols - 2),
                       (4, 0, 1.8, 0.9, True, 1e-6, 2e-4, 1, 1, rows + cols - 2)]
    # current limits in place before any output went on; the session's restored after the pulses
    assert [e.decode() for e in env[b"events"].values()] == [
        "on a 0.0005", "on b 0.0005", "on a 0.0005", "on b 0.0005",       # the read, the MVM
        "limiti a 0.0002", "on a 0.0002", "on b 0.0005", "limiti a 0.0005"]
    assert env[b"hot"] == 0 and env[b"smua"][b"source"][b"output"] == 0
    assert _unframe(call("hil.pulse(11, 0.0002, {0}, {3}, 2.6, 1e-06)")[0])[1:] == \
        ("ERR", "LIMIT amplitude 2.6000000000000001 V")
    assert len(env[b"pulses"]) == 3


def test_request_tables_read_in_real_lua_as_the_values_sent():
    """The driver's tables (fixed point, zero-padded) evaluated by a real Lua: indices exact, amplitudes
    within 1 nV and widths within 1 ps of what was asked, never larger in magnitude; the emulator's fast
    reading of number tables gives Lua's values, and leaves what is not a plain list to the general lexer."""
    lupa = pytest.importorskip("lupa.lua51")
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    rng = np.random.default_rng(4)

    def in_lua(text):
        t = lua.execute("return " + text)
        return np.array([t[k + 1] for k in range(len(t))], dtype=np.float64)

    idx = rng.integers(0, 4096, 500)
    assert np.array_equal(in_lua(_ints(idx)), idx) and _ints(np.zeros(0, int)) == "{}"
    for kind, values, step in (("amplitude", rng.uniform(-5, 5, 2000), 1e-9),
                               ("amplitude", np.array([2.5, -2.5, 2.4999999999, 1e-12, -0.0]), 1e-9),
                               ("width", rng.uniform(1e-7, 1e-3, 2000), 1e-12)):
        text = _floats(values, kind)
        got = in_lua(text)
        assert np.all(np.abs(got - values) <= step * (1 + 1e-6)) and np.all(np.abs(got) <= np.abs(values))
        assert np.array_equal(_numeric_table(text, 0), got)
    assert _floats(np.full(7, 1.9), "amplitude") == "1.9"
    for text in ("{}", "{1,2,}", "{ -1.5e-3 , 2 }", "{1e+5,2E-3}", "{.5,-.5,5.}", "{007, 010}"):
        assert np.array_equal(_numeric_table(text, 0), in_lua(text)), text
    for text in ("{+1}", "{1,,2}", "{- 5}", "{1-2}", "{,}", "{1 2}", "{1e}"):
        assert _numeric_table(text, 0) is None, text


# ---------------------------------------------------------------- the driver, through pyvisa-py
def test_identity_limits_and_converters_come_from_the_instrument(bench):
    server, _ = bench(limits=SafetyLimits(max_write_voltage_v=2.0, max_read_voltage_v=0.2, min_pulse_width_s=1e-7))
    ref = SoftwareCrossbar(16, 16, seed=3)
    configured = SafetyLimits(compliance_current_a=5e-4, max_pulse_width_s=1e-4)
    with VisaBenchCrossbar(server.resource, 16, 16, limits=configured) as x:
        assert x.identity.backend == "visa" and x.identity.model == "2636B"
        assert x.identity.array_id == "mock-16x16-seed3" and server.resource in x.identity.instrument_id
        assert x.limits == SafetyLimits(max_read_voltage_v=0.2, max_write_voltage_v=2.0, compliance_current_a=5e-4,
                                        min_pulse_width_s=1e-7, max_pulse_width_s=1e-4)
        assert x.converters() == ref.converters() and x.converters().adc_ranges_a
        smu = server.instrument.smu
        assert smu["smua.source.limiti"] == 5e-4 and smu["smua.source.rangev"] == 2.0
        x.restrict_limits(SafetyLimits(compliance_current_a=2e-4))
        assert x.limits.compliance_current_a == 2e-4 and smu["smua.source.limiti"] == 2e-4


def test_driver_through_the_emulator_matches_the_in_process_mock(bench):
    server, log = bench()
    ref = SoftwareCrossbar(16, 16, seed=3).open()
    rng = np.random.default_rng(0)
    with VisaBenchCrossbar(server.resource, 16, 16) as x:
        skip = len(entries(log))
        for xb in (x, ref):
            xb.pulse([0, 1, 2, 5], [3, 4, 5, 5], [1.8, 1.7, -1.9, 1.6], 1e-5)
        got, want = x.read(voltage_v=0.2), ref.read(voltage_v=0.2)
        assert got.shape == (16, 16) and np.allclose(got, want, rtol=1.2e-7, atol=0)     # float32 on the wire
        v = rng.uniform(-0.2, 0.2, (8, 16))
        assert np.array_equal(x.mvm(v), ref.mvm(v))
        gain = x.converters().adc_ranges_a[2]
        assert np.array_equal(x.mvm(v[0], adc_range_a=gain), ref.mvm(v[0], adc_range_a=gain))
        x.wait(100.0)
        ref.wait(100.0)
        assert x.now() == ref.now()
        assert x.transactions == {"read": 1, "pulse": 1, "mvm": 2}
    sent = [e["command"] for e in entries(log)[skip:] if e["command"].startswith("hil.")]
    assert sent == ["hil.pulse", "hil.read", "hil.mvm", "hil.mvm", "hil.wait", "hil.time", "hil.errors"]


def test_a_request_beyond_the_limits_raises_and_nothing_reaches_the_instrument(bench):
    server, log = bench()
    with VisaBenchCrossbar(server.resource, 16, 16, limits=SafetyLimits(max_write_voltage_v=2.0)) as x:
        before = log.read_text()
        for request in (lambda: x.pulse([0], [0], 2.2, 1e-5), lambda: x.pulse([0], [0], 1.5, 2e-3),
                        lambda: x.pulse([0], [0], 1.5, 1e-5, compliance_a=2e-3),
                        lambda: x.read([0], [0], voltage_v=0.3), lambda: x.mvm(np.full(16, 0.26)),
                        lambda: x.pulse([0], [16], 1.5, 1e-5)):
            with pytest.raises(LimitViolation):
                request()
        assert log.read_text() == before and "pulse" not in server.instrument.executed


def test_the_script_refuses_what_a_faulty_driver_would_send(bench):
    server, log = bench(limits=SafetyLimits(max_write_voltage_v=2.0))
    with VisaBenchCrossbar(server.resource, 16, 16) as x:
        x._limits = SafetyLimits(max_write_voltage_v=3.0)        # as if the driver's own check were broken
        with pytest.raises(LimitViolation, match="the instrument refused: amplitude 2.5"):
            x.pulse([0], [0], 2.5, 1e-5)
    sent = [e for e in entries(log) if e["command"] == "hil.pulse"]
    assert [e["max_voltage_v"] for e in sent] == [2.5]            # logged before it was checked ...
    assert "pulse" not in server.instrument.executed              # ... and not carried out
    assert server.instrument.smu["smua.source.output"] == server.instrument.smu["smub.source.output"] == 0


def test_compliance_is_set_on_the_instrument_before_the_output_goes_on(bench):
    server, log = bench()
    with VisaBenchCrossbar(server.resource, 16, 16, limits=SafetyLimits(compliance_current_a=5e-4)) as x:
        x.read([0, 1], [0, 1], voltage_v=0.2)
        x.pulse([3], [4], 1.5, 1e-5, compliance_a=2e-4)
        x.mvm(np.full(16, 0.1))
    log_entries = entries(log)
    commands = [e["command"] for e in log_entries]
    on = [e for e in log_entries if e["command"] == "output on"]
    # SMU A drives, SMU B measures (reads, MVM) or biases the unselected lines (pulses)
    assert [(e["by"], e["channel"]) for e in on] == [("hil.read", "smua"), ("hil.read", "smub"),
                                                     ("hil.pulse", "smua"), ("hil.pulse", "smub"),
                                                     ("hil.mvm", "smua"), ("hil.mvm", "smub")]
    first_on = commands.index("output on")
    assert commands.index("reset") < commands.index("smua.source.limiti") < first_on
    assert commands.index("smub.source.limiti") < first_on
    assert [e["compliance_a"] for e in on] == [5e-4, 5e-4, 2e-4, 5e-4, 5e-4, 5e-4]
    inst = server.instrument
    # left with the output relay open, nothing connected, nothing ever switched live
    for ch in ("smua", "smub"):
        assert inst.smu[f"{ch}.source.output"] == 0 and inst.smu[f"{ch}.source.offmode"] == 2     # OUTPUT_HIGH_Z
    assert inst.closed_channels == "" and inst.hot_switches == 0


def test_a_resent_pulse_is_executed_once(bench):
    server, log = bench()
    ref = SoftwareCrossbar(16, 16, seed=3).open()
    with VisaBenchCrossbar(server.resource, 16, 16, timeout_s=0.2, backoff_s=0.001) as x:
        server.drop_next = 1                                      # the pulse's reply is lost
        x.pulse([2], [3], 1.9, 1e-5)
        ref.pulse([2], [3], 1.9, 1e-5)
        assert x.retried == 1
        assert x.read([2], [3], voltage_v=0.2) == pytest.approx(ref.read([2], [3], voltage_v=0.2), rel=1.2e-7)
    inst = server.instrument
    assert inst.executed["pulse"] == 1 and inst.repeats == 1
    pulses = [e for e in entries(log) if e["command"] == "hil.pulse"]
    assert len(pulses) == 2 and pulses[0]["id"] == pulses[1]["id"] and [p["repeat"] for p in pulses] == [False, True]


def test_dropped_and_garbled_replies_are_retried_to_the_same_array_state(bench):
    server, _ = bench(faults=Faults(drop=0.2, garble=0.2, seed=7))
    ref = SoftwareCrossbar(16, 16, seed=3).open()
    with VisaBenchCrossbar(server.resource, 16, 16, timeout_s=0.15, retries=8, backoff_s=0.001) as x:
        for k in range(15):
            cells = [k % 16], [(3 * k) % 16]
            for xb in (x, ref):
                xb.pulse(*cells, 1.8, 1e-5)
            assert x.read(*cells, voltage_v=0.2) == pytest.approx(ref.read(*cells, voltage_v=0.2), rel=1.2e-7)
        assert x.retried > 5
    # every pulse reached the array exactly once: the arrays agree cell for cell
    assert server.instrument.executed["pulse"] == 15
    assert np.allclose(server.instrument.xbar.read(voltage_v=0.2), ref.read(voltage_v=0.2), rtol=1e-9)


def test_a_lost_instrument_ends_the_command_with_an_io_error(bench):
    clean, _ = bench()
    x = VisaBenchCrossbar(clean.resource, 16, 16).open()
    at_open = clean.instrument.commands
    x.close()
    server, _ = bench(faults=Faults(disconnect_after=at_open))
    with VisaBenchCrossbar(server.resource, 16, 16, timeout_s=0.2, retries=1, backoff_s=0.001) as x:
        with pytest.raises(InstrumentIOError, match="'hil.read'"):
            x.read(voltage_v=0.2)
    server, _ = bench(faults=Faults(disconnect_after=3))
    with pytest.raises(InstrumentIOError):
        VisaBenchCrossbar(server.resource, 16, 16, timeout_s=0.2, retries=1, backoff_s=0.001).open()
    with pytest.raises(InstrumentIOError, match=r"'open'|'\*IDN\?'"):        # nothing listens there
        VisaBenchCrossbar("TCPIP::127.0.0.1::1::SOCKET", 16, 16).open()


def test_a_shape_mismatch_is_refused_at_open_and_the_output_left_off(bench):
    server, _ = bench()
    with pytest.raises(CrossbarError, match="16x16 array, 32x32 was expected"):
        VisaBenchCrossbar(server.resource, 32, 32).open()
    assert server.instrument.smu["smua.source.output"] == server.instrument.smu["smub.source.output"] == 0


def test_calibration_through_the_smu_emulator_agrees_with_the_in_process_mock(bench, tmp_path):
    server, _ = bench(rows=32, cols=32, seed=0)
    protocol = tmp_path / "cal.yaml"
    protocol.write_text(SMALL_CALIBRATION, encoding="utf-8")
    assert hil.run.main([str(protocol), "--db", f"sqlite:///{tmp_path / 'none.db'}", "--backend", "visa"]) == 2
    mock, on_bench = calibrate_on_mock_and_bench(tmp_path, "visa", server.resource)
    assert_same_device(mock, on_bench, "mock-32x32-seed0")


def test_the_emulator_command_prints_the_resource_to_use():
    proc = subprocess.Popen([sys.executable, "-m", "drivers.emulate", "smu", "--port", "0", "--rows", "8",
                             "--cols", "8"], stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        use = proc.stdout.readline().split()
        assert use[:4] == ["use:", "--backend", "visa", "--resource"] and use[4].endswith("::SOCKET")
        with VisaBenchCrossbar(use[4], 8, 8) as x:
            assert x.read([0], [0], voltage_v=0.2).shape == (1, 1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# A scripted 2600B and matrix in Lua, for running the real script. Word lines are on slot 1, bit lines
# on slot 2; relays, levels, current limits and pulses are recorded; SMU B reads the current into it
# (negative) from the word lines on the force row through the bit line on the sense row.
LUA_INSTRUMENT = r"""
G, pulses, events, printed, closed, hot = {}, {}, {}, {}, {}, 0
print = function(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring(select(i, ...)) end
  table.insert(printed, table.concat(parts, "\t"))
end
local function channel(name)
  local src = {levelv = 0, limiti = 5e-4, output = 0}
  local smu = {OUTPUT_ON = 1, OUTPUT_OFF = 0, ENABLE = 1, DISABLE = 0, SOURCE_IDLE = 0, AUTORANGE_ON = 1,
               AUTORANGE_OFF = 0, source = {}, measure = {},
               trigger = {source = {}, measure = {}, endpulse = {}, arm = {}, SOURCE_COMPLETE_EVENT_ID = 7}}
  setmetatable(smu.source, {__index = src, __newindex = function(t, k, v)
    if k == "output" and v == 1 then table.insert(events, "on " .. name .. " " .. src.limiti) end
    if k == "limiti" then table.insert(events, "limiti " .. name .. " " .. v) end
    src[k] = v
  end})
  return smu, src
end
local A, B
smua, A = channel("a")
smub, B = channel("b")
function lines(row, slot)
  local found = {}
  for _, ch in ipairs(closed) do
    local s, r, col = string.match(ch, "^(%d)(%u)(%d%d)$")
    if r == row and tonumber(s) == slot then table.insert(found, tonumber(col)) end
  end
  return found
end
function smub.measure.i()
  local i, bit = 0, lines("B", 2)[1]
  for _, r in ipairs(lines("A", 1)) do i = i + A.levelv * G[r][bit] end
  return -i
end
local level_a, level_b, b_started
function smua.trigger.source.listv(t) level_a = t[1] end
function smub.trigger.source.listv(t) level_b = t[1] end
function smub.trigger.initiate() b_started = true end
function smua.trigger.initiate()
  table.insert(pulses, {lines("A", 1)[1] - 1, lines("C", 2)[1] - 1, level_a, level_b, b_started,
                        trigger.timer[1].delay, smua.trigger.source.limiti, A.output, B.output,
                        table.getn(lines("B", 1)) + table.getn(lines("B", 2))})
  b_started = false
end
trigger = {timer = {{EVENT_ID = 3}}}
waitcomplete = function() end
delay = function(s) end
timer = {measure = {t = function() return 12.25 end}}
errorqueue = {count = 0, next = function() return 0, "Queue Is Empty", 0, 0 end}
node = {nil, {channel = {}}}
node[2].channel.exclusiveclose = function(list)
  if (A.levelv ~= 0 and A.output == 1) or (B.levelv ~= 0 and B.output == 1) then hot = hot + 1 end
  closed = {}
  for item in string.gmatch(list, "[^,]+") do table.insert(closed, item) end
end
node[2].channel.open = function(list) closed = {} end
"""
