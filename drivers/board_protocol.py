"""Framing and encoding of the array-controller board's line protocol (see serial_board.md).

Shared by the host driver and the board emulator, so the two cannot disagree on a byte.
"""

from __future__ import annotations

import base64
import zlib

import numpy as np

MAX_SEQ = 2 ** 31 - 1
_KINDS = {"u16": "<u2", "f32": "<f4", "f64": "<f8"}


class FrameError(ValueError):
    """A line that is not a valid message (bad CRC, missing parts); ``seq`` is kept when readable."""

    def __init__(self, reason: str, seq: int | None = None):
        self.seq = seq
        super().__init__(reason)


def crc(text: str) -> str:
    return f"{zlib.crc32(text.encode('ascii')) & 0xFFFFFFFF:08x}"


def frame(seq: int, body: str) -> bytes:
    """``<seq> <body> *<crc>\\n`` as bytes."""
    text = f"{seq} {body}"
    return f"{text} *{crc(text)}\n".encode("ascii")


def parse(line: bytes | str) -> tuple[int, str]:
    """(seq, body) of one received line; raises :class:`FrameError`."""
    if isinstance(line, bytes):
        try:
            line = line.decode("ascii")
        except UnicodeDecodeError:
            raise FrameError("not ASCII") from None
    line = line.rstrip("\r\n")
    head, sep, check = line.rpartition(" *")
    seq_text = line.split(" ", 1)[0]
    seq = int(seq_text) if seq_text.isdigit() and int(seq_text) <= MAX_SEQ else None
    if not sep:
        raise FrameError("no CRC", seq)
    if crc(head) != check:
        raise FrameError("CRC mismatch", seq)
    if seq is None or " " not in head:
        raise FrameError("no sequence number or body", None)
    return seq, head.split(" ", 1)[1]


def encode(values, dtype: str) -> str:
    """Base64 of ``values`` as little-endian ``dtype`` ('u16', 'f32' or 'f64')."""
    kind = _KINDS[dtype]
    arr = np.asarray(values)
    if dtype == "u16" and arr.size and (arr.min() < 0 or arr.max() > 0xFFFF):
        raise ValueError("index outside 0..65535")
    return base64.b64encode(np.ascontiguousarray(arr, dtype=kind).tobytes()).decode("ascii")


def decode(text: str, dtype: str) -> np.ndarray:
    kind = _KINDS[dtype]
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"bad base64: {exc}") from None
    if len(raw) % np.dtype(kind).itemsize:
        raise ValueError(f"{len(raw)} bytes is not a whole number of {dtype} values")
    return np.frombuffer(raw, dtype=kind).astype({"u16": np.intp, "f32": np.float32, "f64": np.float64}[dtype])
