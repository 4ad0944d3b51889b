"""Host driver for a source-measure-unit + switch-matrix bench over VISA (contract: visa_bench.md).

``VisaBenchCrossbar("TCPIP::192.168.0.20::5025::SOCKET", rows=64, cols=64)``: a Keithley 2600B
in TSP with a 707B/708B matrix as TSP-Link node 2, both behind one VISA resource; for the
emulator, ``python -m drivers.emulate smu`` prints the resource to use. At open the driver uploads
the ``hil`` TSP script (tsp_script.py), so that a whole slice read, pulse batch or MVM is one
transaction. Limits are checked twice before a chunk is sent: by the Crossbar interface against the
configured limits, which :meth:`_open` tightens to the bench profile's; the script checks them again.

Transport faults are retried (transport.py): a late, lost or garbled reply makes the driver resend the same call
id (the script executes each id once, so a resent pulse is not applied twice), with exponential
back-off, at most ``retries`` times. After a timeout the instrument's error queue is read: a chunk
the instrument rejected is reported with its error instead of being resent.
"""

from __future__ import annotations

import base64
import binascii
import socket
import zlib

import numpy as np
import pyvisa
from pydantic import ValidationError
from pyvisa import constants as vc

from .errors import CrossbarError, InstrumentIOError, InstrumentTimeout, LimitViolation, NotConnected
from .interface import ConverterSpec, Crossbar, CrossbarIdentity
from .limits import SafetyLimits
from .transport import GARBLED, Answer, Calls, Link
from .tsp_script import HIL_SCRIPT, SCRIPT_NAME

MAX_ID = 2 ** 31 - 1
SMUS = ("smua", "smub")    # A drives word lines; B holds a bit line at 0 V and measures its current
# Leaves the array disconnected and both sources at 0 V with their outputs off; needs no script.
_IDLE = (*(f"{ch}.source.levelv = 0" for ch in SMUS), 'node[2].channel.open("allslots")',
         *(f"{ch}.source.output = {ch}.OUTPUT_OFF" for ch in SMUS))


