"""Driver for the ArC TWO array characterisation board, over the vendor's ``pyarc2`` bindings.

``Arc2Crossbar(0, "/path/to/fw.bin")`` talks to the board with EFM id 0 (``pyarc2.find_ids()``),
loading the firmware file shipped with the board. ``pyarc2`` is imported only when the
instrument is opened, so this module imports (and its tests run) without it; pyarc2 publishes
wheels for Windows and glibc Linux on x86_64 only (``pip install pyarc2``).

Lines and channels. ArC TWO has 64 channels; a :class:`ChannelMap` says which channel drives
each word line (a row of this framework's arrays, where MVM inputs are applied) and each bit
line (a column, where MVM currents are sensed). The default is the PLCC 32x32 daughterboard
layout of arc2control's ``standard32.toml``. pyarc2's slice operations assume the 32x32 split
of the channels into ``0-15, 32-47`` and ``16-31, 48-63``: a slice sunk at a channel of one half
reads or pulses the other half. A map must therefore put all word lines in one half and all
bit lines in the other.

Polarity. A pulse amplitude is ``V(word line) - V(bit line)``: arc2control's convention (the
word line is the ``high`` channel, the bit line the ``low`` one). pyarc2 pulses differentially,
``+V/2`` on one side and ``-V/2`` on the other, so half-selected cells on the same lines see
``|V|/2``. Whether that is a SET depends on how the device is bonded; the framework's rule
"amplitude > 0 raises conductance" holds when the devices' top electrodes are on the word lines.

Current sign (an assumption, stated once here). pyarc2 returns the current sensed at a
channel. Its own code does not name the direction; arc2control's curve tracer senses on the
channel at the higher potential and negates what pyarc2 returns to draw a conventional I-V
curve, so a positive value is taken to be current flowing *from the array into* the sensing
channel. Under that reading a ``read`` (sensing word line at 0 V, bit line at ``-vread``)
returns ``-G * vread``, and an MVM (word lines at ``V_i``, sensing bit lines at 0 V) returns
``+sum_i G_ij V_i``. Both are converted with one ``current_sign`` (default +1): if a bench reads
negative conductances on a plain resistor, construct the driver with ``current_sign=-1``.
The sign is kept rather than taking ``abs()`` so that a wrong assumption shows at the first
read instead of silently inverting only the MVM.

Limits. ArC TWO has no current compliance: a pulse's ``compliance_a`` is checked against the
configured limit by the :class:`~drivers.interface.Crossbar` interface, but nothing on the
board enforces it (see :attr:`Arc2Crossbar.notes`, recorded with each run). The board's own
envelope, which the configured limits are tightened to: +-10 V per channel in the standard
output range (the framework caps any voltage at 10 V), pulses of at least 40 ns (the high-speed
drivers turn anything from 1 to 40 ns into 40 ns, so shorter requests are refused, not rounded).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import CrossbarError, InstrumentIOError, LimitViolation
from .interface import ConverterSpec, Crossbar, CrossbarIdentity
from .limits import ABSOLUTE_MAX_CURRENT_A, SafetyLimits

log = logging.getLogger(__name__)

N_CHANNELS = 64
# pyarc2's 32x32 split: a slice sunk at a channel of one half reads/pulses the other half, whose
# values it returns in ascending channel order (libarc2's ALL_BITS / ALL_WORDS).
HALF_LOW = tuple(range(0, 16)) + tuple(range(32, 48))
HALF_HIGH = tuple(range(16, 32)) + tuple(range(48, 64))

MIN_PULSE_NS = 40                 # high-speed driver minimum; 1..40 ns become 40 ns on the board
BOARD_LIMITS = SafetyLimits(
    max_read_voltage_v=10.0,      # the read bias is a DAC level, +-10 V in the standard range
    max_write_voltage_v=10.0,
    compliance_current_a=ABSOLUTE_MAX_CURRENT_A,   # no hardware compliance: the framework's cap only
    min_pulse_width_s=MIN_PULSE_NS * 1e-9,
    max_pulse_width_s=1.0,
)
FIRMWARE_ENV = "ARC2_FIRMWARE"
INSTALL_HINT = ("install it with `pip install pyarc2` (wheels exist for Windows and glibc Linux on x86_64 only; "
                "other platforms need a build from https://github.com/arc-instruments/pyarc2)")
NO_COMPLIANCE_NOTE = ("ArC TWO has no current compliance: compliance_current_a is checked in software only "
                      "and not enforced by the instrument")
IdleName = Literal["float", "soft_gnd", "hard_gnd"]
_IDLE_MODES = {"float": "Float", "soft_gnd": "SoftGnd", "hard_gnd": "HardGnd"}

# arc2control's mappings/standard32.toml, "[32NNA68] PLCC 32x32 (CB)": channel of each word / bit line.
STANDARD32_WORDS = (16, 63, 17, 62, 18, 61, 19, 60, 20, 59, 21, 58, 22, 57, 23, 56,
                    24, 55, 25, 54, 26, 53, 27, 52, 28, 51, 29, 50, 30, 49, 31, 48)
STANDARD32_BITS = (15, 32, 14, 33, 13, 34, 12, 35, 11, 36, 10, 37, 9, 38, 8, 39,
                   7, 40, 6, 41, 5, 42, 4, 43, 3, 44, 2, 45, 1, 46, 0, 47)


# ------------------------------------------------------------------ resource
def parse_resource(text: str) -> tuple[int | None, str | None]:
    """``"ID[:FIRMWARE]"`` -> ``(board_id, firmware path)``.

    ``ID`` is the EFM id ``pyarc2.find_ids()`` reports, or ``auto`` (or nothing) for the only
    board connected. Everything after the first colon is the firmware path, so Windows paths
    work: ``0:C:\\arc2\\fw.bin``. Examples: ``0``, ``auto``, ``1:/opt/arc2/efm03.bin``.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("an ArC TWO resource is ID[:FIRMWARE], e.g. 0:/path/to/fw.bin; got an empty string")
    head, sep, tail = text.strip().partition(":")
    head = head.strip()
    if head == "" or head.lower() == "auto":
        board_id = None
    elif head.isdigit():
        board_id = int(head)
    else:
        raise ValueError(f"ArC TWO resource {text!r}: {head!r} is not a board id; expected ID[:FIRMWARE] with ID "
                         f"a non-negative integer from pyarc2.find_ids() or 'auto', e.g. 0:/path/to/fw.bin")
    if sep and not tail.strip():
        raise ValueError(f"ArC TWO resource {text!r}: the firmware path after ':' is empty")
    return board_id, (tail.strip() or None)


