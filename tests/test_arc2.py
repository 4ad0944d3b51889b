"""The ArC TWO driver against a fake ``pyarc2``: a module injected into ``sys.modules`` whose
Instrument is backed by a 32x32 conductance matrix and behaves as pyarc2 documents it
(reads sink ``low`` at -vread and sense the other channels at 0 V; slice reads return the
opposite half of the channels in ascending order; queued operations run on ``execute()``;
results of deferred reads come back through ``pick_one``). The fake reports current flowing
into the sensing channel as positive, the convention the driver assumes."""

import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from drivers import CrossbarError, InstrumentIOError, LimitViolation, NotConnected, SafetyLimits
from drivers.arc2 import Arc2Crossbar, ChannelMap, parse_resource

# arc2control's mappings/standard32.toml, copied as the oracle of the default channel map
WORDS = [16, 63, 17, 62, 18, 61, 19, 60, 20, 59, 21, 58, 22, 57, 23, 56,
         24, 55, 25, 54, 26, 53, 27, 52, 28, 51, 29, 50, 30, 49, 31, 48]
BITS = [15, 32, 14, 33, 13, 34, 12, 35, 11, 36, 10, 37, 9, 38, 8, 39,
        7, 40, 6, 41, 5, 42, 4, 43, 3, 44, 2, 45, 1, 46, 0, 47]
LOW_HALF = list(range(16)) + list(range(32, 48))
HIGH_HALF = list(range(16, 32)) + list(range(48, 64))

STANDARD32_TOML = """
[config]
name = "[32NNA68] PLCC 32×32 (CB)"
words = 32
bits = 32

[ioconfs]

[ioconfs.internal]
name = "Socket"
ios = 0b0
dir = ["out", "out", "out", "out"]

[ioconfs.header]
name = "Header"
ios = 0b1
dir = ["out", "out", "out", "out"]

[mapping]
words = [%s]
bits = [%s]
""" % (", ".join(map(str, WORDS)), ", ".join(map(str, BITS)))


class FakeBoard:
    """The instrument's side: conductances ``g[word line, bit line]`` (S) wired to channels as on the
    standard 32x32 daughterboard, a command queue, the pulses executed, the results held in memory."""

    def __init__(self, g, mod):
        self.g, self.mod = g, mod
        self.line = {ch: ("w", i) for i, ch in enumerate(WORDS)} | {ch: ("b", j) for j, ch in enumerate(BITS)}
        self.queue, self.pulses, self.results, self.levels = [], [], [], {}
        self.executions = 0

    def _g(self, a, b):
        la, lb = self.line.get(a), self.line.get(b)
        if la is None or lb is None or la[0] == lb[0]:
            return 0.0
        return self.g[la[1], lb[1]] if la[0] == "w" else self.g[lb[1], la[1]]

    @staticmethod
    def _chan(c):
        assert isinstance(c, (int, np.integer)) and 0 <= c < 64, c
        return int(c)

    # immediate reads: `low` at -vread, the sensed channels at 0 V, so current flows out of them (negative)
    def read_one(self, low, high, vread):
        assert isinstance(vread, float)
        return float(np.float32(-self._g(self._chan(low), self._chan(high)) * vread))

    def read_slice(self, chan, vread):
        highs = HIGH_HALF if self._chan(chan) in LOW_HALF else LOW_HALF
        return np.array([-self._g(chan, h) * vread for h in highs], dtype=np.float32)

    def read_slice_masked(self, chan, mask, vread):
        mask = {self._chan(m) for m in mask}
        highs = HIGH_HALF if self._chan(chan) in LOW_HALF else LOW_HALF
        return np.array([-self._g(chan, h) * vread if h in mask else np.nan for h in highs], dtype=np.float32)

    def read_all(self, vread, order):
        lows = LOW_HALF if order is self.mod.BiasOrder.Cols else HIGH_HALF
        return np.stack([self.read_slice(c, vread) for c in lows])

    # queued operations
    def pulse_one(self, low, high, voltage, nanos):
        assert isinstance(nanos, int) and isinstance(voltage, float)
        self.queue.append(("pulse", self._chan(low), [self._chan(high)], voltage, nanos))

    def pulse_slice_masked(self, chan, voltage, nanos, mask):
        assert isinstance(nanos, int) and isinstance(voltage, float)
        self.queue.append(("pulse", self._chan(chan), [self._chan(m) for m in mask], voltage, nanos))

    def config_channels(self, config, base):
        assert base is None
        self.queue.append(("config", {self._chan(c): float(v) for c, v in config}))

    def read_slice_open_deferred(self, highs, ground_after):
        self.queue.append(("sense", [self._chan(h) for h in highs]))

    def execute(self):
        self.executions += 1
        for op in self.queue:
            if op[0] == "pulse":
                _, low, highs, v, ns = op
                for h in highs:     # differential: V(high) - V(low) = v
                    (kh, ih), (_, il) = self.line[h], self.line[low]
                    cell, v_word_minus_bit = ((ih, il), v) if kh == "w" else ((il, ih), -v)
                    self.pulses.append((*cell, round(v_word_minus_bit, 6), ns))
            elif op[0] == "config":
                self.levels.update(op[1])
            else:                   # current into each sensed channel from every biased line
                out = np.full(64, np.nan, dtype=np.float32)
                for h in op[1]:
                    out[h] = sum(self._g(c, h) * (v - self.levels.get(h, 0.0)) for c, v in self.levels.items())
                self.results.append(out)
        self.queue.clear()

    def pick_one(self, mode, rtype):
        assert mode is self.mod.DataMode.All and rtype is self.mod.ReadType.Current
        return self.results.pop(0) if self.results else None


