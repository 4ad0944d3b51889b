"""An emulated SMU bench: a Keithley 2636B speaking TSP, with the switch matrix on TSP-Link node 2,
in front of the software crossbar (contract: visa_bench.md, "The emulator").

It follows the instrument's reference manual (Series 2600B System SourceMeter Instrument Reference
Manual, TSP command reference) in what a remote client sees, so that third-party drivers work
against it unchanged:

* a message is a Lua 5.0 chunk: assignments, ``local`` and function calls, with literals, tables,
  arithmetic, ``..``, comparisons and ``and``/``or``/``not``; control structures and function
  definitions are not run (they leave an error in the queue, as anything else it cannot do);
* ``print()`` writes numbers with ``format.asciiprecision`` significant digits (default 6, so
  ``1.00000e-03``) and separates values with a tab; ``tostring()`` keeps Lua's ``%.14g``;
* nothing is printed for a chunk that fails: one that does not parse is not run (-285, "TSP Syntax
  error at line N: ..."), one that fails while running stops there (-286, "TSP Runtime error ...")
  with Lua 5.0's messages, and a setting outside the instrument's range is refused with 1101/1102
  while the chunk goes on; a client waiting for a reply times out and finds the entry in
  ``errorqueue``;
* ``*IDN?`` answers ``Keithley Instruments Inc., Model 2636B, <serial>, <firmware>``;
* ``smua``/``smub`` keep the 2636B's settings (defaults, ranges, output-off modes) and measure
  (``i``, ``v``, ``r``, ``p``, ``iv``) a resistive load on each channel's terminals (``load_ohms``): the
  source holds the limit in force whatever level is commanded, as the instrument's compliance does.

The driver's own script (tsp_script.py), when run, is carried out natively: its ``hil`` functions act
on a :class:`SoftwareCrossbar` with the same checks and replies. Direct source and measure commands
see the load resistor, not the array. Every command is logged (JSON lines) before it is checked, with
the largest voltage, the compliance and the pulse widths it asks for, and every time the output goes
on, with the limit then in force; so a test can assert that nothing beyond the limits ever reached the
instrument.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import socket
import socketserver
import threading
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from ..errors import CrossbarError, LimitViolation
from ..mock import SoftwareCrossbar
from ..tsp_script import HIL_SCRIPT
from .faults import Faults, FaultyServer

_MEMORY = 64
SYNTAX_ERROR, RUNTIME_ERROR = -285, -286
PARAMETER_TOO_BIG, PARAMETER_TOO_SMALL = 1101, 1102
_RECOVERABLE = 20                    # the errorqueue severity of "improper use of the instrument"
OVERFLOW = 9.91e37                   # what a reading beyond its fixed range reads as
DEFAULT_LOAD_OHMS = 10e3

CHANNELS = ("smua", "smub")          # SMU A drives word lines, SMU B holds and measures a bit line
OUTPUT_DCAMPS, OUTPUT_DCVOLTS = 0, 1
OUTPUT_OFF, OUTPUT_ON, OUTPUT_HIGH_Z = 0, 1, 2
_SMU_CONSTANTS = {
    "OUTPUT_DCAMPS": 0, "OUTPUT_DCVOLTS": 1, "OUTPUT_OFF": 0, "OUTPUT_ON": 1, "OUTPUT_HIGH_Z": 2,
    "OUTPUT_NORMAL": 0, "OUTPUT_ZERO": 1, "AUTORANGE_OFF": 0, "AUTORANGE_ON": 1, "AUTORANGE_FOLLOW_LIMIT": 2,
    "AUTOZERO_OFF": 0, "AUTOZERO_ONCE": 1, "AUTOZERO_AUTO": 2, "SENSE_LOCAL": 0, "SENSE_REMOTE": 1,
    "SENSE_CALA": 3, "ENABLE": 1, "DISABLE": 0,
}
# The 2636B's ranges; a source range reaches 101 % of its value, a reading 102 % (beyond: OVERFLOW).
V_RANGES = (200e-3, 2.0, 20.0, 200.0)
I_SOURCE_RANGES = (1e-9, 10e-9, 100e-9, 1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0, 1.5)
I_MEASURE_RANGES = (100e-12, *I_SOURCE_RANGES)       # 100 pA is a measurement range only
SOURCE_FULL_SCALE, MEASURE_FULL_SCALE = 1.01, 1.02


@dataclass(frozen=True)
class _Setting:
    """A channel attribute: its reset value and what the instrument accepts (magnitudes outside
    ``low``..``high`` are refused with "Parameter too small/big"; ``choices``: the only values)."""

    default: float
    low: float | None = None
    high: float | None = None
    choices: tuple[float, ...] | None = None


_SETTINGS = {
    "source.func": _Setting(OUTPUT_DCVOLTS, choices=(0, 1)),
    "source.levelv": _Setting(0.0, high=V_RANGES[-1] * SOURCE_FULL_SCALE),
    "source.leveli": _Setting(0.0, high=I_SOURCE_RANGES[-1] * SOURCE_FULL_SCALE),
    "source.limitv": _Setting(20.0, low=20e-3, high=V_RANGES[-1]),
    "source.limiti": _Setting(100e-3, low=100e-12, high=I_SOURCE_RANGES[-1]),
    "source.rangev": _Setting(V_RANGES[0], high=V_RANGES[-1]),
    "source.rangei": _Setting(I_SOURCE_RANGES[0], high=I_SOURCE_RANGES[-1]),
    "source.autorangev": _Setting(1, choices=(0, 1)),
    "source.autorangei": _Setting(1, choices=(0, 1)),
    "source.offmode": _Setting(0, choices=(0, 1, 2)),
    "source.offfunc": _Setting(OUTPUT_DCVOLTS, choices=(0, 1)),
    "source.offlimiti": _Setting(1e-3, low=100e-12, high=I_SOURCE_RANGES[-1]),
    "source.offlimitv": _Setting(40.0, low=20e-3, high=V_RANGES[-1]),
    "source.output": _Setting(OUTPUT_OFF, choices=(0, 1, 2)),
    "measure.nplc": _Setting(1.0, low=0.001, high=25.0),
    "measure.rangev": _Setting(V_RANGES[0], high=V_RANGES[-1]),
    "measure.rangei": _Setting(I_MEASURE_RANGES[0], high=I_MEASURE_RANGES[-1]),
    "measure.autorangev": _Setting(1, choices=(0, 1, 2)),
    "measure.autorangei": _Setting(1, choices=(0, 1, 2)),
    "measure.autozero": _Setting(2, choices=(0, 1, 2)),
    "sense": _Setting(0, choices=(0, 1, 3)),
}
_RANGES = {"source.rangev": V_RANGES, "source.rangei": I_SOURCE_RANGES, "measure.rangev": V_RANGES,
           "measure.rangei": I_MEASURE_RANGES}
_AUTORANGE = {name: name.replace("range", "autorange") for name in _RANGES}
_RANGE_OF = {auto: name for name, auto in _AUTORANGE.items()}
_MATRIX_RULE = "node[2].channel.connectrule"
_HIL_FUNCTIONS = ("profile", "errors", "time", "wait", "read", "pulse", "mvm", "idle")
_RELAY = re.compile(r"^(?:allslots|slot\d|\d[A-Z]\d\d(?::\d[A-Z]\d\d)?)$")     # "1A05", "1A01:1A04"
_SEPARATORS = re.compile(r"[|\t\r\n]")


def _defaults() -> dict[str, float]:
    values = {f"{ch}.{name}": float(s.default) for ch in CHANNELS for name, s in _SETTINGS.items()}
    values[_MATRIX_RULE] = 1.0                                  # BREAK_BEFORE_MAKE
    return values


# ------------------------------------------------------------------------------------- errors
class _LuaError(Exception):
    """A chunk the instrument rejects, with the code and message ``errorqueue.next()`` gives."""

    def __init__(self, code: int, message: str):
        self.code = code
        super().__init__(message)


class _Fault(Exception):
    """A Lua run-time error, raised before the line it happened on is known."""


def _syntax(line: int, message: str) -> _LuaError:
    return _LuaError(SYNTAX_ERROR, f"TSP Syntax error at line {line}: {message}")


# ------------------------------------------------------------------------------------- values
class LuaFunction:
    """A function of the instrument's run-time: ``body(args) -> results`` (a list, a value or None).
    ``logged``: an instrument action, written to the command log when called."""

    __slots__ = ("name", "body", "logged")

    def __init__(self, name: str, body: Callable[[list], Any], logged: bool = False):
        self.name, self.body, self.logged = name, body, logged


class LuaTable:
    """A plain Lua table (user tables, ``hil``, ``hilbench``, ``node``)."""

    def __init__(self, fields: dict | None = None):
        self.fields = dict(fields or {})

    def get(self, key):
        return self.fields.get(key)

    def set(self, key, value) -> None:
        if value is None:
            self.fields.pop(key, None)
        else:
            self.fields[key] = value


@dataclass
class Attr:
    """An instrument attribute: read through ``get``; written through ``set`` (None: read-only)."""

    get: Callable[[], Any]
    set: Callable[[Any], None] | None = None


class TspObject:
    """An instrument table (``smua``, ``smua.source``, ``errorqueue``, ...): attributes, functions,
    constants and sub-tables. Other keys read as nil and cannot be set, as the firmware's tables
    accept only their own attributes."""

    def __init__(self, path: str, members: dict, call: LuaFunction | None = None):
        self.path, self.members, self.call = path, members, call

    def get(self, key):
        member = self.members.get(key) if isinstance(key, str) else None
        return member.get() if isinstance(member, Attr) else member

    def set(self, key, value) -> None:
        member = self.members.get(key) if isinstance(key, str) else None
        if isinstance(member, Attr) and member.set is not None:
            member.set(value)
        elif member is None:
            raise _Fault(f"attempt to set unknown attribute `{key}' of {self.path}")
        else:
            raise _Fault(f"attempt to set read-only `{key}' of {self.path}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _type_name(v) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "boolean"
    if _is_number(v):
        return "number"
    if isinstance(v, str):
        return "string"
    return "function" if isinstance(v, LuaFunction) else "table"


def _about(desc: str | None, v) -> str:
    """How Lua 5.0 names an operand in an error: "global `x' (a nil value)" or "a nil value"."""
    return f"{desc} (a {_type_name(v)} value)" if desc else f"a {_type_name(v)} value"


def _tonumber(v) -> float | None:
    if _is_number(v):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def _lua_tostring(v) -> str:
    """Lua's own ``tostring``: numbers as ``%.14g`` (print() formats numbers differently)."""
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if _is_number(v):
        return f"{float(v):.14g}"
    if isinstance(v, str):
        return v
    kind = "function" if isinstance(v, LuaFunction) else "table"
    return f"{kind}: 0x{id(v) & 0xFFFFFFFF:08x}"


