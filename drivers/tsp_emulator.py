"""An emulated SMU bench: a Keithley 2600B speaking TSP, with the switch matrix on TSP-Link node 2,
in front of the software crossbar (contract: visa_bench.md).

It understands the part of TSP the VISA bench driver sends: ``*IDN?``, ``reset()``, assignments to
``smua``/``smub`` ``.source.*`` and ``.measure.*`` and ``node[2].channel.connectrule``, ``print(...)``
of a few expressions, ``errorqueue``, ``node[2].channel.*`` relay commands and ``loadscript`` /
``endscript``.
An uploaded script must be the driver's own (tsp_script.py); running it makes the emulator carry out
its ``hil`` functions natively, with the same checks and replies, over a :class:`SoftwareCrossbar`.
As on the real instrument, a chunk that does not parse or names something unknown is not answered
and leaves an entry in the error queue.

Every chunk is logged (JSON lines) before it is checked, with the largest voltage, the compliance and
the pulse widths it asks for, and every time the output goes on, with the current limit then in
force; so a test can assert that nothing beyond the limits ever reached the instrument.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import socket
import socketserver
import threading
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CrossbarError, LimitViolation
from .faults import Faults, FaultyServer
from .mock import SoftwareCrossbar
from .tsp_script import HIL_SCRIPT

_MEMORY = 64
SYNTAX_ERROR, RUNTIME_ERROR = -285, -286

CHANNELS = ("smua", "smub")          # SMU A drives word lines, SMU B holds and measures a bit line
# TSP's numeric constants (the emulator's own values: nothing depends on the real instrument's numbers).
_CONSTANTS = {
    **{f"{ch}.{name}": value for ch in CHANNELS for name, value in (
        ("OUTPUT_OFF", 0), ("OUTPUT_ON", 1), ("OUTPUT_DCAMPS", 0), ("OUTPUT_DCVOLTS", 1), ("OUTPUT_NORMAL", 0),
        ("OUTPUT_HIGH_Z", 1), ("OUTPUT_ZERO", 2), ("AUTORANGE_OFF", 0), ("AUTORANGE_ON", 1), ("ENABLE", 1),
        ("DISABLE", 0))},
    "node[2].channel.BREAK_BEFORE_MAKE": 1, "node[2].channel.MAKE_BEFORE_BREAK": 2, "node[2].channel.OFF": 0,
}
# What reset() restores; None: the factory value, which the host has not chosen.
_SMU_DEFAULTS = {
    **{f"{ch}.{name}": value for ch in CHANNELS for name, value in (
        ("source.func", 1), ("source.levelv", 0.0), ("source.limiti", None), ("source.rangev", None),
        ("source.autorangev", 1), ("source.offmode", 0), ("source.offfunc", 1), ("source.offlimiti", None),
        ("source.output", 0), ("measure.nplc", 1.0), ("measure.rangei", None), ("measure.autorangei", 1),
        ("measure.autozero", 1))},
    "node[2].channel.connectrule": 1,
}
_CURRENT_LIMITS = tuple(f"{ch}.source.{name}" for ch in CHANNELS for name in ("limiti", "offlimiti"))

_NAME = r"[A-Za-z_][\w.]*(?:\[\d+\][\w.]*)*"
_CALL = re.compile(rf"^({_NAME})\s*\((.*)\)$", re.S)
_ASSIGN = re.compile(rf"^({_NAME})\s*=\s*(\S.*)$", re.S)
_NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")
_NUMERIC_TABLE = re.compile(r"^[\s\d.eE+\-,]*$")
_SEPARATORS = re.compile(r"[|\t\r\n]")
_RELAY = re.compile(r"^(?:allslots|slot\d|\d[A-Z]\d\d(?::\d[A-Z]\d\d)?)$")     # "1A05", "1A01:1A04"


class _LuaError(Exception):
    def __init__(self, code: int, message: str):
        self.code = code
        super().__init__(message)


def _syntax(message: str) -> _LuaError:
    return _LuaError(SYNTAX_ERROR, f"TSP Syntax error at line 1: {message}")


def _runtime(message: str) -> _LuaError:
    return _LuaError(RUNTIME_ERROR, f"TSP Runtime error at line 1: {message}")


def frame(call_id: int, status: str, payload: str) -> str:
    """A reply line as the hil script prints it (without the newline)."""
    body = f"{call_id}\t{status}\t{payload}"
    return f"{body}\t{zlib.adler32(body.encode('ascii'))}"


def _num(x) -> str:
    """A number as the script prints it (``%.17g``), "-" for none."""
    if x is None:
        return "-"
    return str(x) if isinstance(x, int) else f"{float(x):.17g}"


@dataclass(frozen=True)
class BenchProfile:
    """The bench description the lab keeps on the instrument (the Lua table ``hilbench``)."""

    array_id: str
    rows: int
    cols: int
    max_read_v: float
    max_write_v: float
    max_compliance_a: float
    min_width_s: float
    max_width_s: float
    cell_time_s: float = 0.0
    dac_bits: int | None = None
    dac_range_v: float | None = None
    adc_bits: int | None = None
    adc_range_a: float | None = None
    adc_ranges_a: tuple[float, ...] | None = None

    @classmethod
    def of(cls, xbar: SoftwareCrossbar) -> "BenchProfile":
        """The profile of a bench wired to ``xbar``: its shape, its limits, its converters."""
        lim, conv = xbar.limits, xbar.converters()
        return cls(xbar.identity.array_id, *xbar.shape, lim.max_read_voltage_v, lim.max_write_voltage_v,
                   lim.compliance_current_a, lim.min_pulse_width_s, lim.max_pulse_width_s, 0.0, conv.dac_bits,
                   conv.dac_range_v, conv.adc_bits, conv.adc_range_a, conv.adc_ranges_a)

    def payload(self) -> str:
        fields = [self.array_id, str(self.rows), str(self.cols), *map(_num, (
            self.max_read_v, self.max_write_v, self.max_compliance_a, self.min_width_s, self.max_width_s,
            self.cell_time_s, self.dac_bits, self.dac_range_v, self.adc_bits, self.adc_range_a))]
        return " ".join(fields + [_num(r) for r in self.adc_ranges_a or ()])


class TspInstrument:
    """The instrument's command interpreter: one chunk (line) in, the lines it prints out."""

    manufacturer = "HIL Emulator"
    model = "2602B-EMU"
    firmware = "1.0"

    def __init__(self, xbar: SoftwareCrossbar, *, log: Path | None = None, profile: BenchProfile | None = None):
        self.xbar = xbar.open()
        self.profile = profile or BenchProfile.of(xbar)
        self.serial = f"EMU-{self.profile.array_id}"
        self.smu = dict(_SMU_DEFAULTS)
        self.closed_channels = ""
        self.errors: deque[tuple[int, str]] = deque()
        self.scripts: dict[str, str] = {}
        self.installed = False          # the hil functions exist (the driver's script has run)
        self.commands = 0               # chunks executed (a whole loadscript block is one)
        self.executed: dict[str, int] = {}   # hil calls carried out (answered OK), resends not counted
        self.repeats = 0                # resends answered from memory
        self.hot_switches = 0           # relays moved with the source live (must stay 0)
        self._memory: OrderedDict[int, str] = OrderedDict()
        self._loading: tuple[str, list[str]] | None = None
        self._log = open(log, "a", encoding="utf-8") if log else None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._log:
            self._log.close()
            self._log = None

    # -------------------------------------------------------------- chunks
    def handle(self, chunk: str) -> list[str]:
        """The lines the instrument prints in answer to one chunk (usually none or one)."""
        with self._lock:
            if self._loading is not None:
                return self._collect(chunk)
            text = chunk.strip()
            if not text:
                return []
            self.commands += 1
            try:
                return self._execute(text)
            except _LuaError as exc:
                self.errors.append((exc.code, str(exc)))
                return []

    def _collect(self, line: str) -> list[str]:
        name, lines = self._loading
        if line.strip() == "endscript":
            self.scripts[name] = "\n".join(lines)
            self._loading = None
            self._record("loadscript", name=name, lines=len(lines))
        else:
            lines.append(line.rstrip("\r\n"))
        return []

    def _execute(self, text: str) -> list[str]:
        if text.startswith("*"):
            return self._common(text)
        if text.startswith("loadscript"):
            name = text[len("loadscript"):].strip()
            if not re.fullmatch(r"[A-Za-z_]\w*", name):
                raise _syntax(f"bad script name near '{name}'")
            self._loading = (name, [])
            return []
        call = _CALL.match(text)
        if call:
            return self._call(call.group(1), call.group(2))
        assign = _ASSIGN.match(text)
        if assign:
            self._assign(assign.group(1), assign.group(2).strip())
            return []
        raise _syntax(f"unexpected symbol near '{text[:20]}'")

    def _common(self, text: str) -> list[str]:
        self._record(text)
        if text == "*IDN?":
            return [f"{self.manufacturer}, Model {self.model}, {self.serial}, {self.firmware}"]
        if text == "*RST":
            self._reset()
            return []
        if text == "*CLS":
            self.errors.clear()
            return []
        if text == "*OPC?":
            return ["1"]
        raise _syntax(f"unexpected symbol near '{text[:20]}'")

    # ----------------------------------------------------------- statements
    def _assign(self, target: str, value_text: str) -> None:
        try:
            value = self._value(value_text)
        except _LuaError:
            self._record(target, value=value_text[:80])
            raise
        entry = {"value": value if isinstance(value, (int, float, str)) or value is None else str(value)}
        if target in _CURRENT_LIMITS:
            entry["compliance_a"] = value
        if target.endswith(".source.levelv"):
            entry["max_voltage_v"] = abs(value) if isinstance(value, (int, float)) else None
        self._record(target, **entry)
        if target not in self.smu:
            raise _runtime(f"attempt to set an unknown attribute '{target}'")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
            raise _runtime(f"{target} needs a number")
        self.smu[target] = value
        if target.endswith(".source.output") and value == 1:
            self._output_on(target.split(".")[0], by=None)

    def _call(self, name: str, args_text: str) -> list[str]:
        if name.startswith("hil."):
            return self._hil(name[4:], args_text)
        self._record(name, args=args_text[:200])
        if name == "print":
            values: list = []
            args = _split_args(args_text)
            for k, arg in enumerate(args):
                got = self._expression(arg)
                values.extend(got if k == len(args) - 1 else got[:1])
            return ["\t".join(_lua_str(v) for v in values)]
        args = [self._value(a) for a in _split_args(args_text)]
        if name in ("reset", "smua.reset"):
            self._reset()
        elif name in ("errorqueue.clear",):
            self.errors.clear()
        elif name in ("waitcomplete",):
            pass
        elif name == "delay":
            self._wait(args)
        elif name in ("node[2].channel.open", "node[2].channel.close", "node[2].channel.exclusiveclose",
                      "node[2].channel.reset"):
            self._relays(name.rsplit(".", 1)[1], args)
        elif name.removesuffix(".run") in self.scripts:
            self._run_script(name.removesuffix(".run"))
        else:
            raise _runtime(f"attempt to call a nil value ('{name}')")
        return []

    def _reset(self) -> None:
        # reset() restores the instrument's settings; user scripts and globals survive it
        self.smu = dict(_SMU_DEFAULTS)
        self.closed_channels = ""

    def _wait(self, args) -> None:
        if len(args) != 1 or not isinstance(args[0], float) or not args[0] >= 0:
            raise _runtime("delay needs a non-negative time")
        self.xbar.wait(args[0])

    def _relays(self, op: str, args) -> None:
        if len(args) != 1 or not isinstance(args[0], str):
            raise _runtime(f"channel.{op} needs one channel list")
        items = [s.strip() for s in args[0].split(",") if s.strip()]
        if not all(_RELAY.match(s) for s in items):
            raise _runtime(f"bad channel list '{args[0][:40]}'")
        if op in ("close", "exclusiveclose") and any(
                self.smu[f"{ch}.source.output"] == 1 and self.smu[f"{ch}.source.levelv"] != 0 for ch in CHANNELS):
            self.hot_switches += 1
        if op in ("open", "reset") and (not items or "allslots" in items):
            self.closed_channels = ""
        elif op == "exclusiveclose":
            self.closed_channels = ",".join(items)
        elif op == "close":
            self.closed_channels = ",".join([c for c in self.closed_channels.split(",") if c] + items)
        elif op == "open":
            self.closed_channels = ",".join(c for c in self.closed_channels.split(",") if c and c not in items)

    def _run_script(self, name: str) -> None:
        if _normalised(self.scripts[name]) != _normalised(HIL_SCRIPT):
            raise _runtime(f"the emulator runs only the hil script of drivers/tsp_script.py, not '{name}'")
        self.installed = True
        self._memory.clear()

    # ----------------------------------------------------------- expressions
    def _value(self, text: str):
        """One argument or right-hand side: a literal, a numeric table or a readable name."""
        text = text.strip()
        if _NUMBER.match(text):
            return float(text)
        if text.startswith('"') and text.endswith('"') and len(text) >= 2:
            return text[1:-1]
        if text.startswith("{") and text.endswith("}"):
            body = text[1:-1]
            if not _NUMERIC_TABLE.match(body):
                raise _syntax("the emulator takes numeric tables only")
            try:
                return np.array(body.split(","), dtype=np.float64) if body.strip() else np.empty(0)
            except ValueError:
                raise _syntax("malformed table") from None
        if text in ("nil", "true", "false"):
            return {"nil": None, "true": True, "false": False}[text]
        return self._expression(text)[0]

    def _expression(self, text: str) -> list:
        """The values of an expression in print(): literals, attributes, a few query functions."""
        text = text.strip()
        if _NUMBER.match(text) or text[:1] in ('"', "{") or text in ("nil", "true", "false"):
            return [self._value(text)]
        if text in _CONSTANTS:
            return [_CONSTANTS[text]]
        if text in self.smu:
            return [self.smu[text]]
        if text == "errorqueue.count":
            return [len(self.errors)]
        if text == "errorqueue.next()":
            code, message = self.errors.popleft() if self.errors else (0, "Queue Is Empty")
            return [code, message, 20 if code else 0, 1 if code else 0]
        if text == "timer.measure.t()":
            return [self.xbar.now()]
        if text == 'node[2].channel.getclose("allslots")':
            return [self.closed_channels or None]
        if text in ("localnode.model", "localnode.serialno", "localnode.revision"):
            return [{"model": self.model, "serialno": self.serial, "revision": self.firmware}[text.split(".")[1]]]
        if text.startswith("hilbench."):
            field = text.split(".", 1)[1]
            if field in BenchProfile.__dataclass_fields__ and field != "adc_ranges_a":
                return [getattr(self.profile, field)]
        if re.fullmatch(_NAME + r"(?:\(.*\))?", text):
            raise _runtime(f"attempt to index a nil value ('{text[:40]}')")
        raise _syntax(f"unexpected symbol near '{text[:20]}'")

    # ------------------------------------------------------------ the script
    def _hil(self, fn: str, args_text: str) -> list[str]:
        if not self.installed:
            raise _runtime("attempt to index global 'hil' (a nil value)")
        handler = getattr(self, "_hil_" + fn, None)
        if handler is None:
            raise _runtime(f"attempt to call field '{fn}' (a nil value)")
        try:
            args = [self._value(a) for a in _split_args(args_text)]
        except _LuaError:
            self._record("hil." + fn, unreadable=args_text[:200])
            raise
        if fn == "idle":
            self._record("hil.idle")
            self._idle()
            return []
        if not args or not isinstance(args[0], float) or args[0] != int(args[0]):
            raise _runtime(f"hil.{fn}: bad call id")
        call_id = int(args[0])
        repeat = call_id in self._memory
        self._record("hil." + fn, id=call_id, repeat=repeat, **_describe(fn, args[1:]))
        if repeat:
            self.repeats += 1
            return [self._memory[call_id]]
        try:
            status, payload = handler(*args[1:])
        except LimitViolation as exc:           # the crossbar's own limits, should a profile be looser
            status, payload = "ERR", f"LIMIT {exc.cause}"
        except CrossbarError as exc:
            status, payload = "ERR", f"ARG {exc.cause}"
        except (TypeError, ValueError, IndexError, AttributeError):
            raise _runtime(f"bad argument to hil.{fn}") from None
        if status == "OK":
            self.executed[fn] = self.executed.get(fn, 0) + 1
        line = frame(call_id, status, payload)
        self._memory[call_id] = line
        while len(self._memory) > _MEMORY:
            self._memory.popitem(last=False)
        return [line]

    def _arm(self, by: str, sense: bool) -> None:
        for ch in CHANNELS[:2 if sense else 1]:
            self.smu[f"{ch}.source.levelv"] = 0.0
            self.smu[f"{ch}.source.output"] = 1
            self._output_on(ch, by)

    def _idle(self) -> None:
        for ch in CHANNELS:
            self.smu[f"{ch}.source.levelv"] = 0.0
        self.closed_channels = ""
        for ch in CHANNELS:
            self.smu[f"{ch}.source.output"] = 0

    def _output_on(self, channel: str, by: str | None) -> None:
        self._record("output on", channel=channel, by=by, compliance_a=self.smu[f"{channel}.source.limiti"])

    def _hil_profile(self):
        return "OK", self.profile.payload()

    def _hil_errors(self):
        items = [str(len(self.errors))]
        while self.errors:
            code, message = self.errors.popleft()
            items.append(f"{code} {_SEPARATORS.sub(' ', message)}")
        return "OK", "|".join(items)

    def _hil_time(self):
        return "OK", _num(self.xbar.now())

    def _hil_wait(self, seconds):
        self._wait([seconds])
        return "OK", ""

    def _session_limits_ok(self) -> bool:
        limits = [self.smu[f"{ch}.source.limiti"] for ch in CHANNELS]
        return all(x is not None and x <= self.profile.max_compliance_a for x in limits)

    def _hil_read(self, v, rows, cols):
        p = self.profile
        if not 0 < v <= p.max_read_v:
            return "ERR", f"LIMIT read voltage {_num(v)} V"
        if not (_inside(rows, p.rows) and _inside(cols, p.cols)):
            return "ERR", "LIMIT index outside the array"
        if not self._session_limits_ok():
            return "ERR", "LIMIT current limit too high"
        self._arm("hil.read", sense=True)
        try:
            g = self.xbar.read(rows.astype(np.intp), cols.astype(np.intp), voltage_v=v)
        finally:
            self._idle()
        return "OK", singles(g)

    def _hil_pulse(self, compliance, rows, cols, amps, widths):
        p = self.profile
        n = len(rows)
        if len(cols) != n:
            return "ERR", "ARG rows and cols differ in length"
        if not 0 < compliance <= p.max_compliance_a:
            return "ERR", f"LIMIT compliance {_num(compliance)} A"
        if not (_inside(rows, p.rows) and _inside(cols, p.cols)):
            return "ERR", "LIMIT index outside the array"
        a, w = _per_cell(amps, n), _per_cell(widths, n)
        if a is None or w is None:
            return "ERR", "ARG amplitude or width missing"
        if n and not np.abs(a).max() <= p.max_write_v:
            return "ERR", f"LIMIT amplitude {_num(np.abs(a).max())} V"
        if n and not (w.min() >= p.min_width_s and w.max() <= p.max_width_s):
            return "ERR", "LIMIT width outside the profile's range"
        if not self._session_limits_ok():
            return "ERR", "LIMIT current limit too high"
        session_limit = self.smu["smua.source.limiti"]
        self.smu["smua.source.limiti"] = compliance
        self._record("smua.source.limiti", value=compliance, compliance_a=compliance, by="hil.pulse")
        self._arm("hil.pulse", sense=True)      # SMU B biases the unselected lines
        try:
            if n:
                self.xbar.pulse(rows.astype(np.intp), cols.astype(np.intp), a, w, compliance_a=compliance)
        finally:
            self._idle()
            self.smu["smua.source.limiti"] = session_limit
        return "OK", str(n)

    def _hil_mvm(self, batch, adc_range, volts):
        p = self.profile
        v = unsingles(volts)
        if v is None:
            return "ERR", "ARG voltages are not base64 singles"
        if batch != int(batch) or batch < 1 or len(v) != int(batch) * p.rows:
            return "ERR", "ARG voltages do not fill the batch"
        if len(v) and not np.abs(v).max() <= p.max_read_v:
            return "ERR", f"LIMIT input {_num(np.abs(v).max())} V"
        if not self._session_limits_ok():
            return "ERR", "LIMIT current limit too high"
        self._arm("hil.mvm", sense=True)
        try:
            out = self.xbar.mvm(v.astype(np.float32).reshape(int(batch), p.rows), adc_range_a=adc_range)
        finally:
            self._idle()
        return "OK", singles(out)

    # --------------------------------------------------------------- logging
    def _record(self, command: str, **fields) -> None:
        if self._log:
            self._log.write(json.dumps({"t": self.xbar.now(), "command": command, **fields}) + "\n")
            self._log.flush()


