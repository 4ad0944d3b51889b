"""Host driver for a home-made array-controller board on a serial port (protocol: serial_board.md).

``SerialBoardCrossbar("/dev/ttyACM0", rows=64, cols=64)`` or, for the emulator,
``SerialBoardCrossbar("socket://127.0.0.1:7000", ...)``: any URL pyserial's
``serial_for_url`` accepts. Limits are checked twice before a byte is sent: by the
Crossbar interface against the configured limits, which :meth:`_open` tightens to
the board's own hard limits; the board checks them a third time.

Transport faults are retried (transport.py): a late, lost or garbled reply makes the
driver resend the same sequence number (the board executes each number once, so a
resent pulse is not applied twice), with exponential back-off, at most ``retries``
times; then the command fails with :class:`InstrumentTimeout` or :class:`InstrumentIOError`.
"""

from __future__ import annotations

import time

import numpy as np
import serial

from . import board_protocol as bp
from .errors import CrossbarError, InstrumentIOError, LimitViolation
from .interface import ConverterSpec, Crossbar, CrossbarIdentity
from .limits import SafetyLimits
from .transport import Answer, Calls, Link


class SerialBoardCrossbar(Crossbar):
    def __init__(self, url: str, rows: int, cols: int, *, limits: SafetyLimits | None = None,
                 timeout_s: float = 2.0, retries: int = 4, backoff_s: float = 0.02, baudrate: int = 115200):
        super().__init__(CrossbarIdentity(backend="serial", instrument_id=f"serial-board:{url}", array_id=url,
                                          rows=rows, cols=cols), limits or SafetyLimits())
        self.url = url
        self.baudrate = baudrate
        self._port: serial.SerialBase | None = None
        # FRAME: the board got the request damaged; BUSY: it could not take it yet. Both ask for it again.
        self._calls = Calls(lambda: self._name, _PortLink(self), _answer, max_id=bp.MAX_SEQ, timeout_s=timeout_s,
                            retries=retries, backoff_s=backoff_s, resend_codes=frozenset({"FRAME", "BUSY"}),
                            error=self._board_error)
        self._converters = ConverterSpec()

    @property
    def retried(self) -> int:
        """Resends so far (faults survived)."""
        return self._calls.retried

    # ------------------------------------------------------------- life cycle
    def _open(self) -> None:
        try:
            self._port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=self._calls.timeout_s)
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
        return self._calls.call(name, lambda seq: bp.frame(seq, body), extra_timeout_s=extra_timeout_s)

    def _board_error(self, command: str, answer: Answer) -> CrossbarError:
        if answer.code == "LIMIT":
            return LimitViolation(self._name, command, f"the board refused: {answer.text}")
        if answer.code == "FAULT":
            return InstrumentIOError(self._name, command, f"the board reports a fault: {answer.text}")
        return CrossbarError(self._name, command, f"the board answered {answer.code} {answer.text}".rstrip())


class _PortLink(Link):
    """The driver's serial port (any pyserial URL) as lines."""

    def __init__(self, driver: SerialBoardCrossbar):
        self.driver = driver
        self._buffer = bytearray()

    def send(self, data: bytes, command: str) -> None:
        try:
            self.driver._port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise InstrumentIOError(self.driver._name, command, f"connection lost: {exc}") from exc

    def discard_input(self) -> None:
        self.driver._port.reset_input_buffer()
        self._buffer.clear()

    def readline(self, timeout_s: float, command: str) -> bytes | None:
        """Read in chunks (pyserial's readline takes one byte per call, far too slow for a megabyte of
        base64)."""
        port = self.driver._port
        deadline = time.monotonic() + timeout_s
        try:
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                # block for the first byte, then take whatever has arrived without waiting (in_waiting is
                # only 0 or 1 on pyserial's socket:// ports, so it cannot size the read)
                port.timeout = remaining
                first = port.read(1)
                if not first:
                    return None
                port.timeout = 0
                self._buffer += first + port.read(1 << 20)
        except (serial.SerialException, OSError) as exc:
            raise InstrumentIOError(self.driver._name, command, f"connection lost: {exc}") from exc
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line + b"\n"


def _answer(line: bytes) -> Answer | None:
    """A board reply line as an Answer ("OK <payload>" or "ERR <code> <text>"); None if it fails its CRC."""
    try:
        seq, body = bp.parse(line)
    except bp.FrameError:
        return None
    if body.startswith("OK"):
        return Answer(seq, "", body[2:].strip())
    if body.startswith("ERR "):
        code, _, text = body[4:].partition(" ")
        return Answer(seq, code, text)
    return Answer(seq, "?", body)


def _converters(text: str) -> ConverterSpec:
    fields = text.split()
    num = lambda s, kind: None if s == "-" else kind(s)  # noqa: E731
    ranges = tuple(float(x) for x in fields[4:]) or None
    return ConverterSpec(dac_bits=num(fields[0], int), dac_range_v=num(fields[1], float),
                         adc_bits=num(fields[2], int), adc_range_a=num(fields[3], float), adc_ranges_a=ranges)


__all__ = ["SerialBoardCrossbar"]