@pytest.fixture
def fake(mocker, tmp_path):
    mod = types.ModuleType("pyarc2")
    mod.ArC2Error = type("ArC2Error", (Exception,), {})
    for enum in ("BiasOrder", "IdleMode", "ControlMode", "DataMode", "ReadType", "IODir"):
        setattr(mod, enum, mocker.MagicMock(name=enum))
    g = np.random.default_rng(7).uniform(1e-6, 1e-4, size=(32, 32))
    board = FakeBoard(g, mod)
    inst = mocker.MagicMock(name="arc")
    for name in ("read_one", "read_slice", "read_slice_masked", "read_all", "pulse_one", "pulse_slice_masked",
                 "config_channels", "read_slice_open_deferred", "execute", "pick_one"):
        getattr(inst, name).side_effect = getattr(board, name)
    mod.Instrument = mocker.MagicMock(name="Instrument", return_value=inst)
    mod.find_ids = mocker.MagicMock(name="find_ids", return_value=[0])
    mocker.patch.dict(sys.modules, {"pyarc2": mod})
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\x00")
    return SimpleNamespace(mod=mod, inst=inst, board=board, g=g, fw=str(fw))


def names(inst):
    return [c[0] for c in inst.mock_calls]


# ------------------------------------------------------------------ opening
def test_open_finds_the_board_loads_firmware_and_leaves_channels_idle(fake):
    xbar = Arc2Crossbar(0, fake.fw, limits=SafetyLimits(max_write_voltage_v=3.0))
    with xbar:
        fake.mod.find_ids.assert_called_once_with()
        fake.mod.Instrument.assert_called_once_with(0, fake.fw, True)
        io = fake.mod.IODir.OUT
        fake.inst.set_logic.assert_called_once_with(0, io, io, io, io)   # the daughterboard socket
        assert names(fake.inst)[-1] == "finalise_operation"
        assert fake.inst.finalise_operation.call_args.args == (fake.mod.IdleMode.SoftGnd,)
        ident = xbar.identity
        assert (ident.backend, ident.instrument_id, ident.model, ident.firmware) == ("arc2", "arc2:0", "ArC TWO",
                                                                                     "fw.bin")
        assert (ident.rows, ident.cols) == (32, 32)
        assert xbar.limits.min_pulse_width_s == pytest.approx(40e-9)      # tightened to the board's minimum
        assert xbar.limits.max_write_voltage_v == 3.0
        assert xbar.converters().dac_bits == 16 and xbar.converters().dac_range_v == 10.0
        assert any("compliance" in note and "software" in note for note in xbar.notes)
        fake.inst.reset_mock()
    assert names(fake.inst) == ["finalise_operation", "wait"]          # close: idle, then drain the queue
    assert xbar._arc is None


def test_close_uses_the_configured_idle_mode(fake):
    with Arc2Crossbar(0, fake.fw, idle="float"):
        pass
    assert fake.inst.finalise_operation.call_args.args == (fake.mod.IdleMode.Float,)


def test_a_missing_pyarc2_is_a_clear_error_and_the_module_imports_without_it(mocker, tmp_path):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\x00")
    mocker.patch.dict(sys.modules, {"pyarc2": None})
    with pytest.raises(CrossbarError, match=r"pip install pyarc2.*Windows and glibc Linux"):
        Arc2Crossbar(0, str(fw)).open()
    code = "import sys; sys.modules['pyarc2'] = None; import drivers.arc2; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