def _loggable(v):
    if v is None or isinstance(v, bool) or _is_number(v):
        return float(v) if _is_number(v) else v
    if isinstance(v, str):
        return v[:80]
    return f"table of {len(v)}" if isinstance(v, np.ndarray) else _type_name(v)


# ---------------------------------------------------------------------------- Lua 5.0: lexing
class _Tok(NamedTuple):
    kind: str            # name, keyword, number, string, value (a numeric table), symbol, eof
    value: Any
    text: str            # as an error message quotes it
    line: int


_KEYWORDS = frozenset("and break do else elseif end false for function if in local nil not or repeat return "
                      "then true until while".split())
_NOT_RUN = frozenset("if while for repeat function do return break".split())
_LEX = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>--\[\[.*?\]\]|--[^\n]*)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<name>[A-Za-z_]\w*)
  | (?P<string>"[^"\\\n]*(?:\\.[^"\\\n]*)*"|'[^'\\\n]*(?:\\.[^'\\\n]*)*')
  | (?P<long>\[\[.*?\]\])
  | (?P<symbol>\.\.\.|\.\.|==|~=|<=|>=|.)
""", re.S | re.X)
_NUM = r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
# A table of number literals, as the driver sends indices and levels: read whole, straight into an array.
# The body is first checked with a character class (linear, no backtracking over thousands of numbers) and
# then split; anything else, or a body a number literal does not fill, goes through the general lexer.
_NUMERIC_CHARS = re.compile(r"[-+.,\deE \t\r\n]*")
_ESCAPE = re.compile(r"\\(\d{1,3}|.)", re.S)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "\n": "\n"}


def _unescape(body: str) -> str:
    if "\\" not in body:
        return body
    return _ESCAPE.sub(lambda m: chr(int(m[1])) if m[1].isdigit() else _ESCAPES.get(m[1], m[1]), body)


def _numeric_table(text: str, pos: int) -> np.ndarray | None:
    """The numbers of the table constructor of number literals at ``text[pos]`` (a ``{``), else None."""
    end = text.find("}", pos)
    if end < 0 or _NUMERIC_CHARS.fullmatch(text, pos + 1, end) is None:
        return None
    body = text[pos + 1:end]
    if body.count("+") != body.count("e+") + body.count("E+"):
        return None                          # a unary plus: Lua's syntax error, from the general lexer
    if not body.strip():
        return np.zeros(0)
    expected = body.count(",") + (0 if body.rstrip().endswith(",") else 1)   # Lua allows a trailing separator
    try:
        # within these characters, what strtod reads is what a Lua number literal is; anything else
        # ("1,,2", "- 5", "1e") stops it short, and the general lexer says what Lua would say
        values = np.fromstring(body, sep=",")
    except ValueError:
        return None
    return values if values.size == expected else None


def _lex(text: str) -> list[_Tok]:
    tokens, pos, line = [], 0, 1
    while pos < len(text):
        if text[pos] == "{" and (values := _numeric_table(text, pos)) is not None:
            end = text.index("}", pos) + 1
            tokens.append(_Tok("value", values, "{", line))
            line += text.count("\n", pos, end)
            pos = end
            continue
        m = _LEX.match(text, pos)
        kind, s = m.lastgroup, m.group()
        if kind == "number":
            tokens.append(_Tok("number", float(s), s, line))
        elif kind == "name":
            tokens.append(_Tok("keyword" if s in _KEYWORDS else "name", s, s, line))
        elif kind == "string":
            tokens.append(_Tok("string", _unescape(s[1:-1]), s[:80], line))
        elif kind == "long":
            tokens.append(_Tok("string", s[2:-2].removeprefix("\n"), s[:80], line))
        elif kind == "symbol":
            if s in "\"'":
                raise _syntax(line, f"unfinished string near `{text[pos:].split(chr(10))[0][:80]}'")
            if text.startswith("[[", pos):
                raise _syntax(line, "unfinished long string near `<eof>'")
            tokens.append(_Tok("symbol", s, s, line))
        line += s.count("\n")
        pos = m.end()
    tokens.append(_Tok("eof", None, "<eof>", line))
    return tokens


# --------------------------------------------------------------------------- Lua 5.0: parsing
# Binary operators: (left, right) priorities, as Lua 5.0's parser has them.
_BINARY = {"or": (1, 1), "and": (2, 2), "<": (3, 3), ">": (3, 3), "<=": (3, 3), ">=": (3, 3), "~=": (3, 3),
           "==": (3, 3), "..": (5, 4), "+": (6, 6), "-": (6, 6), "*": (7, 7), "/": (7, 7), "^": (10, 9)}
_UNARY_PRIORITY = 8
_MAX_LEVELS = 200           # Lua 5.0's limit on nested expressions (LUA_MAXPARSERLEVEL)


class _Parser:
    """A chunk into statements (tuples): ("call", line, call), ("local", line, names, exprs) and
    ("assign", line, targets, exprs). Syntax errors carry Lua 5.0's messages."""

    def __init__(self, text: str):
        self.tokens = _lex(text)
        self.k = 0
        self.levels = 0

    def peek(self) -> _Tok:
        return self.tokens[self.k]

    def take(self) -> _Tok:
        self.k += 1
        return self.tokens[self.k - 1]

    def at(self, symbol: str) -> bool:
        t = self.peek()
        return t.kind in ("symbol", "keyword") and t.value == symbol

    def accept(self, symbol: str) -> bool:
        if self.at(symbol):
            self.k += 1
            return True
        return False

    def fail(self, message: str):
        t = self.peek()
        raise _syntax(t.line, f"{message} near `{t.text}'")

    def expect(self, symbol: str, opener: str | None = None, line: int | None = None) -> None:
        if self.accept(symbol):
            return
        if opener and line != self.peek().line:
            self.fail(f"`{symbol}' expected (to close `{opener}' at line {line})")
        self.fail(f"`{symbol}' expected")

    def name(self) -> str:
        if self.peek().kind != "name":
            self.fail("<name> expected")
        return self.take().value

    # statements
    def chunk(self) -> list[tuple]:
        statements = []
        while self.peek().kind != "eof":
            statements.append(self.statement())
            self.accept(";")
        return statements

    def statement(self) -> tuple:
        t = self.peek()
        if t.kind == "keyword" and t.value in _NOT_RUN:
            self.not_run(t)
        if self.accept("local"):
            if self.at("function"):
                self.not_run(self.peek())
            names = [self.name()]
            while self.accept(","):
                names.append(self.name())
            return ("local", t.line, names, self.explist() if self.accept("=") else [])
        first = self.primary()
        if first[0] in ("call", "method"):
            return ("call", t.line, first)
        targets = [first]
        while self.accept(","):
            targets.append(self.primary())
        if any(x[0] not in ("name", "index") for x in targets):
            self.fail("syntax error")
        self.expect("=")
        return ("assign", t.line, targets, self.explist())

    @staticmethod
    def not_run(t: _Tok):
        # valid Lua, but beyond what the emulator follows: say so rather than pretend it ran
        raise _LuaError(RUNTIME_ERROR, f"TSP Runtime error at line {t.line}: the emulator does not run "
                                       f"`{t.value}' blocks")

    # expressions
    def explist(self) -> list[tuple]:
        exprs = [self.expr()]
        while self.accept(","):
            exprs.append(self.expr())
        return exprs

    def expr(self, limit: int = 0) -> tuple:
        self.levels += 1
        if self.levels > _MAX_LEVELS:
            self.fail("too many syntax levels")
        t = self.peek()
        if t.kind in ("symbol", "keyword") and t.value in ("not", "-"):
            self.take()
            e = ("unop", t.value, self.expr(_UNARY_PRIORITY))
        else:
            e = self.simple()
        while True:
            t = self.peek()
            op = t.value if t.kind in ("symbol", "keyword") else None
            if op not in _BINARY or _BINARY[op][0] <= limit:
                self.levels -= 1
                return e
            self.take()
            e = ("binop", op, e, self.expr(_BINARY[op][1]))

    def simple(self) -> tuple:
        t = self.peek()
        if t.kind in ("number", "string", "value"):
            self.take()
            return ("const", t.value)
        if t.kind == "keyword" and t.value in ("nil", "true", "false"):
            self.take()
            return ("const", {"nil": None, "true": True, "false": False}[t.value])
        if t.kind == "keyword" and t.value == "function":
            self.not_run(t)
        if self.at("{"):
            return self.table()
        return self.primary()

    def primary(self) -> tuple:
        t = self.peek()
        if t.kind == "name":
            self.take()
            e = ("name", t.value)
        elif self.accept("("):
            e = ("paren", self.expr())
            self.expect(")", "(", t.line)
        else:
            self.fail("unexpected symbol")
        while True:
            if self.accept("."):
                key = self.name()
                e = ("index", e, ("const", key), key)
            elif self.accept("["):
                e = ("index", e, self.expr(), None)
                self.expect("]")
            elif self.accept(":"):
                method = self.name()
                e = ("method", e, method, self.args())
            elif self.at("(") or self.at("{") or self.peek().kind in ("string", "value"):
                e = ("call", e, self.args())
            else:
                return e

    def args(self) -> list[tuple]:
        t = self.peek()
        if t.kind in ("string", "value") or self.at("{"):
            return [self.simple()]
        self.expect("(")
        if self.accept(")"):
            return []
        exprs = self.explist()
        self.expect(")", "(", t.line)
        return exprs

    def table(self) -> tuple:
        line = self.take().line
        items = []
        while not self.at("}"):
            after = self.tokens[self.k + 1]
            if self.peek().kind == "name" and after.kind == "symbol" and after.value == "=":
                key = self.take().value
                self.take()
                items.append((("const", key), self.expr()))
            elif self.accept("["):
                key = self.expr()
                self.expect("]")
                self.expect("=")
                items.append((key, self.expr()))
            else:
                items.append((None, self.expr()))
            if not (self.accept(",") or self.accept(";")):
                break
        self.expect("}", "{", line)
        return ("table", items)


# ------------------------------------------------------------------------- Lua 5.0: running
class _Lua:
    """Runs chunks against a global table (``env``); ``record(command, **fields)`` logs what is set."""

    def __init__(self, env: dict, record: Callable[..., None]):
        self.env, self.record = env, record

    def run(self, text: str) -> None:
        statements = _Parser(text).chunk()          # nothing runs unless the whole chunk parses
        local: dict = {}
        for st in statements:
            try:
                self._statement(st, local)
            except _Fault as exc:
                raise _LuaError(RUNTIME_ERROR, f"TSP Runtime error at line {st[1]}: {exc}") from None

    def _statement(self, st: tuple, local: dict) -> None:
        if st[0] == "call":
            self._results(st[2], local)
        elif st[0] == "local":
            local.update(zip(st[2], self._adjusted(st[3], local, len(st[2]))))
        else:                       # Lua evaluates every target and value before it assigns any
            places = [self._place(t, local) for t in st[2]]
            for place, value in zip(places, self._adjusted(st[3], local, len(places))):
                self._store(place, value, local)

    def _place(self, target: tuple, local: dict) -> tuple:
        if target[0] == "name":
            return ("local" if target[1] in local else "global", target[1])
        obj = self._eval(target[1], local)
        return ("index", obj, self._eval(target[2], local), self._what(target[1], local))

    def _store(self, place: tuple, value, local: dict) -> None:
        if place[0] == "local":
            local[place[1]] = value
        elif place[0] == "global":
            self.record(place[1], value=_loggable(value))
            if value is None:
                self.env.pop(place[1], None)
            else:
                self.env[place[1]] = value
        else:
            _, obj, key, desc = place
            if isinstance(obj, (TspObject, LuaTable)):
                obj.set(key, value)
            else:
                raise _Fault(f"attempt to index {_about(desc, obj)}")

    # expressions
    def _adjusted(self, exprs: list, local: dict, n: int) -> list:
        values = self._values(exprs, local)
        return (values + [None] * n)[:n]

    def _values(self, exprs: list, local: dict) -> list:
        out = []
        for k, e in enumerate(exprs):
            if k == len(exprs) - 1 and e[0] in ("call", "method"):
                out.extend(self._results(e, local))     # the last expression gives all its values
            else:
                out.append(self._eval(e, local))
        return out

    def _eval(self, node: tuple, local: dict):
        kind = node[0]
        if kind == "const":
            return node[1]
        if kind == "name":
            return local[node[1]] if node[1] in local else self.env.get(node[1])
        if kind == "index":
            return self._index(self._eval(node[1], local), self._eval(node[2], local), self._what(node[1], local))
        if kind in ("call", "method"):
            results = self._results(node, local)
            return results[0] if results else None
        if kind == "paren":
            return self._eval(node[1], local)
        if kind == "table":
            return self._table(node[1], local)
        if kind == "unop":
            return self._unary(node, local)
        return self._binary(node, local)

    @staticmethod
    def _what(node: tuple, local: dict) -> str | None:
        if node[0] == "name":
            return f"{'local' if node[1] in local else 'global'} `{node[1]}'"
        if node[0] == "index" and node[3]:
            return f"field `{node[3]}'"
        return None

    @staticmethod
    def _index(obj, key, desc: str | None):
        if isinstance(obj, (TspObject, LuaTable)):
            return obj.get(key)
        if isinstance(obj, np.ndarray):
            k = _tonumber(key) if _is_number(key) else None
            return float(obj[int(k) - 1]) if k is not None and k == int(k) and 1 <= k <= len(obj) else None
        raise _Fault(f"attempt to index {_about(desc, obj)}")

    def _results(self, node: tuple, local: dict) -> list:
        if node[0] == "call":
            fn, desc = self._eval(node[1], local), self._what(node[1], local)
            args = self._values(node[2], local)
        else:
            obj = self._eval(node[1], local)
            fn = self._index(obj, node[2], self._what(node[1], local))
            desc, args = f"method `{node[2]}'", [obj, *self._values(node[3], local)]
        if isinstance(fn, TspObject) and fn.call is not None:
            fn = fn.call
        if not isinstance(fn, LuaFunction):
            raise _Fault(f"attempt to call {_about(desc, fn)}")
        if fn.logged:
            self.record(fn.name, args=[_loggable(a) for a in args[:8]])
        out = fn.body(args)
        return [] if out is None else list(out) if isinstance(out, (list, tuple)) else [out]

    def _table(self, items: list, local: dict):
        if all(key is None for key, _ in items):
            values = self._values([e for _, e in items], local)
            if all(_is_number(v) for v in values):     # a list of numbers: an array, as hil reads it
                return np.array(values, dtype=np.float64)
            return LuaTable({float(k + 1): v for k, v in enumerate(values) if v is not None})
        table, n = LuaTable(), 0
        for key, e in items:
            if key is None:
                n += 1
                table.set(float(n), self._eval(e, local))
            else:
                k = self._eval(key, local)
                if k is None:
                    raise _Fault("table index is nil")
                table.set(float(k) if _is_number(k) else k, self._eval(e, local))
        return table

    def _unary(self, node: tuple, local: dict):
        value = self._eval(node[2], local)
        if node[1] == "not":
            return value is None or value is False
        x = _tonumber(value)
        if x is None:
            raise _Fault(f"attempt to perform arithmetic on {_about(self._what(node[2], local), value)}")
        return -x

    def _binary(self, node: tuple, local: dict):
        _, op, left, right = node
        a = self._eval(left, local)
        if op in ("and", "or"):
            truthy = a is not None and a is not False
            return (self._eval(right, local) if truthy else a) if op == "and" else (a if truthy else
                                                                                   self._eval(right, local))
        b = self._eval(right, local)
        if op in ("==", "~="):
            return _raw_equal(a, b) == (op == "==")
        if op in ("<", ">", "<=", ">="):
            return _compare(op, a, b)
        if op == "..":
            return _concat(a, b, self._what(left, local), self._what(right, local))
        return _arith(op, a, b, self._what(left, local), self._what(right, local))


def _raw_equal(a, b) -> bool:
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    if type(a) is type(b) and (a is None or isinstance(a, (str, bool))):
        return a == b
    return a is b


def _compare(op: str, a, b) -> bool:
    if not ((_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))):
        ta, tb = _type_name(a), _type_name(b)
        raise _Fault(f"attempt to compare two {ta} values" if ta == tb else f"attempt to compare {ta} with {tb}")
    return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]


def _concat(a, b, da: str | None, db: str | None) -> str:
    for v, d in ((a, da), (b, db)):
        if not (isinstance(v, str) or _is_number(v)):
            raise _Fault(f"attempt to concatenate {_about(d, v)}")
    return _lua_tostring(a) + _lua_tostring(b)


def _arith(op: str, a, b, da: str | None, db: str | None) -> float:
    x, y = _tonumber(a), _tonumber(b)
    if x is None or y is None:
        bad, desc = (a, da) if x is None else (b, db)
        raise _Fault(f"attempt to perform arithmetic on {_about(desc, bad)}")
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if op == "/":
        if y == 0:                      # IEEE division, as the instrument's doubles give it
            return math.nan if x == 0 or math.isnan(x) else math.copysign(math.inf, x) * math.copysign(1, y)
        return x / y
    try:
        return math.pow(x, y)
    except OverflowError:
        return math.inf
    except ValueError:
        return math.nan


def _string_format(args: list) -> str:
    """Lua's ``string.format``: C conversions, ``%s`` through tostring."""
    if not args or not isinstance(args[0], str):
        raise _Fault("bad argument #1 to `format' (string expected, got "
                     f"{_type_name(args[0]) if args else 'no value'})")
    rest = iter(enumerate(args[1:], start=2))

    def convert(m: re.Match) -> str:
        if m.group() == "%%":
            return "%"
        kind = m.group()[-1]
        try:
            k, value = next(rest)
        except StopIteration:
            raise _Fault(f"bad argument #{len(args) + 1} to `format' (no value)") from None
        if kind == "s":
            return (m.group()[:-1] + "s") % _lua_tostring(value)
        x = _tonumber(value)
        if x is None:
            raise _Fault(f"bad argument #{k} to `format' (number expected, got {_type_name(value)})")
        if kind in "diouxXc":
            return (m.group()[:-1] + ("d" if kind in "iu" else kind)) % int(x)
        return m.group() % x

    return re.sub(r"%[-+ #0]*\d*(?:\.\d+)?[diouxXeEfgGcs%]", convert, args[0])


# ----------------------------------------------------------------------------- the bench profile
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

    def table(self) -> LuaTable:
        """The profile as the Lua table ``hilbench`` holds it."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        fields["adc_ranges_a"] = None if self.adc_ranges_a is None else np.array(self.adc_ranges_a, np.float64)
        return LuaTable({k: float(v) if _is_number(v) else v for k, v in fields.items() if v is not None})


# --------------------------------------------------------------------------------- the instrument
class TspInstrument:
    """The instrument's command interpreter: one chunk (line) in, the lines it prints out.
    ``load_ohms``: the resistor across each channel's HI and LO that direct source/measure commands
    see (a number for both, or per channel ``{"smua": R, "smub": R}``; None: open terminals)."""

    manufacturer = "Keithley Instruments Inc."
    model = "2636B"
    firmware = "3.2.2"              # a released 2600B firmware revision, in the form *IDN? gives it

    def __init__(self, xbar: SoftwareCrossbar, *, log: Path | None = None, profile: BenchProfile | None = None,
                 load_ohms: float | dict | None = DEFAULT_LOAD_OHMS):
        self.xbar = xbar.open()
        self.profile = profile or BenchProfile.of(xbar)
        # seven digits, as the instrument's serial number, the same for the same array
        self.serial = f"{zlib.crc32(self.profile.array_id.encode()) % 10 ** 7:07d}"
        self.load_ohms = _loads(load_ohms)
        self.smu = _defaults()
        self.ascii_precision = 6
        # localnode settings: prompts (TSP> after each message) matter here; the others are kept for clients
        self.node_settings = {"linefreq": 60.0, "prompts": 0.0, "prompts4882": 1.0}
        self.closed_channels = ""
        self.errors: deque[tuple[int, str]] = deque()
        self.scripts: dict[str, str] = {}
        self.installed = False          # the hil functions exist (the driver's script has run)
        self.commands = 0               # chunks executed (a whole loadscript block is one)
        self.executed: dict[str, int] = {}   # hil calls carried out (answered OK), resends not counted
        self.repeats = 0                # resends answered from memory
        self.hot_switches = 0           # relays moved with a source live (must stay 0)
        self.internal_errors: list[str] = []   # emulator faults (must stay empty)
        self._memory: OrderedDict[int, str] = OrderedDict()
        self._loading: tuple[str, list[str]] | None = None
        self._out: list[str] = []
        self._failed = False
        self._log = open(log, "a", encoding="utf-8") if log else None
        self._lock = threading.Lock()
        self._lua = _Lua(self._globals(), self._record)

    def close(self) -> None:
        if self._log:
            self._log.close()
            self._log = None

    def identity(self) -> str:
        return f"{self.manufacturer}, Model {self.model}, {self.serial}, {self.firmware}"

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
            self._out, self._failed = [], False
            try:
                self._execute(text)
            except _LuaError as exc:
                self._queue(exc.code, str(exc), text)
            except Exception as exc:        # an emulator bug: the client sees a rejected chunk, not a dead link
                self.internal_errors.append(f"{type(exc).__name__}: {exc}")
                self._queue(RUNTIME_ERROR, f"TSP Runtime error at line 1: emulator fault ({type(exc).__name__})",
                            text)
            if self.node_settings["prompts"]:
                self._out.append("TSP?" if self._failed else "TSP>")
            return self._out

    def _queue(self, code: int, message: str, chunk: str | None = None) -> None:
        self.errors.append((code, message))
        self._failed = True
        self._record("error", code=code, message=message, **({"chunk": chunk[:200]} if chunk else {}))

    def _collect(self, line: str) -> list[str]:
        name, lines = self._loading
        if line.strip() == "endscript":
            self.scripts[name] = "\n".join(lines)
            self._lua.env[name] = self._script(name)
            self._loading = None
            self._record("loadscript", name=name, lines=len(lines))
        else:
            lines.append(line.rstrip("\r\n"))
        return []

    def _execute(self, text: str) -> None:
        if text.startswith("*"):
            self._common(text)
            return
        load = re.fullmatch(r"loadscript(?:\s+(.*))?", text, re.S)
        if load:
            name = (load.group(1) or "").strip()
            if not re.fullmatch(r"[A-Za-z_]\w*", name):
                raise _syntax(1, f"bad script name near `{name[:20]}'")
            self._loading = (name, [])
            return
        self._lua.run(text)

    def _common(self, text: str) -> None:
        """IEEE 488.2 common commands the 2600B takes as whole messages."""
        self._record(text)
        command = text.upper()
        if command == "*IDN?":
            self._out.append(self.identity())
        elif command == "*RST":
            self._reset()
        elif command == "*CLS":
            self.errors.clear()
        elif command == "*OPC?":
            self._out.append("1")
        elif command == "*TST?":
            self._out.append("0")
        elif command != "*WAI":     # *WAI: every command has completed before the next is read
            raise _syntax(1, "unexpected symbol near `*'")

    # ------------------------------------------------------------ the run-time's global table
    def _globals(self) -> dict:
        fn, localnode = LuaFunction, self._localnode()
        return {
            "print": fn("print", self._print), "printnumber": fn("printnumber", self._printnumber),
            "tostring": fn("tostring", _tostring), "tonumber": fn("tonumber", lambda a: [_tonumber(_first(a))]),
            "type": fn("type", _type), "string": LuaTable({"format": fn("string.format", _string_format)}),
            "delay": fn("delay", self._wait, logged=True), "waitcomplete": fn("waitcomplete", lambda a: None),
            "reset": fn("reset", lambda a: self._reset(), logged=True),
            "errorqueue": TspObject("errorqueue", {
                "clear": fn("errorqueue.clear", lambda a: self.errors.clear(), logged=True),
                "next": fn("errorqueue.next", self._next_error), "count": Attr(lambda: float(len(self.errors)))}),
            "format": self._format(), "localnode": localnode,
            "node": LuaTable({1.0: localnode, 2.0: TspObject("node[2]", {"channel": self._matrix()})}),
            "timer": TspObject("timer", {"measure": TspObject("timer.measure", {
                "t": fn("timer.measure.t", lambda a: [self.xbar.now()])})}),
            **{ch: self._channel(ch) for ch in CHANNELS},
            "hilbench": self.profile.table(),
        }

    def _channel(self, ch: str) -> TspObject:
        def setting(name: str) -> Attr:
            return Attr(partial(self._setting, ch, name), partial(self._set, ch, name))

        def group(prefix: str) -> dict:
            return {name.split(".")[1]: setting(name) for name in _SETTINGS if name.startswith(prefix + ".")}

        source = TspObject(f"{ch}.source", {**group("source"), "compliance": Attr(lambda: self._terminals(ch)[2])})
        measure = TspObject(f"{ch}.measure", {**group("measure"), **{
            what: LuaFunction(f"{ch}.measure.{what}", partial(self._measure, ch, what))
            for what in ("i", "v", "r", "p", "iv")}})
        return TspObject(ch, {**{k: float(v) for k, v in _SMU_CONSTANTS.items()}, "source": source,
                              "measure": measure, "sense": setting("sense"),
                              "reset": LuaFunction(f"{ch}.reset", lambda a: self._reset_channel(ch), logged=True)})

    def _format(self) -> TspObject:
        def set_data(value) -> None:
            if value != 1:          # binary formats change printnumber() only, which prints ASCII here
                raise _Fault("the emulator prints ASCII only (format.data = format.ASCII)")

        return TspObject("format", {
            "asciiprecision": Attr(lambda: float(self.ascii_precision), self._set_precision),
            "data": Attr(lambda: 1.0, set_data),
            "ASCII": 1.0, "SREAL": 2.0, "REAL32": 2.0, "REAL": 3.0, "REAL64": 3.0, "DREAL": 3.0})

    def _localnode(self) -> TspObject:
        def choice(attr: str, choices: tuple[float, ...]) -> Attr:
            def store(value) -> None:
                self._record(f"localnode.{attr}", value=_loggable(value))
                x = self._accepted(f"localnode.{attr}", _Setting(choices[0], choices=choices), value)
                if x is not None:
                    self.node_settings[attr] = x
            return Attr(lambda: self.node_settings[attr], store)

        return TspObject("localnode", {
            "model": Attr(lambda: self.model), "serialno": Attr(lambda: self.serial),
            "revision": Attr(lambda: self.firmware), "linefreq": choice("linefreq", (60, 50)),
            "prompts": choice("prompts", (0, 1)), "prompts4882": choice("prompts4882", (1, 0))})

    def _matrix(self) -> TspObject:
        def relay(op: str) -> LuaFunction:
            return LuaFunction(f"node[2].channel.{op}", partial(self._relays, op), logged=True)

        def set_rule(value) -> None:
            self._record(_MATRIX_RULE, value=_loggable(value))
            x = self._accepted(_MATRIX_RULE, _Setting(1, choices=(0, 1, 2)), value)
            if x is not None:
                self.smu[_MATRIX_RULE] = x

        return TspObject("node[2].channel", {
            **{op: relay(op) for op in ("open", "close", "exclusiveclose", "reset")},
            "getclose": LuaFunction("node[2].channel.getclose", self._getclose),
            "connectrule": Attr(lambda: self.smu[_MATRIX_RULE], set_rule),
            "OFF": 0.0, "BREAK_BEFORE_MAKE": 1.0, "MAKE_BEFORE_BREAK": 2.0})

    def _script(self, name: str) -> TspObject:
        run = LuaFunction(f"{name}.run", lambda a: self._run_script(name), logged=True)
        return TspObject(name, {"run": run, "name": Attr(lambda: name), "source": Attr(lambda: self.scripts[name])},
                         call=run)

    # ------------------------------------------------------------------ functions
    def _print(self, args: list) -> None:
        self._out.append("\t".join(self._printed(v) for v in args))

    def _printnumber(self, args: list) -> None:
        for k, v in enumerate(args, start=1):
            if _tonumber(v) is None:
                raise _Fault(f"bad argument #{k} to `printnumber' (number expected, got {_type_name(v)})")
        self._out.append(", ".join(self._number(_tonumber(v)) for v in args))

    def _printed(self, v) -> str:
        return self._number(v) if _is_number(v) else _lua_tostring(v)

    def _number(self, x) -> str:
        """A number as print() writes it: ``format.asciiprecision`` significant digits."""
        return f"{float(x):.{self.ascii_precision - 1}e}"

    def _set_precision(self, value) -> None:
        self._record("format.asciiprecision", value=_loggable(value))
        x = self._accepted("format.asciiprecision", _Setting(6, low=1, high=16), value)
        if x is not None:
            self.ascii_precision = int(x)

    def _next_error(self, args: list) -> list:
        code, message = self.errors.popleft() if self.errors else (0, "Queue Is Empty")
        return [float(code), message, float(_RECOVERABLE if code else 0), 1.0 if code else 0.0]

    def _reset(self) -> None:
        # reset() restores the instruments' settings (the matrix's too); scripts and globals survive it
        self.smu.update(_defaults())
        self.closed_channels = ""
        self.ascii_precision = 6

    def _reset_channel(self, ch: str) -> None:
        self.smu.update({f"{ch}.{name}": float(s.default) for name, s in _SETTINGS.items()})

    def _wait(self, args) -> None:
        if len(args) != 1 or not _is_number(args[0]) or not args[0] >= 0:
            raise _Fault("delay needs a non-negative time")
        self.xbar.wait(float(args[0]))

    def _relays(self, op: str, args) -> None:
        if len(args) != 1 or not isinstance(args[0], str):
            raise _Fault(f"channel.{op} needs one channel list")
        items = [s.strip() for s in args[0].split(",") if s.strip()]
        if not all(_RELAY.match(s) for s in items):
            raise _Fault(f"bad channel list '{args[0][:40]}'")
        if op in ("close", "exclusiveclose") and any(self._live(ch) for ch in CHANNELS):
            self.hot_switches += 1
        if op in ("open", "reset") and (not items or "allslots" in items):
            self.closed_channels = ""
        elif op == "exclusiveclose":
            self.closed_channels = ",".join(items)
        elif op == "close":
            self.closed_channels = ",".join([c for c in self.closed_channels.split(",") if c] + items)
        elif op == "open":
            self.closed_channels = ",".join(c for c in self.closed_channels.split(",") if c and c not in items)

    def _getclose(self, args) -> list:
        if len(args) != 1 or not isinstance(args[0], str):
            raise _Fault("channel.getclose needs one channel list")
        asked = {s.strip() for s in args[0].split(",")}
        closed = [c for c in self.closed_channels.split(",") if c]
        if not ({"allslots"} & asked or any(s.startswith("slot") for s in asked)):
            closed = [c for c in closed if c in asked]
        return [",".join(closed) or None]

    def _run_script(self, name: str) -> None:
        if _normalised(self.scripts[name]) == _normalised(HIL_SCRIPT):
            self._lua.env["hil"] = LuaTable({fn: LuaFunction(f"hil.{fn}", partial(self._hil, fn))
                                             for fn in _HIL_FUNCTIONS})
            self.installed = True
            self._memory.clear()
            return
        self._lua.run(self.scripts[name])        # any other script runs as its statements allow

    # --------------------------------------------------------------- the SMU channels
    def _setting(self, ch: str, name: str) -> float:
        if name in _RANGES and self.smu[f"{ch}.{_AUTORANGE[name]}"]:
            return self._auto_range(ch, name)
        return self.smu[f"{ch}.{name}"]

    def _set(self, ch: str, name: str, value) -> None:
        key = f"{ch}.{name}"
        self._record(key, **self._setting_log(ch, name, value))      # logged before it is checked
        x = self._accepted(key, _SETTINGS[name], value)
        if x is None:
            return
        if name in _RANGES:             # the lowest range that holds the value; a range set is a range fixed
            x = _fit(_RANGES[name], abs(x))
            self.smu[f"{ch}.{_AUTORANGE[name]}"] = 0.0
        elif name in _RANGE_OF and x == 0 and self.smu[key]:     # autorange off stays on the range it reached
            self.smu[f"{ch}.{_RANGE_OF[name]}"] = self._auto_range(ch, _RANGE_OF[name])
        self.smu[key] = x
        if name == "source.output" and x == OUTPUT_ON:
            self._output_on(ch, by=None)

    def _accepted(self, key: str, spec: _Setting, value) -> float | None:
        """``value`` as the instrument takes it; None when refused (an error is queued and the chunk
        goes on, as for any error that is not Lua's)."""
        if not _is_number(value) or math.isnan(value):
            raise _Fault(f"{key} needs a number, got {_lua_tostring(value)[:20]}")
        x = float(value)
        if spec.choices is not None and x not in spec.choices and min(spec.choices) <= x <= max(spec.choices):
            raise _Fault(f"{key} takes one of {', '.join(f'{c:g}' for c in spec.choices)}")
        low = min(spec.choices) if spec.choices else spec.low
        high = max(spec.choices) if spec.choices else spec.high
        magnitude = x if spec.choices else abs(x)
        if high is not None and magnitude > high:
            self._queue(PARAMETER_TOO_BIG, "Parameter too big")
            return None
        if low is not None and magnitude < low:
            self._queue(PARAMETER_TOO_SMALL, "Parameter too small")
            return None
        return x

    def _setting_log(self, ch: str, name: str, value) -> dict:
        fields: dict = {"value": _loggable(value)}
        number = float(value) if _is_number(value) else None
        if name in ("source.limiti", "source.offlimiti") and number is not None:
            fields["compliance_a"] = number
        if name in ("source.limitv", "source.offlimitv") and number is not None:
            fields["compliance_v"] = number
        if name == "source.levelv":
            fields["max_voltage_v"] = abs(number) if number is not None else None
        if name == "source.leveli":
            fields["max_current_a"] = abs(number) if number is not None else None
        if name in ("source.levelv", "source.leveli") and self._on(ch):
            fields.update(self._limit_in_force(ch))         # the new level goes out at once, held to this
        return fields

    def _auto_range(self, ch: str, name: str) -> float:
        """The range autoranging has chosen: the lowest one that holds the level (source) or the reading."""
        if name.startswith("source."):
            x = self.smu[f"{ch}.source.level{name[-1]}"]
        else:
            i, v, _ = self._terminals(ch)
            x = i if name.endswith("i") else v
        return _fit(_RANGES[name], abs(x))

    def _on(self, ch: str) -> bool:
        return self.smu[f"{ch}.source.output"] == OUTPUT_ON

    def _live(self, ch: str) -> bool:
        unit = "v" if self.smu[f"{ch}.source.func"] == OUTPUT_DCVOLTS else "i"
        return self._on(ch) and self.smu[f"{ch}.source.level{unit}"] != 0

    def _limit_in_force(self, ch: str) -> dict:
        if self.smu[f"{ch}.source.func"] == OUTPUT_DCVOLTS:
            return {"compliance_a": self.smu[f"{ch}.source.limiti"]}
        return {"compliance_v": self.smu[f"{ch}.source.limitv"]}

    def _output_on(self, channel: str, by: str | None) -> None:
        self._record("output on", channel=channel, by=by, **self._limit_in_force(channel))

    def _terminals(self, ch: str) -> tuple[float, float, bool]:
        """(current, voltage, in compliance) at the channel's terminals: the source works into the load,
        and the limit in force caps the other quantity whatever level was asked."""
        if not self._on(ch):
            return 0.0, 0.0, False      # every output-off state leaves 0 V, 0 A or an open relay on the load
        s, r = self.smu, self.load_ohms[ch]
        if s[f"{ch}.source.func"] == OUTPUT_DCVOLTS:
            return _voltage_source(s[f"{ch}.source.levelv"], abs(s[f"{ch}.source.limiti"]), r)
        return _current_source(s[f"{ch}.source.leveli"], abs(s[f"{ch}.source.limitv"]), r)

    def _measure(self, ch: str, what: str, args: list) -> list:
        if args:
            raise _Fault(f"{ch}.measure.{what}: the emulator keeps no reading buffers")
        i, v, limited = self._terminals(ch)
        i, v = self._reading(ch, "i", i), self._reading(ch, "v", v)
        overflow = OVERFLOW in (abs(i), abs(v))
        r = OVERFLOW if overflow or i == 0 else v / i
        p = OVERFLOW if overflow else v * i
        self._record(f"{ch}.measure.{what}", current_a=i, voltage_v=v, in_compliance=limited,
                     **self._limit_in_force(ch))
        return {"i": [i], "v": [v], "iv": [i, v], "r": [r], "p": [p]}[what]

    def _reading(self, ch: str, unit: str, x: float) -> float:
        if self.smu[f"{ch}.measure.autorange{unit}"] or abs(x) <= MEASURE_FULL_SCALE * self.smu[
                f"{ch}.measure.range{unit}"]:
            return x
        return OVERFLOW

    # ------------------------------------------------------------ the script
    def _hil(self, fn: str, args: list) -> None:
        if fn == "idle":
            self._record("hil.idle")
            self._idle()
            return
        if not args or not _is_number(args[0]) or not math.isfinite(args[0]) or args[0] != int(args[0]):
            raise _Fault(f"hil.{fn}: bad call id")
        call_id = int(args[0])
        repeat = call_id in self._memory
        self._record("hil." + fn, id=call_id, repeat=repeat, **_describe(fn, args[1:]))
        if repeat:
            self.repeats += 1
            self._out.append(self._memory[call_id])
            return
        try:
            status, payload = getattr(self, "_hil_" + fn)(*args[1:])
        except LimitViolation as exc:           # the crossbar's own limits, should a profile be looser
            status, payload = "ERR", f"LIMIT {exc.cause}"
        except CrossbarError as exc:
            status, payload = "ERR", f"ARG {exc.cause}"
        except (TypeError, ValueError, IndexError, AttributeError):
            raise _Fault(f"bad argument to hil.{fn}") from None
        if status == "OK":
            self.executed[fn] = self.executed.get(fn, 0) + 1
        line = frame(call_id, status, payload)
        self._memory[call_id] = line
        while len(self._memory) > _MEMORY:
            self._memory.popitem(last=False)
        self._out.append(line)

    def _arm(self, by: str, sense: bool) -> None:
        for ch in CHANNELS[:2 if sense else 1]:
            self.smu[f"{ch}.source.levelv"] = 0.0
            self.smu[f"{ch}.source.output"] = OUTPUT_ON
            self._output_on(ch, by)

    def _idle(self) -> None:
        for ch in CHANNELS:
            self.smu[f"{ch}.source.levelv"] = 0.0
        self.closed_channels = ""
        for ch in CHANNELS:
            self.smu[f"{ch}.source.output"] = OUTPUT_OFF

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
        return all(0 < x <= self.profile.max_compliance_a for x in limits)

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


def _loads(load_ohms) -> dict[str, float | None]:
    loads = load_ohms if isinstance(load_ohms, dict) else {ch: load_ohms for ch in CHANNELS}
    for ch in CHANNELS:
        r = loads.get(ch)
        if r is not None and not (_is_number(r) and r > 0):
            raise ValueError(f"load_ohms for {ch} must be a positive resistance or None (open), not {r!r}")
    return {ch: None if loads.get(ch) is None else float(loads[ch]) for ch in CHANNELS}


def _voltage_source(v: float, limit: float, r: float | None) -> tuple[float, float, bool]:
    i = 0.0 if r is None else v / r
    if abs(i) <= limit:
        return i, v, False
    i = math.copysign(limit, v)         # in compliance: a current source at the limit
    return i, i * r, True


def _current_source(i: float, limit: float, r: float | None) -> tuple[float, float, bool]:
    v = (math.copysign(math.inf, i) if i else 0.0) if r is None else i * r
    if abs(v) <= limit:
        return i, v, False
    v = math.copysign(limit, i)         # in compliance: a voltage source at the limit
    return (0.0 if r is None else v / r), v, True


def _fit(ranges: tuple[float, ...], x: float) -> float:
    return next((r for r in ranges if r >= x), ranges[-1])


def _first(args: list):
    return args[0] if args else None


def _tostring(args: list) -> str:
    if not args:
        raise _Fault("bad argument #1 to `tostring' (value expected)")
    return _lua_tostring(args[0])


def _type(args: list) -> str:
    if not args:
        raise _Fault("bad argument #1 to `type' (value expected)")
    return _type_name(args[0])


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


def _inside(idx, n: int) -> bool:
    return isinstance(idx, np.ndarray) and (idx.size == 0 or (
        bool(np.all(idx == np.floor(idx))) and idx.min() >= 0 and idx.max() < n))


def _per_cell(x, n: int) -> np.ndarray | None:
    if _is_number(x):
        return np.full(n, float(x))
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


__all__ = ["BenchProfile", "DEFAULT_LOAD_OHMS", "TspInstrument", "TspServer", "frame", "singles", "unsingles"]