class VisaBenchCrossbar(Crossbar):
    """A crossbar behind an SMU and a switch matrix. ``resource``: the VISA resource string;
    ``timeout_s``: how long to wait for one reply (s), stretched by the profile's ``cell_time_s`` for
    each cell a call touches; ``retries``: resends of a call whose reply is late, lost or garbled;
    ``backoff_s``: the first pause before a resend (s), doubled each time; ``visa_library``: the
    pyvisa backend ("@py" for pyvisa-py, "" for the system VISA)."""

    def __init__(self, resource: str, rows: int, cols: int, *, limits: SafetyLimits | None = None,
                 timeout_s: float = 2.0, retries: int = 4, backoff_s: float = 0.02, visa_library: str = "@py"):
        super().__init__(CrossbarIdentity(backend="visa", instrument_id=f"visa-bench:{resource}", array_id=resource,
                                          rows=rows, cols=cols), limits or SafetyLimits())
        self.resource = resource
        self.visa_library = visa_library
        self._inst = None
        self._calls = Calls(lambda: self._name, _VisaLink(self), _answer, max_id=MAX_ID, timeout_s=timeout_s,
                            retries=retries, backoff_s=backoff_s)
        self._converters = ConverterSpec()
        self._cell_time_s = 0.0
        self._suspect = False          # an I/O error was seen: closing may not reach the instrument

    @property
    def retried(self) -> int:
        """Resends so far (faults survived)."""
        return self._calls.retried

    @property
    def exchanges(self) -> int:
        """Messages that waited for a reply, resends included."""
        return self._calls.exchanges

    # ------------------------------------------------------------- life cycle
    def _open(self) -> None:
        try:
            rm = pyvisa.ResourceManager(self.visa_library)
            self._inst = rm.open_resource(self.resource, read_termination="\n", write_termination="\n",
                                          timeout=int(self._calls.timeout_s * 1000))
        except Exception as exc:       # pyvisa-py reports a refused connection as a bare Exception
            self._release()
            raise InstrumentIOError(self._name, "open", f"cannot open {self.resource!r}: {exc}") from exc
        self._no_delay()
        try:
            self._setup()
        except BaseException:
            self._safe_idle()
            self._release()
            raise

    def _no_delay(self) -> None:
        """Turn Nagle's algorithm off: pyvisa-py writes a long request in 4 kB pieces, and with it on each
        piece after the first waits for the instrument's (delayed, up to 40 ms) acknowledgement."""
        try:
            self._inst.set_visa_attribute(vc.ResourceAttribute.tcpip_nodelay, vc.VI_TRUE)
            return
        except Exception:              # pyvisa-py 0.8 has no setter for it: reach its socket instead
            pass
        session = getattr(self._inst.visalib, "sessions", {}).get(self._inst.session)
        sock = getattr(session, "interface", None)
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _setup(self) -> None:
        _, model, serial_no, firmware = self._identify()
        model = model.removeprefix("Model ")
        self._send(["reset()", "errorqueue.clear()", f"loadscript {SCRIPT_NAME}", *HIL_SCRIPT.splitlines(),
                    "endscript", f"{SCRIPT_NAME}.run()"], "loadscript")
        array_id, rows, cols, hard, self._cell_time_s, self._converters = self._profile(self._call("profile"))
        if (rows, cols) != self.shape:
            raise CrossbarError(self._name, "hil.profile", f"the bench holds a {rows}x{cols} array, "
                                                           f"{self.shape[0]}x{self.shape[1]} was expected")
        self._limits = self._limits.tightened(hard)
        self._identity = CrossbarIdentity(backend="visa", instrument_id=f"{model}:{serial_no}@{self.resource}",
                                          array_id=array_id, rows=rows, cols=cols, model=model, firmware=firmware)
        self._apply(self._smu_setup(), "setup")

    def _smu_setup(self) -> list[str]:
        lim = self._limits
        lines = []
        for ch in SMUS:
            lines += [
                f"{ch}.source.output = {ch}.OUTPUT_OFF",
                f"{ch}.source.func = {ch}.OUTPUT_DCVOLTS",
                # off = a 0 V source held to the compliance: no output-relay click per transaction
                f"{ch}.source.offmode = {ch}.OUTPUT_NORMAL",
                f"{ch}.source.offfunc = {ch}.OUTPUT_DCVOLTS",
                f"{ch}.source.offlimiti = {lim.compliance_current_a!r}",
                f"{ch}.source.autorangev = {ch}.AUTORANGE_OFF",
                f"{ch}.source.rangev = {lim.max_write_voltage_v!r}",
                f"{ch}.source.levelv = 0",
                f"{ch}.source.limiti = {lim.compliance_current_a!r}",
                f"{ch}.measure.autorangei = {ch}.AUTORANGE_ON",
                f"{ch}.measure.nplc = 1",
            ]
        return lines + ["node[2].channel.connectrule = node[2].channel.BREAK_BEFORE_MAKE",
                        'node[2].channel.open("allslots")']

    def _close(self) -> None:
        if self._inst is None:
            return
        try:
            # leave the bench with the output relay open, not merely at 0 V
            lines = [*_IDLE, *(f"{ch}.source.offmode = {ch}.OUTPUT_HIGH_Z" for ch in SMUS),
                     *(f"{ch}.source.output = {ch}.OUTPUT_OFF" for ch in SMUS)]
            if self._suspect:
                self._send(lines, "close")
            else:
                self._apply(lines, "close")
        except CrossbarError:
            if not self._suspect:
                raise
        finally:
            self._release()

    def _release(self) -> None:
        # Only the instrument session: pyvisa shares one ResourceManager per VISA library, and closing
        # it would close every other driver's sessions too.
        if self._inst is not None:
            try:
                self._inst.close()
            except Exception:          # closing a session on a dead link must not hide the first error
                pass
        self._inst = None

    def _apply(self, lines: list[str], command: str) -> None:
        """Send settings (chunks without replies), then drain the error queue: chunks run in order, so
        its answer confirms they were taken, and any the instrument rejected are named."""
        self._send(lines, command)
        queued = self._error_queue(command, confirm=True)
        if queued:
            raise CrossbarError(self._name, command, f"the instrument rejected a setting: {'; '.join(queued)}")

    def _safe_idle(self) -> None:
        """Output off and relays open, best effort: called on errors, when the link may be gone."""
        if self._inst is not None:
            try:
                self._send(list(_IDLE), "idle")
            except CrossbarError:
                pass

    def converters(self) -> ConverterSpec:
        return self._converters

    def restrict_limits(self, limits: SafetyLimits) -> None:
        super().restrict_limits(limits)
        if self._inst is not None:     # the instrument's own current limit follows the driver's
            c = self._limits.compliance_current_a
            self._apply([f"{ch}.source.{limit} = {c!r}" for ch in SMUS for limit in ("limiti", "offlimiti")],
                        "source.limiti")

    # ------------------------------------------------------------------ clock
    def now(self) -> float:
        return float(self._call("time"))

    def wait(self, seconds: float) -> None:
        if seconds > 0:
            self._call("wait", repr(float(seconds)), extra_timeout_s=float(seconds))

    # ------------------------------------------------------------- operations
    def _read(self, rows, cols, voltage_v):
        n = len(rows) * len(cols)
        payload = self._operate("read", repr(voltage_v), _ints(rows), _ints(cols),
                                extra_timeout_s=n * self._cell_time_s)
        return _singles(payload, (len(rows), len(cols)), self._name, "hil.read").astype(np.float64)

    def _pulse(self, rows, cols, amplitude_v, width_s, compliance_a):
        n = len(rows)
        payload = self._operate("pulse", repr(float(compliance_a)), _ints(rows), _ints(cols),
                                _floats(amplitude_v, "amplitude"), _floats(width_s, "width"),
                                extra_timeout_s=n * self._cell_time_s + float(width_s.sum()))
        if payload.strip() != str(n):
            raise InstrumentIOError(self._name, "hil.pulse",
                                    f"the instrument applied {payload!r} pulses, {n} were sent")

    def _mvm(self, voltages_v, adc_range_a=None):
        batch = voltages_v.shape[0]
        rows, cols = self.shape
        volts = base64.b64encode(np.ascontiguousarray(voltages_v, "<f4").tobytes()).decode("ascii")
        # superposition on the bench: at worst one measurement per row, column and vector
        payload = self._operate("mvm", str(batch), "nil" if adc_range_a is None else repr(float(adc_range_a)),
                                f'"{volts}"', extra_timeout_s=batch * rows * cols * self._cell_time_s)
        return _singles(payload, (batch, cols), self._name, "hil.mvm")

    def _operate(self, fn: str, *args: str, extra_timeout_s: float = 0.0) -> str:
        """An array operation: after any failure but a refusal, the output is turned off, since a call
        that failed mid-batch may have left it on."""
        try:
            return self._call(fn, *args, extra_timeout_s=extra_timeout_s)
        except LimitViolation:
            raise                      # refused before anything moved
        except CrossbarError:
            self._safe_idle()
            raise

    # ------------------------------------------------------------ bench data
    def _profile(self, payload: str):
        """(array_id, rows, cols, hard limits, cell time, converters) from the hil.profile reply."""
        f = payload.split(" ")
        try:
            opt = lambda s, kind: None if s == "-" else kind(float(s))  # noqa: E731
            hard = SafetyLimits(max_read_voltage_v=float(f[3]), max_write_voltage_v=float(f[4]),
                                compliance_current_a=float(f[5]), min_pulse_width_s=float(f[6]),
                                max_pulse_width_s=float(f[7]))
            ranges = tuple(float(x) for x in f[13:]) or None
            conv = ConverterSpec(dac_bits=opt(f[9], int), dac_range_v=opt(f[10], float), adc_bits=opt(f[11], int),
                                 adc_range_a=opt(f[12], float), adc_ranges_a=ranges)
            return f[0], int(float(f[1])), int(float(f[2])), hard, opt(f[8], float) or 0.0, conv
        except (IndexError, ValueError, ValidationError) as exc:
            raise CrossbarError(self._name, "hil.profile", f"the bench profile is unusable: {exc}") from None

    def _identify(self) -> list[str]:
        """*IDN? fields; the reply is unframed, so it is taken once two in a row agree."""
        calls = self._calls
        previous, last = None, "no reply"
        for attempt in range(calls.retries + 2):
            if attempt:
                calls.back_off(attempt)
            self._send(["*IDN?"], "*IDN?")
            calls.exchanges += 1
            raw = calls.link.readline(calls.timeout_s, "*IDN?")
            if raw is None:
                last = f"no reply within {calls.timeout_s:g} s"
                continue
            line = raw.decode("ascii", "replace").rstrip("\r\n")
            fields = [x.strip() for x in line.split(",")]
            if len(fields) != 4:
                last = f"not an identity: {line[:80]!r}"
            elif line == previous:
                return fields
            previous = line
        cls = InstrumentTimeout if last.startswith("no reply") else InstrumentIOError
        raise cls(self._name, "*IDN?", f"{last}, after {calls.retries + 2} attempts")

    # -------------------------------------------------------------- transport
    def _call(self, fn: str, *args: str, extra_timeout_s: float = 0.0) -> str:
        """Call ``hil.<fn>`` and return the payload of its OK reply; resend on faults, raise on errors."""
        tail = "".join(", " + a for a in args)
        return self._calls.call(f"hil.{fn}", lambda call_id: f"hil.{fn}({call_id}{tail})\n".encode("ascii"),
                                extra_timeout_s=extra_timeout_s, on_silence=self._silence)

    def _silence(self, command: str) -> None:
        """After a silent wait: a chunk the instrument rejected (a syntax or run-time error gets no reply)
        is reported with its error instead of being resent."""
        queued = self._error_queue(command)
        if queued:
            raise CrossbarError(self._name, command, f"no reply; the instrument's error queue holds: "
                                                     f"{'; '.join(queued)}")

    def _error_queue(self, command: str, *, confirm: bool = False) -> list[str]:
        """The entries of the instrument's error queue, drained in one framed call. Without ``confirm``
        one attempt is made and an unreadable queue reads as empty (the caller resends anyway); with
        it, the call is retried like any other and must be answered."""
        if confirm:
            return self._call("errors").split("|")[1:]
        calls = self._calls
        call_id = calls.next_id()
        got = calls.exchange(f"hil.errors({call_id})\n".encode("ascii"), call_id, calls.timeout_s, command)
        if got is None or got is GARBLED or not got.ok:
            return []
        return got.text.split("|")[1:]

    def _send(self, lines: list[str], command: str) -> None:
        """Chunks that get no reply (settings, the script's upload)."""
        self._calls.link.send(("\n".join(lines) + "\n").encode("ascii"), command)


