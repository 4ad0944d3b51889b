"""Turn a backend name and a protocol into an (unopened) Crossbar.

Code above this module never asks which backend it holds; this is the one place
that knows the concrete drivers.
"""

from __future__ import annotations

from drivers import Crossbar, CrossbarError

from .protocol import Protocol

# Each driver is imported when chosen: the software crossbar brings numba, the VISA bench pyvisa,
# and a bench user's start-up should pay for neither of the others.

BACKENDS = ("mock", "serial", "arc2", "visa")
DEFAULT_SEED = 0


class BackendError(Exception):
    """The backend cannot be used with this protocol; nothing has been sent to any instrument."""


def make_backend(name: str, protocol: Protocol, seed: int | None,
                 resource: str | None = None) -> tuple[Crossbar, dict]:
    """The crossbar for ``name`` with the protocol's limits applied, and the options to record with the run.
    ``resource``: where a bench instrument is (a pyserial URL or port for ``serial``, a VISA resource string
    for ``visa``)."""
    if name not in BACKENDS:
        raise BackendError(f"backend {name!r} is not available; choose one of: {', '.join(BACKENDS)}")
    if name == "serial":
        from drivers.serial_board import SerialBoardCrossbar
        return _bench(name, SerialBoardCrossbar, protocol, seed, resource, "the board's port (/dev/ttyACM0, COM3) or URL "
                      "(socket://host:port for python -m drivers.emulate serial)")
    if name == "visa":
        from drivers.visa_bench import VisaBenchCrossbar
        return _bench(name, VisaBenchCrossbar, protocol, seed, resource, "the SMU's VISA resource "
                      "(TCPIP::host::5025::SOCKET, or what python -m drivers.emulate smu prints)")
    if name == "arc2":
        return _arc2(protocol, seed, resource or protocol.bench.resource)
    if resource:
        raise BackendError("--resource is for bench backends; the mock needs none")
    # The protocol's mock.seed is the simulated chip; the run seed (--seed) its session's noise and
    # random patterns, so several runs can measure the same chip.
    chip = protocol.mock.seed if protocol.mock.seed is not None else DEFAULT_SEED
    run_seed = seed if seed is not None else chip
    from drivers.mock import SoftwareCrossbar
    xbar = SoftwareCrossbar(protocol.array.rows, protocol.array.cols, config=protocol.mock.device, seed=chip,
                            noise_seed=None if run_seed == chip else run_seed)
    check_shape(xbar, protocol)
    xbar.restrict_limits(protocol.limits)
    return xbar, {"seed": run_seed, "chip_seed": chip, "device": protocol.mock.device.model_dump()}


def _bench(name: str, driver, protocol: Protocol, seed: int | None, resource: str | None,
           what: str) -> tuple[Crossbar, dict]:
    """A bench driver taking (resource, rows, cols, limits, timeout_s, retries), unopened: the runner opens
    it, and the instrument's own hard limits then tighten the protocol's further."""
    resource = resource or protocol.bench.resource
    if not resource:
        raise BackendError(f"the {name} backend needs --resource (or bench.resource in the protocol): "
                           f"{what}")
    bench = protocol.bench
    xbar = driver(resource, protocol.array.rows, protocol.array.cols, limits=protocol.limits,
                  timeout_s=bench.timeout_s, retries=bench.retries)
    return xbar, {"resource": resource, "timeout_s": bench.timeout_s, "retries": bench.retries,
                  "seed": seed if seed is not None else DEFAULT_SEED}


def _arc2(protocol: Protocol, seed: int | None, resource: str | None) -> tuple[Crossbar, dict]:
    from drivers.arc2 import Arc2Crossbar, parse_resource, require_pyarc2
    try:
        board_id, firmware = parse_resource(resource) if resource else (None, None)
        require_pyarc2()          # refused before a run is recorded when the vendor bindings are missing
        xbar = Arc2Crossbar(board_id, firmware, rows=protocol.array.rows, cols=protocol.array.cols,
                            limits=protocol.limits)
    except (ValueError, CrossbarError) as exc:
        raise BackendError(f"the arc2 backend: {exc}") from None
    if xbar.firmware is None:
        raise BackendError("the arc2 backend needs the board's firmware file: --resource ID:/path/to/fw.bin "
                           "(or bench.resource in the protocol, or $ARC2_FIRMWARE)")
    return xbar, {"resource": resource, "board_id": board_id, "firmware": str(xbar.firmware),
                  "mapping": xbar.mapping.name, "idle": xbar.idle, "notes": list(xbar.notes),
                  "seed": seed if seed is not None else DEFAULT_SEED}


def check_shape(xbar: Crossbar, protocol: Protocol) -> None:
    want = (protocol.array.rows, protocol.array.cols)
    if xbar.shape != want:
        raise BackendError(f"the protocol's array is {want[0]}x{want[1]} but "
                           f"{xbar.identity.instrument_id} has {xbar.shape[0]}x{xbar.shape[1]} cells")