def test_no_board_found_is_a_clear_error(fake):
    fake.mod.find_ids.return_value = []
    with pytest.raises(InstrumentIOError, match=r"'find_ids'.*no ArC TWO found"):
        Arc2Crossbar(0, fake.fw).open()
    fake.mod.find_ids.return_value = [1, 2]
    with pytest.raises(InstrumentIOError, match=r"no ArC TWO with id 0; found ids \[1, 2\]"):
        Arc2Crossbar(0, fake.fw).open()
    with pytest.raises(InstrumentIOError, match=r"2 ArC TWO boards found"):
        Arc2Crossbar(None, fake.fw).open()
    fake.mod.Instrument.assert_not_called()
    fake.mod.find_ids.return_value = [3]
    with Arc2Crossbar(None, fake.fw) as xbar:                     # the only board, when none is named
        assert xbar.identity.instrument_id == "arc2:3"
    fake.mod.Instrument.assert_called_once_with(3, fake.fw, True)


def test_firmware_must_exist_and_may_come_from_the_environment(fake, monkeypatch):
    monkeypatch.delenv("ARC2_FIRMWARE", raising=False)
    with pytest.raises(CrossbarError, match=r"no firmware file given.*ARC2_FIRMWARE"):
        Arc2Crossbar(0).open()
    with pytest.raises(CrossbarError, match=r"does not exist"):
        Arc2Crossbar(0, fake.fw + ".missing").open()
    fake.mod.Instrument.assert_not_called()
    monkeypatch.setenv("ARC2_FIRMWARE", fake.fw)
    with Arc2Crossbar(0):
        pass
    fake.mod.Instrument.assert_called_once_with(0, fake.fw, True)


def test_a_failure_while_opening_leaves_the_board_idle_and_the_driver_closed(fake):
    fake.inst.set_logic.side_effect = fake.mod.ArC2Error("FPGA Error: write failed")
    xbar = Arc2Crossbar(0, fake.fw)
    with pytest.raises(InstrumentIOError, match=r"'arc2:0', command 'set_logic'.*FPGA Error: write failed"):
        xbar.open()
    assert names(fake.inst)[-1] == "finalise_operation"
    with pytest.raises(NotConnected):
        xbar.read(voltage_v=0.2)


# ------------------------------------------------------------------- reads
def test_whole_array_read_is_one_read_all_in_siemens(fake):
    with Arc2Crossbar(0, fake.fw) as xbar:
        fake.inst.reset_mock()
        g = xbar.read(voltage_v=0.2)
        assert names(fake.inst) == ["read_all", "finalise_operation"]
        assert fake.inst.read_all.call_args.args == (0.2, fake.mod.BiasOrder.Cols)
    assert g.shape == (32, 32) and g.dtype == np.float64
    assert np.allclose(g, fake.g, rtol=1e-6, atol=0)


def test_block_reads_go_by_column_on_the_mapped_channels(fake):
    with Arc2Crossbar(0, fake.fw) as xbar:
        fake.inst.reset_mock()
        g = xbar.read([3, 30, 7], [1, 5], voltage_v=0.15)
        assert np.allclose(g, fake.g[np.ix_([3, 30, 7], [1, 5])], rtol=1e-6, atol=0)
        calls = fake.inst.read_slice_masked.call_args_list
        assert [c.args[0] for c in calls] == [BITS[1], BITS[5]]           # one slice per bit line
        for c in calls:
            assert sorted(c.args[1].tolist()) == sorted([WORDS[3], WORDS[30], WORDS[7]])
            assert c.args[1].dtype == np.uint64 and c.args[2] == 0.15
        fake.inst.reset_mock()
        column = xbar.read(None, [9], voltage_v=0.1)                       # a whole bit line: read_slice
        assert fake.inst.read_slice.call_args.args == (BITS[9], 0.1)
        assert np.allclose(column[:, 0], fake.g[:, 9], rtol=1e-6, atol=0)
        fake.inst.reset_mock()
        cell = xbar.read([12], [20], voltage_v=0.2)                        # a single cell: read_one(low, high)
        assert fake.inst.read_one.call_args.args == (BITS[20], WORDS[12], 0.2)
        assert cell[0, 0] == pytest.approx(fake.g[12, 20], rel=1e-6)
        assert names(fake.inst)[-1] == "finalise_operation"