# --------------------------------------------------------------- channel map
@dataclass(frozen=True)
class ChannelMap:
    """Channel (0-63) of each word line (row) and bit line (column), with the daughterboard's logic setting.

    ``io_mask``/``io_dirs``: the ``set_logic`` setting that routes the daughterboard (arc2control's
    ``[ioconfs]``; the socket of the standard board is mask 0, all clusters out); None leaves
    the logic as the board has it.
    """

    words: tuple[int, ...]
    bits: tuple[int, ...]
    name: str = "standard32"
    io_mask: int | None = 0
    io_dirs: tuple[str, ...] = ("out", "out", "out", "out")

    def __post_init__(self) -> None:
        words, bits = tuple(int(c) for c in self.words), tuple(int(c) for c in self.bits)
        object.__setattr__(self, "words", words)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "io_dirs", tuple(str(d).strip().lower() for d in self.io_dirs))
        every = words + bits
        if not words or not bits:
            raise ValueError(f"channel map {self.name!r}: needs at least one word line and one bit line")
        if any(not 0 <= c < N_CHANNELS for c in every):
            raise ValueError(f"channel map {self.name!r}: channels must lie in 0..{N_CHANNELS - 1}")
        if len(set(every)) != len(every):
            raise ValueError(f"channel map {self.name!r}: a channel is used twice")
        low = set(HALF_LOW)
        word_low, bit_low = {c in low for c in words}, {c in low for c in bits}
        # pyarc2's slice reads and pulses address the other half of the channels from the sink
        if len(word_low) != 1 or len(bit_low) != 1 or word_low == bit_low:
            raise ValueError(f"channel map {self.name!r}: word lines and bit lines must each lie in one half of the "
                             f"channels (0-15 and 32-47, or 16-31 and 48-63), on opposite halves, as on the 32x32 "
                             f"daughterboard; pyarc2's slice operations assume that split")
        if self.io_mask is not None:
            if not 0 <= int(self.io_mask) <= 0xFFFF:
                raise ValueError(f"channel map {self.name!r}: io mask {self.io_mask} outside 0..65535")
            if len(self.io_dirs) != 4 or any(d not in ("in", "out") for d in self.io_dirs):
                raise ValueError(f"channel map {self.name!r}: io dirs must be four of 'in'/'out', got {self.io_dirs}")

    @classmethod
    def standard32(cls) -> "ChannelMap":
        return cls(STANDARD32_WORDS, STANDARD32_BITS)

    @classmethod
    def from_dict(cls, data: dict, *, ioconf: str | None = None, name: str | None = None) -> "ChannelMap":
        """From the structure of arc2control's mapping files: ``{"config": {"words", "bits", "name"},
        "mapping": {"words": [...], "bits": [...]}, "ioconfs": {key: {"name", "ios", "dir"}}}``.

        ``ioconf`` picks an entry of ``ioconfs`` by key or name (``"internal"``, ``"header"``); by
        default the first, as arc2control does. A crosspoint ``mask`` in ``config`` is not used.
        """
        try:
            config, mapping = data.get("config", {}), data["mapping"]
            n_words, n_bits = int(config.get("words", len(mapping["words"]))), int(config.get("bits", len(mapping["bits"])))
            words, bits = tuple(mapping["words"])[:n_words], tuple(mapping["bits"])[:n_bits]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not an arc2control channel mapping (needs [mapping] words and bits): {exc}") from None
        if len(words) < n_words or len(bits) < n_bits:
            raise ValueError(f"channel mapping declares {n_words} words and {n_bits} bits but lists "
                             f"{len(words)} and {len(bits)} channels")
        confs = data.get("ioconfs") or {}
        io_mask, io_dirs = None, ("out",) * 4
        if confs:
            key = next(iter(confs)) if ioconf is None else next(
                (k for k, v in confs.items() if ioconf in (k, v.get("name"))), None)
            if key is None:
                raise ValueError(f"channel mapping has no io configuration {ioconf!r}; it offers "
                                 f"{', '.join(repr(k) for k in confs)}")
            io_mask = int(confs[key].get("ios", 0))
            io_dirs = tuple(confs[key].get("dir", io_dirs))
        elif ioconf is not None:
            raise ValueError(f"channel mapping has no [ioconfs], so io configuration {ioconf!r} cannot be chosen")
        return cls(words, bits, name=name or str(config.get("name", "custom")), io_mask=io_mask, io_dirs=io_dirs)

    @classmethod
    def from_toml(cls, path: str | os.PathLike, *, ioconf: str | None = None) -> "ChannelMap":
        """Load one of arc2control's ``mappings/*.toml`` files (UTF-8)."""
        try:
            import tomllib                          # Python >= 3.11
        except ModuleNotFoundError:                 # pragma: no cover - only on Python 3.10
            try:
                import tomli as tomllib
            except ModuleNotFoundError:
                raise ValueError("reading TOML needs Python >= 3.11 or the tomli package; or parse the file "
                                 "yourself and use ChannelMap.from_dict") from None
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"cannot read channel mapping {str(path)!r}: {exc}") from exc
        return cls.from_dict(data, ioconf=ioconf, name=str(data.get("config", {}).get("name", path.stem)))

    def for_shape(self, rows: int, cols: int) -> "ChannelMap":
        """The first ``rows`` word lines and ``cols`` bit lines."""
        if rows > len(self.words) or cols > len(self.bits):
            raise ValueError(f"channel map {self.name!r} has {len(self.words)} word and {len(self.bits)} bit lines; "
                             f"a {rows}x{cols} array does not fit")
        return ChannelMap(self.words[:rows], self.bits[:cols], self.name, self.io_mask, self.io_dirs)

    @property
    def bits_in_low_half(self) -> bool:
        return self.bits[0] in HALF_LOW