class _VisaLink(Link):
    """The driver's VISA session as lines; an I/O error marks the driver suspect (closing may not reach
    the instrument)."""

    def __init__(self, driver: VisaBenchCrossbar):
        self.driver = driver

    def send(self, data: bytes, command: str) -> None:
        d = self.driver
        if d._inst is None:
            raise NotConnected(d._name, command, "the instrument is not open")
        try:
            d._inst.write_raw(data)
        except (pyvisa.errors.Error, OSError) as exc:
            d._suspect = True
            raise InstrumentIOError(d._name, command, f"connection lost: {exc}") from exc

    def readline(self, timeout_s: float, command: str) -> bytes | None:
        d = self.driver
        try:
            d._inst.timeout = max(1, int(timeout_s * 1000))
            return d._inst.read_raw()
        except pyvisa.errors.VisaIOError as exc:
            if exc.error_code == vc.StatusCode.error_timeout:
                return None
            d._suspect = True
            raise InstrumentIOError(d._name, command, f"connection lost: {exc}") from exc
        except (pyvisa.errors.Error, OSError) as exc:
            d._suspect = True
            raise InstrumentIOError(d._name, command, f"connection lost: {exc}") from exc


def _answer(raw: bytes) -> Answer | None:
    """A framed reply line as an Answer (an ERR payload is "<code> <text>"); None if its checksum fails."""
    parsed = _unframe(raw.decode("ascii", "replace").rstrip("\r\n"))
    if parsed is None:
        return None
    call_id, status, payload = parsed
    if status == "OK":
        return Answer(call_id, "", payload)
    code, _, text = payload.partition(" ")
    return Answer(call_id, code or status, text)