def test_a_smaller_array_uses_the_first_lines_of_the_map(fake):
    with Arc2Crossbar(0, fake.fw, rows=8, cols=4) as xbar:
        fake.inst.reset_mock()
        g = xbar.read(voltage_v=0.2)
        assert fake.inst.read_all.call_count == 0
        assert [c.args[0] for c in fake.inst.read_slice.call_args_list] == BITS[:4]
        assert np.allclose(g, fake.g[:8, :4], rtol=1e-6, atol=0)
        v = np.full(8, 0.1)
        assert np.allclose(xbar.mvm(v), v @ fake.g[:8, :4], rtol=1e-5, atol=0)
        config = dict(fake.inst.config_channels.call_args.args[0])
        assert set(config) == set(WORDS[:8]) | set(BITS[:4])


def test_a_reading_without_a_valid_conversion_is_an_error(fake):
    fake.inst.read_one.side_effect = lambda *args: float("nan")
    with Arc2Crossbar(0, fake.fw) as xbar:
        with pytest.raises(InstrumentIOError, match=r"not finite"):
            xbar.read([0], [0], voltage_v=0.2)


# ------------------------------------------------------------------ pulses
def test_a_pulse_batch_is_queued_then_executed_once(fake):
    rows = [0, 1, 2, 5, 9, 9]
    cols = [3, 3, 3, 3, 3, 4]
    amps = [1.5, 1.5, 1.5, -1.2, 1.5, 1.5]
    widths = [100e-9, 100e-9, 100e-9, 1e-6, 123.4e-9, 100e-9]
    with Arc2Crossbar(0, fake.fw) as xbar:
        fake.inst.reset_mock()
        executions = fake.board.executions
        xbar.pulse(rows, cols, amps, widths)
        calls = names(fake.inst)
        ops = [n for n in calls if n.startswith("pulse")]
        # one masked slice for the three identical cells of bit line 3; one call each for the others
        assert len(ops) == 4 and fake.inst.pulse_slice_masked.call_count == 1
        first_execute = calls.index("execute")
        assert all(calls.index(n) < first_execute for n in ops)
        assert calls[first_execute:] == ["execute", "wait", "finalise_operation"]
        assert fake.board.queue == []
        expected = {(r, c, a, round(w * 1e9)) for r, c, a, w in zip(rows, cols, amps, widths)}
        assert set(fake.board.pulses) == expected and len(fake.board.pulses) == len(expected)
        masked = fake.inst.pulse_slice_masked.call_args.args
        assert masked[0] == BITS[3] and masked[1:3] == (1.5, 100)
        assert sorted(masked[3].tolist()) == sorted(WORDS[r] for r in (0, 1, 2))
        # a second batch: one more execute, whatever the number of cells
        xbar.pulse(np.arange(32), np.full(32, 7), 1.0, 1e-6)
        assert fake.board.executions - executions == 2 and xbar.transactions["pulse"] == 2


def test_cells_along_a_word_line_are_pulsed_from_that_line_with_the_polarity_kept(fake):
    with Arc2Crossbar(0, fake.fw) as xbar:
        fake.inst.reset_mock()
        xbar.pulse([6, 6, 6, 6], [0, 8, 17, 31], -2.0, 5e-7)
        args = fake.inst.pulse_slice_masked.call_args.args
        # sunk on the word line, so the voltage is inverted: V(bit) - V(word) = +2 V
        assert args[0] == WORDS[6] and args[1:3] == (2.0, 500)
        assert fake.inst.pulse_slice_masked.call_count == 1 and fake.inst.pulse_one.call_count == 0
    assert set(fake.board.pulses) == {(6, c, -2.0, 500) for c in (0, 8, 17, 31)}


def test_widths_below_the_board_minimum_are_refused(fake):
    with Arc2Crossbar(0, fake.fw, limits=SafetyLimits(min_pulse_width_s=1e-9)) as xbar:
        fake.inst.reset_mock()
        with pytest.raises(LimitViolation, match=r"pulse width 3e-08 s outside \[4e-08"):
            xbar.pulse([0], [0], 1.0, 30e-9)
        assert fake.inst.mock_calls == []