def require_pyarc2(instrument: str = "arc2") -> Any:
    """The ``pyarc2`` module, or a :class:`CrossbarError` saying how to install it."""
    try:
        import pyarc2
    except ImportError as exc:
        raise CrossbarError(instrument, "open", f"the ArC TWO backend needs the pyarc2 package, which cannot be "
                                                f"imported ({exc}); {INSTALL_HINT}") from exc
    if not hasattr(pyarc2, "Instrument"):
        # pyarc2 imports on other platforms but has no Instrument class there
        raise CrossbarError(instrument, "open", f"this pyarc2 build has no Instrument class (unsupported platform); "
                                                f"{INSTALL_HINT}")
    return pyarc2


# ---------------------------------------------------------------------- driver
class Arc2Crossbar(Crossbar):
    """An array on an ArC TWO, through pyarc2.

    ``board_id``: EFM id from ``pyarc2.find_ids()``; None takes the only board connected.
    ``firmware``: path of the firmware file shipped with the board; None reads ``$ARC2_FIRMWARE``.
    ``idle``: the state the channels are left in after every operation, on close and after an
    error: ``"soft_gnd"`` (all channels at 0 V), ``"hard_gnd"`` or ``"float"`` (pyarc2's ``IdleMode``).
    ``current_sign``: see the module docstring.
    """

    MVM_VECTORS_PER_EXECUTE = 256     # bounds the instrument's command buffer and the results held on the board

    def __init__(self, board_id: int | None = None, firmware: str | os.PathLike | None = None, *, rows: int = 32,
                 cols: int = 32, mapping: ChannelMap | None = None, limits: SafetyLimits | None = None,
                 idle: IdleName = "soft_gnd", current_sign: float = 1.0, array_id: str | None = None):
        if idle not in _IDLE_MODES:
            raise ValueError(f"idle must be one of {', '.join(_IDLE_MODES)}, got {idle!r}")
        if current_sign not in (1, -1):
            raise ValueError(f"current_sign must be +1 or -1, got {current_sign!r}")
        if board_id is not None and (not isinstance(board_id, (int, np.integer)) or board_id < 0):
            raise ValueError(f"board_id must be a non-negative integer or None, got {board_id!r}")
        self.board_id = None if board_id is None else int(board_id)
        fw = firmware if firmware is not None else os.environ.get(FIRMWARE_ENV) or None
        self.firmware = None if fw is None else os.path.expanduser(os.fspath(fw))
        self.mapping = (mapping or ChannelMap.standard32()).for_shape(rows, cols)
        self.idle = idle
        self.current_sign = float(current_sign)
        self._array_label = array_id
        self._pyarc2: Any = None
        self._arc: Any = None
        name = f"arc2:{'auto' if self.board_id is None else self.board_id}"
        super().__init__(self._make_identity(name, self.board_id), (limits or SafetyLimits()).tightened(BOARD_LIMITS))
        self._words = np.asarray(self.mapping.words, dtype=np.uint64)
        self._bits = np.asarray(self.mapping.bits, dtype=np.uint64)
        # the position of every channel in a slice read (pyarc2 returns the opposite half in ascending order)
        self._slot = np.full(N_CHANNELS, -1, dtype=np.intp)
        for half in (HALF_LOW, HALF_HIGH):
            self._slot[list(half)] = np.arange(len(half))

    @property
    def notes(self) -> tuple[str, ...]:
        """Facts about this instrument worth recording with a run."""
        return (NO_COMPLIANCE_NOTE,
                "pulses are differential (+V/2, -V/2): half-selected cells on a pulsed line see |V|/2",
                f"current sign convention: current_sign={self.current_sign:+g} (positive = into the sensing channel)")

    def settings(self) -> dict:
        return {"board_id": self.board_id, "firmware": str(self.firmware), "mapping": self.mapping.name,
                "idle": self.idle, "notes": list(self.notes)}

    def _make_identity(self, instrument_id: str, board_id: int | None) -> CrossbarIdentity:
        array = self._array_label or f"arc2-{'auto' if board_id is None else board_id}:{self.mapping.name}"
        return CrossbarIdentity(backend="arc2", instrument_id=instrument_id, array_id=array,
                                rows=len(self.mapping.words), cols=len(self.mapping.bits), model="ArC TWO",
                                firmware=Path(self.firmware).name if self.firmware else "")

    def converters(self) -> ConverterSpec:
        # 16-bit DACs over +-10 V (libarc2's vidx!: 305.179 uV per code). The current ADC auto-ranges over
        # three sense resistors, so no single ADC resolution or full scale describes it, and none can be chosen.
        return ConverterSpec(dac_bits=16, dac_range_v=10.0)

    # ------------------------------------------------------------- life cycle
    def _open(self) -> None:
        pyarc2 = require_pyarc2(self._name)
        self._pyarc2 = pyarc2
        ids = [int(i) for i in self._call("find_ids", pyarc2.find_ids, during="open")]
        if not ids:
            raise InstrumentIOError(self._name, "find_ids", "no ArC TWO found: pyarc2.find_ids() returned no boards "
                                                            "(check USB and power, and that no other program holds it)")
        if self.board_id is None:
            if len(ids) > 1:
                raise InstrumentIOError(self._name, "find_ids", f"{len(ids)} ArC TWO boards found (ids {ids}); "
                                                                f"name one in the resource, e.g. {ids[0]}:FIRMWARE")
            board = ids[0]
        elif self.board_id in ids:
            board = self.board_id
        else:
            raise InstrumentIOError(self._name, "find_ids", f"no ArC TWO with id {self.board_id}; found ids {ids}")
        if not self.firmware:
            raise CrossbarError(self._name, "open", f"no firmware file given: name it in the resource "
                                                    f"({board}:/path/to/fw.bin) or in ${FIRMWARE_ENV}; it is the .bin "
                                                    f"file shipped with the board (arc2control's firmware manager keeps them too)")
        if not os.path.isfile(self.firmware):
            raise CrossbarError(self._name, "open", f"firmware file {self.firmware!r} does not exist")
        self._identity = self._make_identity(f"arc2:{board}", board)
        # positional: pyarc2's constructor and its Python wrapper name the arguments differently
        self._arc = self._call("Instrument", pyarc2.Instrument, board, self.firmware, True, during="open")
        try:
            if self.mapping.io_mask is not None:
                dirs = [pyarc2.IODir.IN if d == "in" else pyarc2.IODir.OUT for d in self.mapping.io_dirs]
                self._call("set_logic", self._arc.set_logic, int(self.mapping.io_mask), *dirs, during="open")
                self._call("execute", self._arc.execute, during="open")
            self._to_idle("open")
        except BaseException as exc:
            self._abandon(exc, "open")
            self._arc = None
            raise
        log.info("%s opened (firmware %s, mapping %s); %s", self._name, self.firmware, self.mapping.name,
                 NO_COMPLIANCE_NOTE)

    def _close(self) -> None:
        if self._arc is None:
            return
        try:
            self._to_idle("close")
            self._call("wait", self._arc.wait, during="close")
        finally:
            # the USB device is released when the last reference to the Instrument goes
            self._arc = None

    # ------------------------------------------------------------- operations
    def _read(self, rows, cols, voltage_v):
        def body(arc):
            v = float(voltage_v)
            out = np.empty((rows.size, cols.size), dtype=np.float64)
            n_rows, n_cols = self.shape
            if rows.size == 1 and cols.size == 1:
                raw = self._call("read_one", arc.read_one, int(self._bits[cols[0]]), int(self._words[rows[0]]), v)
                out[0, 0] = raw
            elif n_rows == n_cols == 32 and np.unique(rows).size == 32 and np.unique(cols).size == 32:
                order = self._pyarc2.BiasOrder.Cols if self.mapping.bits_in_low_half else self._pyarc2.BiasOrder.Rows
                raw = self._array("read_all", self._call("read_all", arc.read_all, v, order), (32, 32))
                # raw[i, j]: sunk at the i-th channel of the bit lines' half, sensed at the j-th of the other
                out[:] = raw[np.ix_(self._slot[self._bits[cols]], self._slot[self._words[rows]])].T
            else:
                wanted = np.unique(rows)
                whole = wanted.size == n_rows
                for c in np.unique(cols):
                    low = int(self._bits[c])
                    if whole:
                        raw = self._call("read_slice", arc.read_slice, low, v)
                    else:
                        raw = self._call("read_slice_masked", arc.read_slice_masked, low, self._words[wanted], v)
                    raw = self._array("read_slice", raw, (32,))
                    out[:, cols == c] = raw[self._slot[self._words[rows]]][:, None]
            self._require_finite(out, "read")
            # sensing word line at 0 V, bit line at -v: the current flows out of the sensing channel
            return -self.current_sign * out / v

        return self._operation("read", body)

    def _pulse(self, rows, cols, amplitude_v, width_s, compliance_a):
        nanos = np.rint(width_s * 1e9).astype(np.int64)
        if nanos.min() < MIN_PULSE_NS:
            raise LimitViolation(self._name, "pulse", f"pulse width {int(nanos.min())} ns is below the ArC TWO "
                                                      f"minimum of {MIN_PULSE_NS} ns")
        plan = self._pulse_plan(rows, cols, amplitude_v, nanos)

        def body(arc):
            for method, args in plan:
                self._call(method, getattr(arc, method), *args)
                # arc2control grounds after every slice pulse so that each starts from 0 V on every channel
                self._call("ground_all", arc.ground_all)
            self._call("execute", arc.execute)
            self._call("wait", arc.wait)

        self._operation("pulse", body)

    def _pulse_plan(self, rows, cols, amps, nanos) -> list[tuple[str, tuple]]:
        """pyarc2 calls for one pulse request: cells sharing a line, amplitude and width go in one masked
        slice pulse, sunk on the bit lines or on the word lines, whichever needs fewer calls."""
        def groups(line, other):
            out: dict[tuple, list[int]] = {}
            for k in range(line.size):
                out.setdefault((int(line[k]), float(amps[k]), int(nanos[k])), []).append(int(other[k]))
            return out

        by_bit, by_word = groups(cols, rows), groups(rows, cols)
        plan = []
        if len(by_bit) <= len(by_word):
            for (c, amp, ns), rs in by_bit.items():
                # sunk on the bit line: V(high = word) - V(low = bit) = amplitude
                if len(rs) == 1:
                    plan.append(("pulse_one", (int(self._bits[c]), int(self._words[rs[0]]), amp, ns)))
                else:
                    plan.append(("pulse_slice_masked", (int(self._bits[c]), amp, ns, self._words[rs])))
        else:
            for (r, amp, ns), cs in by_word.items():
                # sunk on the word line: V(high = bit) - V(low = word) = -amplitude
                if len(cs) == 1:
                    plan.append(("pulse_one", (int(self._bits[cs[0]]), int(self._words[r]), amp, ns)))
                else:
                    plan.append(("pulse_slice_masked", (int(self._words[r]), -amp, ns, self._bits[cs])))
        return plan

    def _mvm(self, voltages_v, adc_range_a=None):
        """Each input vector: word lines set to their voltages and bit lines held at 0 V
        (``config_channels``), then the bit-line currents read in place (``read_slice_open_deferred``).
        All vectors of a batch are queued and run with one ``execute``; the results are then collected
        from the board's memory with ``pick_one``. pyarc2 has no single call that applies arbitrary row
        voltages and returns column currents, so this is that sequence, one measurement per vector."""
        batch = voltages_v.shape[0]
        bit_list = [(int(ch), 0.0) for ch in self._bits]

        def body(arc):
            out = np.empty((batch, self.shape[1]), dtype=np.float64)
            for start in range(0, batch, self.MVM_VECTORS_PER_EXECUTE):
                stop = min(start + self.MVM_VECTORS_PER_EXECUTE, batch)
                for b in range(start, stop):
                    config = [(int(ch), float(v)) for ch, v in zip(self._words, voltages_v[b])] + bit_list
                    self._call("config_channels", arc.config_channels, config, None)
                    self._call("read_slice_open_deferred", arc.read_slice_open_deferred, self._bits, False)
                self._call("execute", arc.execute)
                self._call("wait", arc.wait)
                for b in range(start, stop):
                    raw = self._call("pick_one", arc.pick_one, self._pyarc2.DataMode.All, self._pyarc2.ReadType.Current)
                    if raw is None:
                        raise InstrumentIOError(self._name, "pick_one", f"the board returned {b - start} of "
                                                                        f"{stop - start} queued MVM results")
                    out[b] = self._array("pick_one", raw, (N_CHANNELS,))[self._bits.astype(np.intp)]
            self._require_finite(out, "mvm")
            return self.current_sign * out

        return self._operation("mvm", body)

    # ----------------------------------------------------------------- helpers
    def _operation(self, command: str, body):
        """Run ``body(instrument)`` and leave the channels idle afterwards, whether it succeeded or not."""
        if self._arc is None:
            raise InstrumentIOError(self._name, command, "the instrument is not connected")
        try:
            result = body(self._arc)
            self._to_idle(command)
            return result
        except BaseException as exc:
            self._abandon(exc, command)
            raise

    def _to_idle(self, during: str) -> None:
        mode = getattr(self._pyarc2.IdleMode, _IDLE_MODES[self.idle])
        self._call("finalise_operation", self._arc.finalise_operation, mode, during=during)

    def _abandon(self, exc: BaseException, during: str) -> None:
        """After a failure: try once to leave the channels idle; note on ``exc`` if that failed too."""
        if self._arc is None:
            return
        try:
            self._to_idle(during)
        except Exception as again:      # the first error is the one to report
            note = f"returning the channels to idle ({self.idle}) also failed: {again}"
            if isinstance(exc, CrossbarError):
                exc.args = (f"{exc.args[0]}; {note}",)
            log.error("%s: %s", self._name, note)

    def _call(self, method: str, fn, *args, during: str | None = None):
        """Call pyarc2; its errors become :class:`InstrumentIOError` naming the pyarc2 method."""
        try:
            return fn(*args)
        except CrossbarError:
            raise
        except BaseException as exc:
            if not self._is_instrument_fault(exc):
                raise
            where = f" (during {during})" if during else ""
            raise InstrumentIOError(self._name, method, f"{type(exc).__name__}: {exc}{where}") from exc

    def _is_instrument_fault(self, exc: BaseException) -> bool:
        arc2_error = getattr(self._pyarc2, "ArC2Error", None)
        if isinstance(arc2_error, type) and isinstance(exc, arc2_error):
            return True
        # pyarc2's immediate reads unwrap libarc2 errors: a Rust panic arrives as pyo3's PanicException,
        # which derives from BaseException
        return isinstance(exc, OSError) or type(exc).__name__ == "PanicException"

    def _array(self, method: str, raw, shape: tuple[int, ...]) -> np.ndarray:
        arr = np.asarray(raw, dtype=np.float64)
        if arr.size != int(np.prod(shape)):
            raise InstrumentIOError(self._name, method, f"returned {arr.size} values, {int(np.prod(shape))} expected")
        return arr.reshape(shape)

    def _require_finite(self, values: np.ndarray, command: str) -> None:
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            # libarc2 gives NaN for an ADC word whose range code it does not know: a failed conversion
            raise InstrumentIOError(self._name, command, f"{bad} of {values.size} current readings are not finite "
                                                         f"(no valid ADC conversion)")


__all__ = ["Arc2Crossbar", "BOARD_LIMITS", "ChannelMap", "parse_resource", "require_pyarc2"]
