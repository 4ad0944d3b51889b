"""Backends by name: the bundled ones and a lab's own, found as plug-ins.

A backend is a callable registered in the entry-point group ``memristor_hil.backends``::

    factory(rows=R, cols=C, seed=S, resource=STR_OR_NONE, options=MAPPING) -> drivers.interface.Crossbar

``seed`` is the run's seed (its random draws, the mock's noise), ``resource`` where the instrument is
(``--resource`` or the protocol's ``bench.resource``), ``options`` the protocol's top-level
``backend_options:`` mapping ({} when absent), for the factory to validate. The crossbar comes back
unopened; whatever it is, this module then tightens its limits to the protocol's and checks its shape,
and the ``Crossbar`` base class checks every command against them. A lab registers its own bench in
its own package (see README, "Backends as plug-ins"); the bundled backends register the same way.

The bundled ones also read the protocol's own sections (``mock:`` for the software crossbar,
``bench:`` for timeouts and retries), handed to them as options: a protocol written for them needs
no ``backend_options``. Code above this module never asks which backend it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

from drivers import Crossbar, CrossbarError

from .protocol import Protocol

ENTRY_POINT_GROUP = "memristor_hil.backends"
DEFAULT_SEED = 0

Factory = Callable[..., Crossbar]


class BackendError(Exception):
    """The backend cannot be used with this protocol; nothing has been sent to any instrument."""


# ------------------------------------------------------------------------------ the bundled backends
# Each driver is imported when chosen: the software crossbar brings numba, the VISA bench pyvisa, and
# a bench user's start-up should pay for neither of the others.

def mock_backend(*, rows: int, cols: int, seed: int | None, resource: str | None,
                 options: Mapping[str, Any]) -> Crossbar:
    """The software crossbar. ``options``: ``chip_seed`` (which simulated chip: its hidden device
    parameters and id) and ``device`` (its device model), as the protocol's ``mock:`` section gives them.
    The run ``seed`` is the session's noise, so several runs can measure the same chip."""
    from drivers.mock import SoftwareCrossbar

    from .protocol import MockSpec
    if resource:
        raise ValueError("--resource is for bench backends; the mock needs none")
    spec = MockSpec.model_validate({"seed": options.get("chip_seed"), "device": options.get("device", {})})
    chip = spec.seed if spec.seed is not None else DEFAULT_SEED
    run_seed = seed if seed is not None else chip
    return SoftwareCrossbar(rows, cols, config=spec.device, seed=chip,
                            noise_seed=None if run_seed == chip else run_seed)


def serial_backend(*, rows: int, cols: int, seed: int | None, resource: str | None,
                   options: Mapping[str, Any]) -> Crossbar:
    """The array-controller board on a serial port (drivers/serial_board.md)."""
    from drivers.serial_board import SerialBoardCrossbar
    _need_resource(resource, "the board's port (/dev/ttyACM0, COM3) or URL (socket://host:port for "
                             "python -m drivers.emulate serial)")
    return SerialBoardCrossbar(resource, rows, cols, **_bench_settings(options))


def visa_backend(*, rows: int, cols: int, seed: int | None, resource: str | None,
                 options: Mapping[str, Any]) -> Crossbar:
    """A Keithley 2600B with a switch matrix over VISA (drivers/visa_bench.md)."""
    from drivers.visa_bench import VisaBenchCrossbar
    _need_resource(resource, "the SMU's VISA resource (TCPIP::host::5025::SOCKET, or what python -m "
                             "drivers.emulate smu prints)")
    return VisaBenchCrossbar(resource, rows, cols, **_bench_settings(options))


def arc2_backend(*, rows: int, cols: int, seed: int | None, resource: str | None,
                 options: Mapping[str, Any]) -> Crossbar:
    """An ArC TWO through the vendor's pyarc2 bindings; ``resource`` is ``ID[:FIRMWARE]``."""
    from drivers.arc2 import Arc2Crossbar, parse_resource, require_pyarc2
    board_id, firmware = parse_resource(resource) if resource else (None, None)
    require_pyarc2()          # refused before a run is recorded when the vendor bindings are missing
    from drivers import SafetyLimits
    xbar = Arc2Crossbar(board_id, firmware, rows=rows, cols=cols,
                        limits=SafetyLimits.model_validate(options.get("limits", {})))
    if xbar.firmware is None:
        raise ValueError("needs the board's firmware file: --resource ID:/path/to/fw.bin (or bench.resource in "
                         "the protocol, or $ARC2_FIRMWARE)")
    return xbar


def _need_resource(resource: str | None, what: str) -> None:
    if not resource:
        raise ValueError(f"needs --resource (or bench.resource in the protocol): {what}")


def _bench_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """Timeout, retries and the starting envelope of a bundled bench driver. The envelope is the protocol's
    (which may be wider than the framework's defaults, never than its absolute bounds); the instrument's
    own hard limits tighten it when it opens."""
    from drivers import SafetyLimits

    from .protocol import BenchSpec
    bench = BenchSpec.model_validate({k: options[k] for k in ("timeout_s", "retries") if k in options})
    limits = SafetyLimits.model_validate(options.get("limits", {}))
    return {"timeout_s": bench.timeout_s, "retries": bench.retries, "limits": limits}