# ------------------------------------------------------------------- limits
def test_limits_are_enforced_before_any_pyarc2_call(fake):
    limits = SafetyLimits(max_read_voltage_v=0.3, max_write_voltage_v=2.0, compliance_current_a=1e-4,
                          max_pulse_width_s=1e-4)
    with Arc2Crossbar(0, fake.fw, limits=limits) as xbar:
        fake.inst.reset_mock()
        bad = [
            lambda: xbar.read(voltage_v=0.5),
            lambda: xbar.read([0, 40], [0], voltage_v=0.2),
            lambda: xbar.pulse([0, 1], [0, 1], [1.0, 2.5], 1e-6),
            lambda: xbar.pulse([0], [0], 1.0, 1e-3),
            lambda: xbar.pulse([0], [0], 1.0, 1e-6, compliance_a=1e-3),
            lambda: xbar.pulse([0], [0], float("nan"), 1e-6),
            lambda: xbar.mvm(np.full(32, 0.35)),
            lambda: xbar.mvm(np.zeros((2, 31))),
        ]
        for request in bad:
            with pytest.raises(LimitViolation):
                request()
        assert fake.inst.mock_calls == []
        assert fake.board.pulses == []


# ------------------------------------------------------------------- errors
def test_arc2error_becomes_instrument_io_error_and_the_board_is_left_idle(fake):
    with Arc2Crossbar(0, fake.fw) as xbar:
        fake.inst.read_all.side_effect = fake.mod.ArC2Error("FPGA Error: device timed out")
        fake.inst.reset_mock()
        with pytest.raises(InstrumentIOError) as info:
            xbar.read(voltage_v=0.2)
        assert (info.value.instrument, info.value.command) == ("arc2:0", "read_all")
        assert "ArC2Error: FPGA Error: device timed out" in str(info.value)
        assert names(fake.inst)[-1] == "finalise_operation"

        fake.inst.execute.side_effect = fake.mod.ArC2Error("Memory error")
        fake.inst.reset_mock()
        with pytest.raises(InstrumentIOError, match=r"command 'execute'.*Memory error"):
            xbar.pulse([0], [0], 1.0, 1e-6)
        assert names(fake.inst)[-1] == "finalise_operation"

        class PanicException(BaseException):          # what pyo3 raises when pyarc2 unwraps a libarc2 error
            pass

        fake.inst.read_slice.side_effect = PanicException("called `Result::unwrap()` on an `Err` value")
        with pytest.raises(InstrumentIOError, match=r"command 'read_slice'.*PanicException"):
            xbar.read(None, [0], voltage_v=0.2)


def test_a_failure_to_return_to_idle_is_reported_with_the_first_error(fake):
    with Arc2Crossbar(0, fake.fw) as xbar:
        fake.inst.read_all.side_effect = fake.mod.ArC2Error("FPGA Error: gone")
        fake.inst.finalise_operation.side_effect = fake.mod.ArC2Error("FPGA Error: still gone")
        with pytest.raises(InstrumentIOError, match=r"'read_all'.*gone.*returning the channels to idle .* also failed"):
            xbar.read(voltage_v=0.2)
        fake.inst.finalise_operation.side_effect = None


# --------------------------------------------------------------------- MVM
def test_mvm_returns_column_currents_equal_to_v_times_g(fake):
    v = np.random.default_rng(1).uniform(-0.2, 0.2, size=(5, 32))
    with Arc2Crossbar(0, fake.fw) as xbar:
        fake.inst.reset_mock()
        out = xbar.mvm(v)
        assert out.shape == (5, 32)
        assert np.allclose(out, v.astype(np.float32) @ fake.g, rtol=1e-5, atol=1e-12)
        assert fake.inst.execute.call_count == 1                              # one execute per batch
        assert fake.inst.config_channels.call_count == 5 and fake.inst.pick_one.call_count == 5
        config, base = fake.inst.config_channels.call_args_list[0].args
        config = dict(config)
        assert base is None
        assert all(config[WORDS[i]] == pytest.approx(v[0, i], abs=1e-7) for i in range(32))
        assert all(config[BITS[j]] == 0.0 for j in range(32))
        sensed = fake.inst.read_slice_open_deferred.call_args.args
        assert sorted(sensed[0].tolist()) == sorted(BITS) and sensed[1] is False
        assert names(fake.inst)[-1] == "finalise_operation"
        single = xbar.mvm(v[2])
        assert single.shape == (32,) and np.allclose(single, out[2], rtol=1e-6, atol=0)