def singles(values) -> str:
    """Base64 of little-endian IEEE 754 singles: the script's bulk-data format."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def unsingles(text) -> np.ndarray | None:
    """The float32 values of a :func:`singles` text; None if it is not one."""
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) % 4:
        return None
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def _normalised(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _lua_str(v) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return f"{v:.14g}"
    return str(v)


def _split_args(text: str) -> list[str]:
    """Top-level comma-separated arguments; tables and strings are skipped over whole."""
    args, i, n = [], 0, len(text)
    while i < n:
        while i < n and text[i] == " ":
            i += 1
        if i >= n:
            raise _syntax("unexpected symbol near ','") if args else _syntax("empty argument")
        if text[i] == "{":
            j = text.find("}", i) + 1
        elif text[i] == '"':
            j = text.find('"', i + 1) + 1
        else:
            j, depth = i, 0
            while j < n and (text[j] != "," or depth):
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
        if j <= i:
            raise _syntax("unfinished table or string")
        args.append(text[i:j].strip())
        i = j
        while i < n and text[i] == " ":
            i += 1
        if i < n:
            if text[i] != ",":
                raise _syntax(f"')' expected near '{text[i]}'")
            i += 1
            if i >= n:
                raise _syntax("unexpected symbol near ')'")
    return args


def _inside(idx, n: int) -> bool:
    return isinstance(idx, np.ndarray) and (idx.size == 0 or (
        bool(np.all(idx == np.floor(idx))) and idx.min() >= 0 and idx.max() < n))


def _per_cell(x, n: int) -> np.ndarray | None:
    if isinstance(x, float):
        return np.full(n, x)
    if isinstance(x, np.ndarray) and x.size >= n:
        return x[:n]
    return None


def _describe(fn: str, args: list) -> dict:
    """What a hil call asks of the hardware, for the log (read before anything is checked)."""
    def biggest(x):
        a = np.abs(np.asarray(x, dtype=np.float64))
        return float(a.max()) if a.size else 0.0

    try:
        if fn == "read":
            v, rows, cols = args
            return {"max_voltage_v": abs(v), "cells": int(len(rows) * len(cols))}
        if fn == "pulse":
            compliance, rows, cols, amps, widths = args
            w = np.asarray(widths, dtype=np.float64)
            return {"cells": int(len(rows)), "compliance_a": compliance, "max_voltage_v": biggest(amps),
                    "min_width_s": float(w.min()) if w.size else None,
                    "max_width_s": float(w.max()) if w.size else None}
        if fn == "mvm":
            batch, _, volts = args
            v = unsingles(volts)
            return {"batch": batch, "max_voltage_v": None if v is None else biggest(v)}
        if fn == "wait":
            return {"seconds": args[0]}
    except (TypeError, ValueError):
        return {"unreadable": True}
    return {}


class _Handler(socketserver.StreamRequestHandler):
    disable_nagle_algorithm = True          # a reply must leave at once, not wait for an ACK

    def handle(self) -> None:
        server: TspServer = self.server      # type: ignore[assignment]
        faults, inst = server.faults, server.instrument
        try:
            for raw in self.rfile:
                replies = inst.handle(raw.decode("ascii", "replace"))
                if faults.disconnect_after is not None and inst.commands > faults.disconnect_after:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                for reply in replies:
                    server.deliver(self.wfile, (reply + "\n").encode("ascii", "replace"))
        except OSError:
            return                          # the host went away


class TspServer(FaultyServer):
    """The emulated instrument on a raw TCP socket; ``resource`` is the VISA resource string for it."""

    def __init__(self, instrument: TspInstrument, port: int = 0, host: str = "127.0.0.1",
                 faults: Faults | None = None):
        super().__init__(_Handler, instrument, port, host, faults)
        self.instrument = instrument

    @property
    def resource(self) -> str:
        host, port = self.server_address[:2]
        return f"TCPIP::{host}::{port}::SOCKET"



__all__ = ["BenchProfile", "TspInstrument", "TspServer", "frame", "singles", "unsingles"]
