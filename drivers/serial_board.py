"""Host driver for a home-made array-controller board on a serial port (protocol: serial_board.md).

``SerialBoardCrossbar("/dev/ttyACM0", rows=64, cols=64)`` or, for the emulator,
``SerialBoardCrossbar("socket://127.0.0.1:7000", ...)``: any URL pyserial's
``serial_for_url`` accepts. Limits are checked twice before a byte is sent: by the
Crossbar interface against the configured limits, which :meth:`_open` tightens to
the board's own hard limits; the board checks them a third time.

Transport faults are retried: a late, lost or garbled reply makes the driver resend
the same sequence number (the board executes each number once, so a resent pulse is
not applied twice), with exponential back-off, at most ``retries`` times; then the
command fails with :class:`InstrumentTimeout` or :class:`InstrumentIOError`.
"""

from __future__ import annotations

import os
import time

import numpy as np
import serial

from . import board_protocol as bp
from .errors import CrossbarError, InstrumentIOError, InstrumentTimeout, LimitViolation
from .interface import ConverterSpec, Crossbar, CrossbarIdentity
from .limits import SafetyLimits


class SerialBoardCrossbar(Crossbar):
    def __init__(self, url: str, rows: int, cols: int, *, limits: SafetyLimits | None = None,
                 timeout_s: float = 2.0, retries: int = 4, backoff_s: float = 0.02, baudrate: int = 115200):
        super().__init__(CrossbarIdentity(backend="serial", instrument_id=f"serial-board:{url}", array_id=url,
                                          rows=rows, cols=cols), limits or SafetyLimits())
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.baudrate = baudrate
        self.retried = 0               # resends so far (faults survived)
        self._port: serial.SerialBase | None = None
        # a random start, so that replies a board remembers from an earlier session never answer this one's
        self._seq = int.from_bytes(os.urandom(4), "little") % (bp.MAX_SEQ // 2)
        self._buffer = bytearray()
        self._converters = ConverterSpec()

    # ------------------------------------------------------------- life cycle
    def _open(self) -> None:
        try:
            self._port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=self.timeout_s)
        except (serial.SerialException, ValueError) as exc:
            raise InstrumentIOError(self._name, "open", f"cannot open {self.url!r}: {exc}") from exc
        try:
            model, serial_no, firmware, rows, cols = self._command("IDN?").split(",")
            if (int(rows), int(cols)) != self.shape:
                raise CrossbarError(self._name, "IDN?", f"the board holds a {rows}x{cols} array, "
                                                        f"{self.shape[0]}x{self.shape[1]} was expected")
            self._identity = CrossbarIdentity(backend="serial", instrument_id=f"{model}:{serial_no}@{self.url}",
                                              array_id=f"{model}:{serial_no}", rows=int(rows), cols=int(cols),
                                              model=model, firmware=firmware)
            v_read, v_write, compliance, w_min, w_max = (float(x) for x in self._command("LIM?").split())
            hard = SafetyLimits(max_read_voltage_v=v_read, max_write_voltage_v=v_write,
                                compliance_current_a=compliance, min_pulse_width_s=w_min, max_pulse_width_s=w_max)
            self._limits = self._limits.tightened(hard)
            self._converters = _converters(self._command("CONV?"))
        except BaseException:
            self._port.close()
            raise

    def _close(self) -> None:
        if self._port is not None:
            self._port.close()
            self._port = None

    def converters(self) -> ConverterSpec:
        return self._converters

    # ------------------------------------------------------------------ clock
    def now(self) -> float:
        return float(self._command("TIME?"))

    def wait(self, seconds: float) -> None:
        if seconds > 0:
            self._command(f"WAIT {float(seconds)!r}", extra_timeout_s=float(seconds))

    # ------------------------------------------------------------- operations
    def _read(self, rows, cols, voltage_v):
        payload = self._command(f"READ {voltage_v!r} {bp.encode(rows, 'u16')} {bp.encode(cols, 'u16')}")
        return self._array(payload, (len(rows), len(cols)), "READ").astype(np.float64)

    def _pulse(self, rows, cols, amplitude_v, width_s, compliance_a):
        self._command(f"PULSE {compliance_a!r} {bp.encode(rows, 'u16')} {bp.encode(cols, 'u16')} "
                      f"{bp.encode(amplitude_v, 'f64')} {bp.encode(width_s, 'f64')}")

    def _mvm(self, voltages_v, adc_range_a=None):
        rng = "-" if adc_range_a is None else repr(float(adc_range_a))
        payload = self._command(f"MVM {voltages_v.shape[0]} {rng} {bp.encode(voltages_v, 'f32')}")
        return self._array(payload, (voltages_v.shape[0], self.shape[1]), "MVM")

    # -------------------------------------------------------------- transport
    def _array(self, payload: str, shape: tuple[int, int], command: str) -> np.ndarray:
        try:
            values = bp.decode(payload, "f32")
        except ValueError as exc:
            raise InstrumentIOError(self._name, command, f"undecodable reply: {exc}") from None
        if values.size != shape[0] * shape[1]:
            raise InstrumentIOError(self._name, command, f"reply holds {values.size} values, {shape} expected")
        return values.reshape(shape)

    def _command(self, body: str, *, extra_timeout_s: float = 0.0) -> str:
        """Send ``body``, return the payload of its OK reply; resend on faults, raise on errors."""
        name = body.split(" ", 1)[0]
        if self._port is None:
            raise InstrumentIOError(self._name, name, "the port is closed")
        try:
            return self._exchange(name, body, extra_timeout_s)
        except (serial.SerialException, OSError) as exc:
            raise InstrumentIOError(self._name, name, f"connection lost: {exc}") from exc

    def _exchange(self, name: str, body: str, extra_timeout_s: float) -> str:
        self._seq = self._seq % bp.MAX_SEQ + 1
        seq = self._seq
        message = bp.frame(seq, body)
        last = "no reply"
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
                self._port.reset_input_buffer()
                self._buffer.clear()
            self._port.write(message)
            reply = self._reply(seq, self.timeout_s + extra_timeout_s)
            if reply is None:
                last = f"no reply within {self.timeout_s + extra_timeout_s:g} s"
                continue
            if reply.startswith("OK"):
                return reply[2:].strip()
            code, _, text = reply[4:].partition(" ") if reply.startswith("ERR ") else ("?", "", reply)
            if code in ("FRAME", "BUSY"):
                last = f"board answered {code} {text}"
                continue
            if code == "LIMIT":
                raise LimitViolation(self._name, name, f"the board refused: {text}")
            if code == "FAULT":
                raise InstrumentIOError(self._name, name, f"the board reports a fault: {text}")
            raise CrossbarError(self._name, name, f"the board answered {reply!r}")
        cls = InstrumentTimeout if last.startswith("no reply") else InstrumentIOError
        raise cls(self._name, name, f"{last}, after {self.retries + 1} attempts")

    def _reply(self, seq: int, timeout_s: float) -> str | None:
        """The body of the reply to ``seq``; None if none arrives in time (stale replies to earlier
        numbers and garbled lines are skipped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            line = self._readline(remaining)
            if line is None:
                return None
            try:
                got, body = bp.parse(line)
            except bp.FrameError:
                continue
            if got == seq:
                return body


    def _readline(self, timeout_s: float) -> bytes | None:
        """One line from the port, read in chunks (pyserial's readline takes one byte per call,
        far too slow for a megabyte of base64); None on timeout."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # block for the first byte, then take whatever has arrived without waiting (in_waiting is
            # only 0 or 1 on pyserial's socket:// ports, so it cannot size the read)
            self._port.timeout = remaining
            first = self._port.read(1)
            if not first:
                return None
            self._port.timeout = 0
            self._buffer += first + self._port.read(1 << 20)
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line + b"\n"


def _converters(text: str) -> ConverterSpec:
    fields = text.split()
    num = lambda s, kind: None if s == "-" else kind(s)  # noqa: E731
    ranges = tuple(float(x) for x in fields[4:]) or None
    return ConverterSpec(dac_bits=num(fields[0], int), dac_range_v=num(fields[1], float),
                         adc_bits=num(fields[2], int), adc_range_a=num(fields[3], float), adc_ranges_a=ranges)


__all__ = ["SerialBoardCrossbar"]
