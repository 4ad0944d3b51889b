"""Transport faults an emulator injects into its replies, shared by every emulated instrument."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Faults:
    latency_s: float = 0.0          # added before every reply
    drop: float = 0.0               # probability a reply is not sent
    garble: float = 0.0             # probability a reply is corrupted in transit
    disconnect_after: int | None = None   # close the connection after this many commands
    seed: int = 0


def garbled(reply: bytes, rng: random.Random) -> bytes:
    """``reply`` with one byte (never the final newline) replaced by another printable one."""
    data = bytearray(reply)
    i = rng.randrange(max(len(data) - 1, 1))
    data[i] = (data[i] + 1 + rng.randrange(20)) % 94 + 33         # another printable byte, never a newline
    return bytes(data)