def test_long_mvm_batches_are_split_and_a_missing_result_is_an_error(fake, mocker):
    mocker.patch.object(Arc2Crossbar, "MVM_VECTORS_PER_EXECUTE", 2)
    v = np.random.default_rng(2).uniform(-0.2, 0.2, size=(5, 32))
    with Arc2Crossbar(0, fake.fw) as xbar:
        fake.inst.reset_mock()
        assert np.allclose(xbar.mvm(v), v.astype(np.float32) @ fake.g, rtol=1e-5, atol=1e-12)
        assert fake.inst.execute.call_count == 3
        fake.inst.pick_one.side_effect = lambda *args: None
        with pytest.raises(InstrumentIOError, match=r"'pick_one'.*returned 0 of 2"):
            xbar.mvm(v)


# ------------------------------------------------------- resource and mapping
@pytest.mark.parametrize("text, expected", [
    ("0", (0, None)),
    (" 2:/opt/arc2/fw.bin ", (2, "/opt/arc2/fw.bin")),
    ("auto", (None, None)),
    ("AUTO:fw.bin", (None, "fw.bin")),
    (":fw.bin", (None, "fw.bin")),
    ("0:C:\\arc2\\fw.bin", (0, "C:\\arc2\\fw.bin")),
])
def test_parse_resource(text, expected):
    assert parse_resource(text) == expected


@pytest.mark.parametrize("text", ["", "  ", "C:\\fw.bin", "board0", "-1", "0:", "1.5:fw.bin"])
def test_parse_resource_refuses_malformed_strings(text):
    with pytest.raises(ValueError, match=r"resource"):
        parse_resource(text)


def test_channel_map_default_and_toml_match_arc2control_standard32(tmp_path):
    default = ChannelMap.standard32()
    assert list(default.words) == WORDS and list(default.bits) == BITS and default.io_mask == 0
    path = tmp_path / "standard32.toml"
    path.write_text(STANDARD32_TOML, encoding="utf-8")
    loaded = ChannelMap.from_toml(path)
    assert (loaded.words, loaded.bits, loaded.io_mask, loaded.io_dirs) == (default.words, default.bits, 0,
                                                                           ("out",) * 4)
    assert loaded.name == "[32NNA68] PLCC 32×32 (CB)"
    assert ChannelMap.from_toml(path, ioconf="Header").io_mask == 1
    with pytest.raises(ValueError, match=r"no io configuration 'probe'"):
        ChannelMap.from_toml(path, ioconf="probe")


def test_channel_maps_the_slice_operations_cannot_address_are_refused():
    with pytest.raises(ValueError, match=r"opposite halves"):
        ChannelMap(words=(16, 17), bits=(18, 19))                     # both on the same half
    with pytest.raises(ValueError, match=r"opposite halves"):
        ChannelMap(words=(16, 0), bits=(1, 2))                        # word lines split across halves
    with pytest.raises(ValueError, match=r"used twice"):
        ChannelMap(words=(16, 16), bits=(0, 1))
    with pytest.raises(ValueError, match=r"does not fit"):
        ChannelMap(words=(16, 17), bits=(0, 1)).for_shape(3, 2)


def test_a_mapping_with_word_lines_on_the_low_half_reads_all_with_rows_order(fake):
    swapped = ChannelMap(words=tuple(BITS), bits=tuple(WORDS), name="swapped")
    fake.board.line = {ch: ("w", i) for i, ch in enumerate(BITS)} | {ch: ("b", j) for j, ch in enumerate(WORDS)}
    with Arc2Crossbar(0, fake.fw, mapping=swapped) as xbar:
        g = xbar.read(voltage_v=0.2)
        assert fake.inst.read_all.call_args.args == (0.2, fake.mod.BiasOrder.Rows)
        assert np.allclose(g, fake.g, rtol=1e-6, atol=0)
        v = np.full(32, 0.1)
        assert np.allclose(xbar.mvm(v), v @ fake.g, rtol=1e-5, atol=0)


def test_the_arc2_backend_without_pyarc2_is_refused_before_anything_is_recorded(tmp_path, mocker, capsys):
    import hil.run

    mocker.patch.dict(sys.modules, {"pyarc2": None})
    protocol = tmp_path / "p.yaml"
    protocol.write_text("name: p\narray: {rows: 32, cols: 32}\nsteps:\n  - kind: read\n    name: r\n"
                        "    read_voltage_v: 0.2\n", encoding="utf-8")
    db = tmp_path / "never.db"
    code = hil.run.main([str(protocol), "--backend", "arc2", "--resource", "0:/fw.bin", "--db", f"sqlite:///{db}"])
    assert code == hil.run.EXIT_BAD_INPUT
    assert "pip install pyarc2" in capsys.readouterr().err
    assert not db.exists()
