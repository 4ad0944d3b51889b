"""Emulators: the software crossbar behind a real instrument's wire protocol.

    python -m drivers.emulate serial --port 7000 [--rows 64 --cols 64 --seed 0 --log cmds.jsonl]

serves the array-controller board protocol (serial_board.md) on TCP port 7000 and
prints the resource string to give the real driver (``socket://127.0.0.1:7000``):
``python -m hil.run protocols/calibrate.yaml --backend serial --resource socket://127.0.0.1:7000``.

    python -m drivers.emulate smu --port 5025 [same options, --load-ohms 10000]

serves an SMU + switch-matrix bench speaking TSP (visa_bench.md, emulators/keithley2600.py) on a raw
socket and prints the VISA resource to use (``TCPIP::127.0.0.1::5025::SOCKET``) with
``--backend visa``, or for any Keithley 2600 client. Direct source and measure commands see
``--load-ohms`` across each channel's terminals.

Every command received is logged (JSON lines, with the largest voltage, current and
pulse width it asked for) before it is checked, so a test can assert that nothing
beyond the limits was ever sent. Faults can be injected: added latency, dropped and
garbled replies, and a disconnect after a number of commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .device_model import DeviceConfig
from .emulators.faults import Faults
from .emulators.keithley2600 import DEFAULT_LOAD_OHMS, TspInstrument, TspServer
from .emulators.serial_board import BoardEmulator, BoardServer
from .mock import SoftwareCrossbar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drivers.emulate", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["serial", "smu"],
                        help="which instrument to emulate: the serial array board, or an SMU + switch matrix (TSP)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free one)")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--cols", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="the simulated chip")
    parser.add_argument("--array-id", default=None, help="the id the emulated instrument reports for its array "
                        "(default: KIND-emulator-ROWSxCOLS-seedSEED)")
    parser.add_argument("--log", type=Path, help="append every command received to this JSON-lines file")
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--drop", type=float, default=0.0, help="probability a reply is lost")
    parser.add_argument("--garble", type=float, default=0.0, help="probability a reply is corrupted")
    parser.add_argument("--disconnect-after", type=int, help="drop the connection after this many commands")
    parser.add_argument("--load-ohms", type=float, default=DEFAULT_LOAD_OHMS,
                        help="smu: the resistor across each channel's terminals that direct source/measure "
                             "commands see (default %(default)g)")
    args = parser.parse_args(argv)
    if not args.load_ohms > 0:
        parser.error("--load-ohms must be a positive resistance")
    # Its own array id, so that runs through an emulator are not filed with the in-process mock's.
    xbar = SoftwareCrossbar(args.rows, args.cols, config=DeviceConfig(), seed=args.seed,
                            array_id=args.array_id or f"{args.kind}-emulator-{args.rows}x{args.cols}-seed{args.seed}")
    faults = Faults(args.latency_s, args.drop, args.garble, args.disconnect_after, args.seed)
    if args.kind == "smu":
        instrument = TspInstrument(xbar, log=args.log, load_ohms=args.load_ohms)
        server = TspServer(instrument, args.port, faults=faults)
        address, what, backend, close = server.resource, "SMU + switch-matrix bench (TSP)", "visa", instrument.close
    else:
        board = BoardEmulator(xbar, log=args.log)
        server = BoardServer(board, args.port, faults=faults)
        address, what, backend, close = server.url, "array-controller board", "serial", board.close
    print(f"emulated {what} ({args.rows}x{args.cols}, chip seed {args.seed}) at {address}", flush=True)
    print(f"use: --backend {backend} --resource {address}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
