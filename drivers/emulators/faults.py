"""Transport faults an emulator injects into its replies, and the TCP server every emulated
instrument runs in, which injects them."""

from __future__ import annotations

import random
import socketserver
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO


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


class FaultyServer(socketserver.ThreadingTCPServer):
    """A threaded TCP server for one emulated instrument (anything with ``close()``), delivering its
    replies through :meth:`deliver`, which applies the :class:`Faults`."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, handler: type[socketserver.BaseRequestHandler], emulated, port: int = 0,
                 host: str = "127.0.0.1", faults: Faults | None = None):
        super().__init__((host, port), handler)
        self.emulated = emulated
        self.faults = faults or Faults()
        self.rng = random.Random(self.faults.seed)
        self.drop_next = 0                  # replies to drop before the random faults apply (for tests)

    def deliver(self, out: BinaryIO, reply: bytes) -> None:
        """Send ``reply`` after the added latency, unless it is dropped; maybe garbled on the way."""
        if self.faults.latency_s:
            time.sleep(self.faults.latency_s)
        if self.drop_next > 0:
            self.drop_next -= 1
            return
        u = self.rng.random()
        if u < self.faults.drop:
            return
        if u < self.faults.drop + self.faults.garble:
            reply = garbled(reply, self.rng)
        out.write(reply)
        out.flush()

    def start(self) -> "FaultyServer":
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.emulated.close()
