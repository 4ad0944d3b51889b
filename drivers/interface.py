"""The Crossbar interface every backend implements: mock, bench drivers, emulators.

The public methods (:meth:`Crossbar.read`, :meth:`Crossbar.pulse`,
:meth:`Crossbar.mvm`) check every request against the safety limits and the
array shape *before* handing it to the backend's ``_read`` / ``_pulse`` /
``_mvm``, so no backend can forget a check and no out-of-limit command reaches
an instrument. They also count instrument transactions, the figure write-verify
and the executors are judged by.

Conventions (SI units throughout):

* conductance in siemens, voltage in volts, current in amperes, time in seconds;
* a pulse amplitude > 0 is a SET (raises conductance), < 0 a RESET;
* ``mvm`` takes row voltages of shape ``(batch, rows)`` and returns column
  currents of shape ``(batch, cols)``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from .errors import CrossbarError, InstrumentIOError, LimitViolation, NotConnected
from .limits import SafetyLimits


@dataclass(frozen=True)
class CrossbarIdentity:
    """Who is on the other end: recorded with every run."""

    backend: str
    instrument_id: str
    array_id: str
    rows: int
    cols: int
    model: str = ""
    firmware: str = ""


@dataclass(frozen=True)
class ConverterSpec:
    """Declared resolution of the MVM periphery; None where the instrument does not say."""

    dac_bits: int | None = None
    dac_range_v: float | None = None
    adc_bits: int | None = None
    adc_range_a: float | None = None
    # Full scales an MVM may select (a readout gain), largest first; None: only adc_range_a.
    adc_ranges_a: tuple[float, ...] | None = None


Index = slice | np.ndarray | list[int] | None


class Crossbar(ABC):
    """An array of programmable conductances with batched read, pulse and MVM."""

    def __init__(self, identity: CrossbarIdentity, limits: SafetyLimits):
        self._identity = identity
        self._limits = limits
        self._is_open = False
        self.transactions = {"read": 0, "pulse": 0, "mvm": 0}
        self._layouts: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}   # see _check_layout

    # ----------------------------------------------------------------- identity
    @property
    def identity(self) -> CrossbarIdentity:
        return self._identity

    @property
    def limits(self) -> SafetyLimits:
        return self._limits

    @property
    def shape(self) -> tuple[int, int]:
        return self._identity.rows, self._identity.cols

    @property
    def total_transactions(self) -> int:
        return sum(self.transactions.values())

    def settings(self) -> dict:
        """What else shaped this instrument's behaviour in a run (firmware file, channel map, idle mode...),
        JSON-serialisable, recorded with the run; {} by default."""
        return {}

    def converters(self) -> ConverterSpec:
        """The DAC/ADC resolution the instrument declares (calibration measures what it can of the rest)."""
        return ConverterSpec()

    def restrict_limits(self, limits: SafetyLimits) -> None:
        """Tighten the envelope (never loosen it): the stricter of each bound wins."""
        self._limits = self._limits.tightened(limits)

    # ------------------------------------------------------------- life cycle
    def open(self) -> "Crossbar":
        if not self._is_open:
            self._open()
            self._is_open = True
        return self

    def close(self) -> None:
        if self._is_open:
            try:
                self._close()
            finally:
                self._is_open = False

    def __enter__(self) -> "Crossbar":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------- clock
    def now(self) -> float:
        """The instrument's clock in seconds (virtual on the mock)."""
        return time.monotonic()

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass on the instrument's clock (sleeps on a real bench)."""
        if seconds > 0:
            time.sleep(seconds)

    # -------------------------------------------------------------- operations
    def read(self, rows: Index = None, cols: Index = None, *, voltage_v: float) -> np.ndarray:
        """Conductance (S) of the block ``rows x cols``, read at ``voltage_v``; shape (len(rows), len(cols))."""
        self._require_open("read")
        r = self._index(rows, self._identity.rows, "read", "rows")
        c = self._index(cols, self._identity.cols, "read", "cols")
        self._check_read_voltage(voltage_v, "read")
        self.transactions["read"] += 1
        return self._guarded("read", self._read, r, c, float(voltage_v))

    def pulse(self, rows, cols, amplitude_v, width_s, *, compliance_a: float | None = None) -> None:
        """One programming pulse on each listed cell (rows[k], cols[k]); amplitude and width per cell or scalar."""
        self._require_open("pulse")
        r = np.asarray(rows, dtype=np.intp).ravel()
        c = np.asarray(cols, dtype=np.intp).ravel()
        if r.shape != c.shape:
            raise LimitViolation(self._name, "pulse", f"rows ({r.size}) and cols ({c.size}) differ in length")
        n = r.size
        amp = self._per_cell(amplitude_v, n, "amplitude_v")
        width = self._per_cell(width_s, n, "width_s")
        lim = self._limits
        if n:
            self._check_range(r, self._identity.rows, "pulse", "rows")
            self._check_range(c, self._identity.cols, "pulse", "cols")
            worst = float(np.max(np.abs(amp)))
            if not worst <= lim.max_write_voltage_v:
                raise LimitViolation(self._name, "pulse",
                                     f"amplitude {worst:g} V exceeds max_write_voltage_v {lim.max_write_voltage_v:g} V")
            lo, hi = float(np.min(width)), float(np.max(width))
            if not (lo >= lim.min_pulse_width_s and hi <= lim.max_pulse_width_s):
                bad = lo if not lo >= lim.min_pulse_width_s else hi
                raise LimitViolation(self._name, "pulse",
                                     f"pulse width {bad:g} s outside [{lim.min_pulse_width_s:g}, {lim.max_pulse_width_s:g}] s")
            flat = r * self._identity.cols + c
            if self._repeats_a_cell(flat):
                raise LimitViolation(self._name, "pulse", "a cell appears more than once in one pulse request")
        compliance = lim.compliance_current_a if compliance_a is None else float(compliance_a)
        if not 0 < compliance <= lim.compliance_current_a:
            raise LimitViolation(self._name, "pulse",
                                 f"compliance {compliance:g} A outside (0, {lim.compliance_current_a:g}] A")
        self.transactions["pulse"] += 1
        if n:
            self._guarded("pulse", self._pulse, r, c, amp, width, compliance)

    def mvm(self, voltages_v, *, adc_range_a: float | None = None) -> np.ndarray:
        """Column currents (A) for row voltages (V): (rows,) -> (cols,) or (batch, rows) -> (batch, cols).

        ``adc_range_a`` selects one of the instrument's declared ADC full scales
        (``converters().adc_ranges_a``); None keeps its default range.
        """
        self._require_open("mvm")
        if adc_range_a is not None:
            self._check_adc_ranges({adc_range_a})
        with np.errstate(over="ignore"):      # a value beyond float32 becomes inf, refused just below
            v = np.asarray(voltages_v, dtype=np.float32)
        single = v.ndim == 1
        if single:
            v = v[None, :]
        if v.ndim != 2 or v.shape[1] != self._identity.rows:
            raise LimitViolation(self._name, "mvm",
                                 f"voltages must have shape (batch, {self._identity.rows}), got {np.shape(voltages_v)}")
        limit = self._limits.max_read_voltage_v
        # max/min rather than abs().max(): no temporary, and a NaN makes the comparison fail.
        if v.size and not (v.max() <= limit and v.min() >= -limit):
            raise LimitViolation(self._name, "mvm",
                                 f"input voltage beyond max_read_voltage_v {limit:g} V (or not finite)")
        self.transactions["mvm"] += 1
        out = self._guarded("mvm", self._mvm, v, adc_range_a)
        return out[0] if single else out

    def mvm_stack(self, rows, cols, voltages_v, *, adc_range_a=None) -> np.ndarray:
        """``P`` MVMs in sequence, each driving only its own rows (every other row at 0 V) and reading only
        its own columns: ``rows`` (P, K) and ``cols`` (P, C) indices, ``voltages_v`` (P, batch, K) ->
        currents (P, batch, C). The same as P calls of :meth:`mvm`, and counted as P transactions;
        ``adc_range_a`` is None or one declared range (or None) per MVM."""
        self._require_open("mvm")
        rows = np.asarray(rows, dtype=np.intp)
        cols = np.asarray(cols, dtype=np.intp)
        with np.errstate(over="ignore"):
            v = np.ascontiguousarray(voltages_v, dtype=np.float32)
        if rows.ndim != 2 or cols.ndim != 2 or v.ndim != 3 or v.shape[0] != rows.shape[0] \
                or cols.shape[0] != rows.shape[0] or v.shape[2] != rows.shape[1]:
            raise LimitViolation(self._name, "mvm", f"a stack of MVMs needs rows (P, K), cols (P, C) and voltages "
                                                    f"(P, batch, K); got {rows.shape}, {cols.shape}, {v.shape}")
        self._check_layout(rows, cols)
        ranges = [None] * len(rows) if adc_range_a is None else list(adc_range_a)
        if len(ranges) != len(rows):
            raise LimitViolation(self._name, "mvm", f"{len(ranges)} ADC ranges for {len(rows)} MVMs")
        self._check_adc_ranges(set(ranges) - {None})
        limit = self._limits.max_read_voltage_v
        if v.size and not (v.max() <= limit and v.min() >= -limit):
            raise LimitViolation(self._name, "mvm",
                                 f"input voltage beyond max_read_voltage_v {limit:g} V (or not finite)")
        self.transactions["mvm"] += len(rows)
        if not len(rows):
            return np.zeros((0, v.shape[1], cols.shape[1]), np.float32)
        return self._guarded("mvm", self._mvm_stack, rows, cols, v, ranges)

    # ------------------------------------------------------ backend interface
    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...

    @abstractmethod
    def _read(self, rows: np.ndarray, cols: np.ndarray, voltage_v: float) -> np.ndarray: ...

    @abstractmethod
    def _pulse(self, rows: np.ndarray, cols: np.ndarray, amplitude_v: np.ndarray,
               width_s: np.ndarray, compliance_a: float) -> None: ...

    @abstractmethod
    def _mvm(self, voltages_v: np.ndarray, adc_range_a: float | None = None) -> np.ndarray:
        """``adc_range_a`` is only ever one of the declared ``adc_ranges_a``."""

    def _mvm_stack(self, rows: np.ndarray, cols: np.ndarray, voltages_v: np.ndarray,
                   adc_ranges: list) -> np.ndarray:
        """One whole-array MVM per part; a backend that can evaluate several parts at once overrides this."""
        out = np.empty((len(rows), voltages_v.shape[1], cols.shape[1]), np.float32)
        for p in range(len(rows)):
            full = np.zeros((voltages_v.shape[1], self._identity.rows), np.float32)
            full[:, rows[p]] = voltages_v[p]
            out[p] = self._mvm(full, adc_ranges[p])[:, cols[p]]
        return out

    # ----------------------------------------------------------------- helpers
    @property
    def _name(self) -> str:
        return self._identity.instrument_id

    def _require_open(self, command: str) -> None:
        if not self._is_open:
            raise NotConnected(self._name, command, "the instrument is not open (use it as a context manager)")

    def _guarded(self, command: str, fn, *args):
        try:
            return fn(*args)
        except CrossbarError:
            raise
        except (OSError, EOFError) as exc:
            raise InstrumentIOError(self._name, command, f"{type(exc).__name__}: {exc}") from exc

    def _check_layout(self, rows: np.ndarray, cols: np.ndarray) -> None:
        """A stack's indices inside the array, and no row twice in one MVM. A layer sends the same layout
        every step, so a layout that passed is kept (a copy) under the ids of the arrays that carried it,
        and the same arrays are let through when their content still equals it, compared in full: a
        modified array, or a new one at a reused id, is checked again."""
        key = (id(rows), id(cols))
        seen = self._layouts.get(key)
        if seen is not None and np.array_equal(seen[0], rows) and np.array_equal(seen[1], cols):
            return
        self._check_range(rows, self._identity.rows, "mvm", "rows")
        self._check_range(cols, self._identity.cols, "mvm", "cols")
        if rows.shape[1] > 1 and (np.diff(np.sort(rows, axis=1), axis=1) == 0).any():
            raise LimitViolation(self._name, "mvm", "a row appears twice in one MVM of a stack")
        if len(self._layouts) >= 1024:
            self._layouts.clear()
        self._layouts[key] = (rows.copy(), cols.copy())

    def _check_adc_ranges(self, ranges: set) -> None:
        """Every range of ``ranges`` is one of the instrument's declared ADC full scales."""
        offered = self.converters().adc_ranges_a or ()
        for r in ranges.difference(offered):            # those given exactly as declared pass at once
            if not any(np.isclose(r, o, rtol=1e-9, atol=0) for o in offered):
                names = ", ".join(f"{o:g}" for o in offered) or "none (fixed range)"
                raise CrossbarError(self._name, "mvm", f"ADC range {r:g} A is not one the instrument offers: {names}")

    def _check_read_voltage(self, voltage_v: float, command: str) -> None:
        limit = self._limits.max_read_voltage_v
        if not 0 < voltage_v <= limit:
            raise LimitViolation(self._name, command,
                                 f"read voltage {voltage_v:g} V outside (0, {limit:g}] V (max_read_voltage_v)")

    def _check_range(self, idx: np.ndarray, size: int, command: str, what: str) -> None:
        if idx.size and (idx.min() < 0 or idx.max() >= size):
            raise LimitViolation(self._name, command, f"{what} index outside 0..{size - 1}")

    def _index(self, sel: Index, size: int, command: str, what: str) -> np.ndarray:
        if sel is None:
            return np.arange(size)
        if isinstance(sel, slice):
            return np.arange(size)[sel]
        idx = np.asarray(sel, dtype=np.intp).ravel()
        self._check_range(idx, size, command, what)
        return idx

    @staticmethod
    def _repeats_a_cell(flat: np.ndarray) -> bool:
        """Whether a flat cell index occurs twice, in time linear in the number of cells.

        np.unique hashes, which is several times slower than the pulse itself on a million cells;
        requests built with np.nonzero come sorted, so a strictly increasing check settles most of them
        and a sort settles the rest.
        """
        if flat.size < 2 or bool(np.all(flat[1:] > flat[:-1])):
            return False
        ordered = np.sort(flat)
        return bool(np.any(ordered[1:] == ordered[:-1]))

    def _per_cell(self, value, n: int, what: str) -> np.ndarray:
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 0:
            arr = np.full(n, float(arr))
        arr = arr.ravel()
        if arr.size != n:
            raise LimitViolation(self._name, "pulse", f"{what} has {arr.size} values for {n} cells")
        if n and not np.all(np.isfinite(arr)):
            raise LimitViolation(self._name, "pulse", f"{what} is not finite")
        return arr