def _unframe(line: str) -> tuple[int, str, str] | None:
    """(id, status, payload) of a reply line whose checksum holds, else None."""
    head, sep, check = line.rpartition("\t")
    parts = head.split("\t", 2)
    if not sep or len(parts) != 3 or not check.isdigit() or not parts[0].isdigit():
        return None
    if zlib.adler32(head.encode("ascii", "replace")) != int(check):
        return None
    return int(parts[0]), parts[1], parts[2]


def _ints(idx: np.ndarray) -> str:
    return _table(np.asarray(idx, dtype=np.int64), 0)


# Table entries of amplitudes (V) and widths (s) are sent in fixed point at these decimals: 1 nV and 1 ps,
# three orders below the finest source resolution (5 uV) and timer resolution (1 us) of a 2600B, so the
# instrument applies what it would have applied from the exact doubles.
_DECIMALS = {"amplitude": 9, "width": 12}


def _floats(values: np.ndarray, kind: str) -> str:
    """A Lua number when every cell gets the same value (repr: the exact double), else a table in fixed
    point, each entry rounded to the nearest step of ``_DECIMALS[kind]`` that is not larger in magnitude
    (so no entry exceeds a limit the value itself respected)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size and np.all(v == v[0]):
        return repr(float(v[0]))
    if not np.all(np.isfinite(v)):
        raise ValueError(f"non-finite {kind} in a pulse batch")
    decimals = _DECIMALS[kind]
    scale = 10.0 ** decimals
    q = np.rint(v * scale).astype(np.int64)
    q -= np.sign(q) * (np.abs(q / scale) > np.abs(v))
    return _table(q, decimals)


def _table(q: np.ndarray, decimals: int) -> str:
    """A Lua table constructor of the integers ``q`` shown with ``decimals`` decimal places, built as one
    array of characters: every entry zero-padded to the same width (Lua reads "-007.50" as -7.5), which
    costs a few bytes per entry and spares a Python-level format of each of thousands of numbers."""
    if q.size == 0:
        return "{}"
    mag = np.abs(q)
    width = max(len(str(int(mag.max()))), decimals + 1)        # at least one digit before the point
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    chars = np.empty((q.size, width + 2 + (decimals > 0)), dtype=np.uint8)
    chars[:, 0] = np.where(q < 0, ord("-"), ord(" "))
    digits = (mag[:, None] // powers) % 10 + ord("0")
    point = width - decimals
    chars[:, 1:1 + point] = digits[:, :point]
    if decimals:
        chars[:, 1 + point] = ord(".")
        chars[:, 2 + point:-1] = digits[:, point:]
    chars[:, -1] = ord(",")
    return "{" + chars.tobytes()[:-1].decode("ascii") + "}"


def _singles(payload: str, shape: tuple[int, int], name: str, command: str) -> np.ndarray:
    """The float32 array a reply carries as base64 of little-endian singles."""
    try:
        raw = base64.b64decode(payload.encode("ascii"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InstrumentIOError(name, command, f"unreadable reply: {exc}") from None
    if len(raw) % 4:
        raise InstrumentIOError(name, command, f"reply of {len(raw)} bytes is not a whole number of singles")
    values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if values.size != shape[0] * shape[1]:
        raise InstrumentIOError(name, command, f"reply holds {values.size} values, {shape} expected")
    return values.reshape(shape)


__all__ = ["VisaBenchCrossbar"]