def _bench_section(protocol: Protocol) -> dict[str, Any]:
    return {"timeout_s": protocol.bench.timeout_s, "retries": protocol.bench.retries,
            "limits": protocol.limits.model_dump()}


# name -> (factory, the options it takes from the protocol's own sections)
BUNDLED: dict[str, tuple[Factory, Callable[[Protocol], dict[str, Any]]]] = {
    "mock": (mock_backend, lambda p: {"chip_seed": p.mock.seed, "device": p.mock.device.model_dump()}),
    "serial": (serial_backend, _bench_section),
    "visa": (visa_backend, _bench_section),
    "arc2": (arc2_backend, lambda p: {"limits": p.limits.model_dump()}),
}


# ------------------------------------------------------------------------------ finding and making one

def available() -> dict[str, metadata.EntryPoint | Factory]:
    """Every backend by name: the registered entry points, and the bundled ones (also where this package
    runs from a source tree that was never installed, so that its entry points are not registered)."""
    found: dict[str, metadata.EntryPoint | Factory] = {name: factory for name, (factory, _) in BUNDLED.items()}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry)    # a plug-in cannot take a bundled name
    return found


def names() -> list[str]:
    return sorted(available())


def load(name: str) -> Factory:
    """The factory registered as ``name``; BackendError naming the available ones if there is none or it
    cannot be imported."""
    found = available()
    if name not in found:
        raise BackendError(f"backend {name!r} is not available; choose one of: {', '.join(sorted(found))} "
                           f"(plug-ins register in the entry-point group {ENTRY_POINT_GROUP})")
    target = found[name]
    if not isinstance(target, metadata.EntryPoint):
        return target
    try:
        factory = target.load()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in is bad input, reported in one line
        raise BackendError(f"backend {name!r} ({target.value}) cannot be loaded: {type(exc).__name__}: {exc}") \
            from None
    if not callable(factory):
        raise BackendError(f"backend {name!r} ({target.value}) is not callable")
    return factory


def make_backend(name: str, protocol: Protocol, seed: int | None,
                 resource: str | None = None) -> tuple[Crossbar, dict]:
    """The (unopened) crossbar for ``name`` with the protocol's limits applied, and the settings to record
    with the run. ``resource``: where a bench instrument is (default: the protocol's ``bench.resource``)."""
    factory = load(name)
    resource = resource or protocol.bench.resource
    options = dict(protocol.backend_options)
    bundled = BUNDLED.get(name)
    if bundled is not None and factory is bundled[0]:
        options = {**bundled[1](protocol), **options}
    try:
        xbar = factory(rows=protocol.array.rows, cols=protocol.array.cols, seed=seed, resource=resource,
                       options=options)
    except (ValueError, TypeError, CrossbarError) as exc:
        raise BackendError(f"the {name} backend: {' '.join(str(exc).split())}") from None
    if not isinstance(xbar, Crossbar):
        raise BackendError(f"the {name} backend returned a {type(xbar).__name__}, not a drivers.interface.Crossbar")
    check_shape(xbar, protocol)
    xbar.restrict_limits(protocol.limits)
    record: dict[str, Any] = {"seed": seed if seed is not None else options.get("chip_seed") or DEFAULT_SEED}
    if resource:
        record["resource"] = resource
    # the protocol's limits are recorded with it already; everything else that shaped the instrument is kept
    record.update({k: v for k, v in options.items() if k not in record and k != "limits"})
    record.update(xbar.settings())
    return xbar, record


def make_extra_backends(protocol: Protocol, backend: str, seed: int | None) -> dict[str, tuple[Crossbar, dict]]:
    """The (unopened) crossbars of the protocol's further ``arrays``, by name, each with the settings to
    record: its own backend (default ``backend``), resource and, on the mock, chip (default: the run's
    chip seed plus the array's position, so that no two arrays are the same simulated chip)."""
    from .protocol import ArraySpec, BenchSpec, MockSpec

    out: dict[str, tuple[Crossbar, dict]] = {}
    base_chip = protocol.mock.seed if protocol.mock.seed is not None else DEFAULT_SEED
    for position, spec in enumerate(protocol.arrays, 1):
        mock = spec.mock or MockSpec(seed=base_chip + position, device=protocol.mock.device)
        derived = protocol.model_copy(update={
            "array": ArraySpec(rows=spec.rows, cols=spec.cols, name=spec.name), "mock": mock,
            "bench": BenchSpec(resource=spec.resource, timeout_s=protocol.bench.timeout_s,
                               retries=protocol.bench.retries)})
        try:
            out[spec.name] = make_backend(spec.backend or backend, derived, seed, spec.resource)
        except BackendError as exc:
            raise BackendError(f"array {spec.name}: {exc}") from None
    return out


def check_shape(xbar: Crossbar, protocol: Protocol) -> None:
    want = (protocol.array.rows, protocol.array.cols)
    if xbar.shape != want:
        raise BackendError(f"the protocol's array is {want[0]}x{want[1]} but "
                           f"{xbar.identity.instrument_id} has {xbar.shape[0]}x{xbar.shape[1]} cells")
