"""The home-made array-controller board (serial_board.md) emulated over the software crossbar:
its firmware's line protocol (``BoardEmulator``) served on TCP (``BoardServer``), which the
serial driver reaches through pyserial's ``socket://`` URLs. Every command received is logged
(JSON lines, with the largest voltage, current and pulse width it asked for) before it is
checked, so a test can assert that nothing beyond the limits was ever sent.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .. import board_protocol as bp
from ..errors import LimitViolation
from ..mock import SoftwareCrossbar
from .faults import Faults, FaultyServer

_REPLY_CACHE = 64


class BoardEmulator:
    """The board's firmware over a :class:`SoftwareCrossbar`: one line in, one line out."""

    model = "ArrayBoard-emu"

    def __init__(self, xbar: SoftwareCrossbar, *, log: Path | None = None):
        self.xbar = xbar.open()
        self._replies: OrderedDict[int, bytes] = OrderedDict()
        self._log = open(log, "a", encoding="utf-8") if log else None
        self.commands = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._log:
            self._log.close()
            self._log = None

    def handle(self, line: bytes, replies: OrderedDict | None = None) -> bytes | None:
        """The reply to one received line (None: nothing to answer). ``replies``: the memory of
        the connection the line came on (the board's own when None)."""
        replies = self._replies if replies is None else replies
        with self._lock:
            try:
                seq, body = bp.parse(line)
            except bp.FrameError as exc:
                return None if exc.seq is None else bp.frame(exc.seq, f"ERR FRAME {exc}")
            if seq in replies:                  # a resend: answer again, do not execute again
                return replies[seq]
            self.commands += 1
            reply = bp.frame(seq, self._execute(body))
            replies[seq] = reply
            while len(replies) > _REPLY_CACHE:
                replies.popitem(last=False)
            return reply

    # ------------------------------------------------------------- commands
    def _execute(self, body: str) -> str:
        name, *args = body.split(" ")
        try:
            handler = getattr(self, "_cmd_" + name.rstrip("?").lower() + ("_q" if name.endswith("?") else ""))
        except AttributeError:
            return f"ERR SYNTAX unknown command {name!r}"
        try:
            return handler(*args)
        except LimitViolation as exc:
            return f"ERR LIMIT {exc.cause}"
        except (TypeError, ValueError) as exc:
            return f"ERR SYNTAX {name}: {exc}"

    def _record(self, command: str, **fields) -> None:
        if self._log:
            self._log.write(json.dumps({"t": self.xbar.now(), "command": command, **fields}) + "\n")
            self._log.flush()

    def _cmd_idn_q(self) -> str:
        rows, cols = self.xbar.shape
        return f"OK {self.model},{self.xbar.identity.array_id},1.0,{rows},{cols}"

    def _cmd_lim_q(self) -> str:
        lim = self.xbar.limits
        return (f"OK {lim.max_read_voltage_v!r} {lim.max_write_voltage_v!r} {lim.compliance_current_a!r} "
                f"{lim.min_pulse_width_s!r} {lim.max_pulse_width_s!r}")

    def _cmd_conv_q(self) -> str:
        c = self.xbar.converters()
        fmt = lambda v: "-" if v is None else repr(v)  # noqa: E731
        ranges = " ".join(repr(float(r)) for r in (c.adc_ranges_a or ()))
        return f"OK {fmt(c.dac_bits)} {fmt(c.dac_range_v)} {fmt(c.adc_bits)} {fmt(c.adc_range_a)} {ranges}".rstrip()

    def _cmd_time_q(self) -> str:
        return f"OK {self.xbar.now()!r}"

    def _cmd_wait(self, seconds: str) -> str:
        s = float(seconds)
        if not s >= 0:
            raise ValueError("wait needs a non-negative time")
        self._record("WAIT", seconds=s)
        self.xbar.wait(s)
        return "OK"

    def _cmd_read(self, voltage: str, rows: str, cols: str) -> str:
        v, r, c = float(voltage), bp.decode(rows, "u16"), bp.decode(cols, "u16")
        self._record("READ", max_voltage_v=abs(v), cells=int(r.size * c.size))
        return "OK " + bp.encode(self.xbar.read(r, c, voltage_v=v), "f32")

    def _cmd_pulse(self, compliance: str, rows: str, cols: str, amps: str, widths: str) -> str:
        r, c = bp.decode(rows, "u16"), bp.decode(cols, "u16")
        a, w, comp = bp.decode(amps, "f64"), bp.decode(widths, "f64"), float(compliance)
        if not r.size == c.size == a.size == w.size:
            raise ValueError(f"rows, cols, amplitudes and widths differ in length ({r.size}, {c.size}, {a.size}, "
                             f"{w.size})")
        self._record("PULSE", cells=int(r.size), compliance_a=comp,
                     max_voltage_v=float(np.abs(a).max()) if a.size else 0.0,
                     min_width_s=float(w.min()) if w.size else None, max_width_s=float(w.max()) if w.size else None)
        self.xbar.pulse(r, c, a, w, compliance_a=comp)
        return "OK"

    def _cmd_mvm(self, batch: str, adc_range: str, volts: str) -> str:
        v = bp.decode(volts, "f32")
        n = int(batch)
        if n < 1 or v.size != n * self.xbar.shape[0]:
            raise ValueError(f"{v.size} voltages for a batch of {n} on {self.xbar.shape[0]} rows")
        rng = None if adc_range == "-" else float(adc_range)
        self._record("MVM", batch=n, max_voltage_v=float(np.abs(v).max()))
        return "OK " + bp.encode(self.xbar.mvm(v.reshape(n, -1), adc_range_a=rng), "f32")


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: BoardServer = self.server        # type: ignore[assignment]
        faults = server.faults
        replies: OrderedDict = OrderedDict()     # a new connection is a new session
        for line in self.rfile:
            reply = server.board.handle(line, replies)
            if reply is None:
                continue
            if faults.disconnect_after is not None and server.board.commands > faults.disconnect_after:
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            server.deliver(self.wfile, reply)


class BoardServer(FaultyServer):
    """A TCP server speaking the board protocol; ``url`` is what the driver connects to."""

    def __init__(self, board: BoardEmulator, port: int = 0, host: str = "127.0.0.1", faults: Faults | None = None):
        super().__init__(_Handler, board, port, host, faults)
        self.board = board

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"socket://{host}:{port}"


__all__ = ["BoardEmulator", "BoardServer", "Faults"]
