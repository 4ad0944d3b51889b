"""Measurements taken elsewhere, read from files into a :class:`~calibration.pipeline.Calibration`.

A calibration's raw measurements can come from files instead of the array: arc2control's HDF5 data
files (:mod:`calibration.arc2_h5`), and CSV or ``.npy`` files of repeated reads, drift series, window
reads, programming results or pulse trains (:mod:`calibration.tables`). Each file gives one or more
*parts* (the stages of a live calibration: window, pulse_response, programming, read_noise, drift);
:func:`read_measurements` reads every file completely, checks it, and puts the parts together, so that
a bad file is refused (:class:`MeasurementFileError`, one line naming the file and the place) before
anything is stored. The same fits as for a live calibration then run on the result
(:func:`calibration.pipeline.fit_measured`, :func:`calibration.pipeline.fit_noise_model`).

Each part keeps where it came from (file, format, dataset or columns, the file's own timestamps and
metadata), and each file its sha256, for the provenance of every stored record.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .drift import DriftMeasurement
from .programming import ProgrammingMeasurement
from .pulse_response import PulseResponseMeasurement
from .raw import DEFAULT_STUCK_FRACTION, RawArray, options_for
from .read_noise import ReadNoiseMeasurement
from .window import WindowMeasurement

# The stages a file can give, in the order a live calibration measures them.
PARTS = ("window", "pulse_response", "programming", "read_noise", "drift")
# What each part is, for messages that say what a file lacks.
DESCRIPTION = {
    "window": "window (reads after saturating RESET and after saturating SET pulses)",
    "pulse_response": "pulse trains (reads after each pulse of a train)",
    "programming": "programming results (targets and achieved conductances)",
    "read_noise": "repeated reads",
    "drift": "drift series (reads at times after programming)",
}
# Kinds a .npy file (which carries no column names) may be declared as.
NPY_KINDS = ("reads", "drift", "after_reset", "after_set")
FORMATS = {".h5": "arc2control-h5", ".hdf5": "arc2control-h5", ".csv": "csv", ".npy": "npy"}
MAX_ARRAY_DIM = 4096
# The fit of programming error is per target level.
MAX_LEVELS = 64
# A programming tolerance nothing records: the project's default, 2 % of the level span.
DEFAULT_TOLERANCE_FRACTION = 0.02


class MeasurementFileError(ValueError):
    """A file that cannot be imported: one line, ``"{file}: {where}: {what}"`` (``where`` left out when the
    problem is the file as a whole). Nothing was stored."""

    def __init__(self, path: str | os.PathLike, what: str, where: str | None = None):
        self.path, self.where, self.what = os.fspath(path), where, what
        text = f"{self.path}: {where}: {what}" if where else f"{self.path}: {what}"
        super().__init__(" ".join(text.split()))


@dataclass
class Train:
    """One train of identical pulses on one device: the read before it (NaN: none) and after each pulse."""

    row: int
    col: int
    amplitude_v: float        # signed: positive SET, negative RESET
    width_s: float | None
    reads_s: np.ndarray       # (pulses + 1,)


@dataclass
class FileParts:
    """What one file gave: each part's arrays and where they came from, and records the fits do not use."""

    shape: tuple[int, int] | None                   # None: only a lower bound (CSV indices)
    min_shape: tuple[int, int] = (1, 1)
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    origins: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: list[RawArray] = field(default_factory=list)
    read_voltages_v: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)    # the file's own metadata (title, timestamps)


@dataclass
class Imported:
    """Measurements read from files: a Calibration of them (nothing fitted yet), and their provenance."""

    calibration: Any                     # calibration.pipeline.Calibration
    shape: tuple[int, int]
    sources: list[dict[str, Any]]        # per file: name, path, sha256, bytes, format, its metadata
    origins: dict[str, dict[str, Any]]   # per part: file, format, where in the file, timestamps
    extra: list[RawArray]                # records kept that no fit uses (snapshots, I-V sweeps, ...)
    notes: list[str]                     # what was found and left out, or assumed

    @property
    def parts(self) -> list[str]:
        return [p for p in PARTS if p in self.origins]

    def missing(self) -> list[str]:
        """One line for each part of the noise model the files give no data for."""
        out = []
        have = set(self.parts)
        if "window" not in have:
            out.append(f"no {DESCRIPTION['window']}: every noise model needs it (with repeated reads)")
        if "read_noise" not in have and "window" in have and self.calibration.window.low_reads_s.shape[0] < 3:
            out.append("no repeated reads (and fewer than 3 window reads per device): read noise cannot be fitted")
        if "programming" not in have:
            out.append(f"no {DESCRIPTION['programming']}: programming error not fitted")
        if "drift" not in have:
            out.append(f"no {DESCRIPTION['drift']}: drift not fitted")
        return out


def file_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise MeasurementFileError(path, f"unknown format {suffix or '(no suffix)'!r}: expected an arc2control "
                                         f"HDF5 file (.h5, .hdf5), a .csv or a .npy file")
    return FORMATS[suffix]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_measurements(files: Sequence[str | os.PathLike | tuple[str | os.PathLike, str | None]], *,
                      shape: tuple[int, int] | None = None, times_s: Sequence[float] | None = None,
                      read_voltage_v: float | None = None, retention_start_s: float | None = None) -> Imported:
    """Read every file (a path, or ``(path, kind)`` for a .npy file: one of :data:`NPY_KINDS`, default
    "reads") and put their parts together for an array of ``shape`` (default: what the files say).

    ``times_s``: the times after programming of a .npy drift series. ``read_voltage_v``: recorded with
    conductances that come without one (CSV ``conductance_s``, .npy). ``retention_start_s``: the time after
    programming of the first read of an arc2control retention run (its file does not say; default: one
    read interval).
    Raises :class:`MeasurementFileError` for the first problem found; nothing is kept of a refused file.
    """
    from . import arc2_h5, tables

    read = []
    sources = []
    for entry in files:
        path, kind = entry if isinstance(entry, tuple) else (entry, None)
        path = Path(path)
        fmt = file_format(path)
        if kind is not None and fmt != "npy":
            raise MeasurementFileError(path, f"a kind ({kind}) is given only to .npy files; a {fmt} file says "
                                             f"what it holds")
        if not path.exists():
            raise MeasurementFileError(path, "file not found")
        if not path.is_file():
            raise MeasurementFileError(path, "is not a regular file")
        try:
            digest, size = sha256_of(path), path.stat().st_size
        except OSError as exc:
            raise MeasurementFileError(path, f"cannot be read ({exc.strerror or exc})") from None
        try:
            if fmt == "arc2control-h5":
                got = arc2_h5.read_arc2(path, retention_start_s=retention_start_s)
            elif fmt == "csv":
                got = tables.read_csv(path, read_voltage_v=read_voltage_v)
            else:
                got = tables.read_npy(path, kind or "reads", times_s=times_s, read_voltage_v=read_voltage_v)
        except MeasurementFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - a hostile file may break a reader anywhere: still one line
            raise MeasurementFileError(path, f"cannot be read ({type(exc).__name__}: {exc})") from exc
        read.append((path, fmt, got, digest))
        sources.append({"file": path.name, "path": str(path.resolve()), "sha256": digest, "bytes": size,
                        "format": fmt, **({"kind": kind} if kind else {}), **got.details})
    if not read:
        raise ValueError("no file to import")
    return _assemble(read, sources, shape)


def _assemble(read, sources, shape) -> Imported:
    from .pipeline import Calibration

    exact = [(p, f.shape) for p, _, f, _ in read if f.shape is not None]
    if shape is None and exact:
        shape = exact[0][1]
    for path, s in exact:
        if s != shape:
            raise MeasurementFileError(path, f"is of a {s[0]}x{s[1]} array, not {shape[0]}x{shape[1]}"
                                             + (f" like {exact[0][0].name}" if exact and exact[0][0] != path else ""))
    if shape is None:
        shape = tuple(max(f.min_shape[k] for _, _, f, _ in read) for k in (0, 1))
    for path, _, f, _ in read:
        if f.min_shape[0] > shape[0] or f.min_shape[1] > shape[1]:
            raise MeasurementFileError(path, f"has devices up to row {f.min_shape[0] - 1}, column {f.min_shape[1] - 1}:"
                                             f" outside a {shape[0]}x{shape[1]} array")
    parts: dict[str, dict] = {}
    origins: dict[str, dict] = {}
    owner: dict[str, Path] = {}
    extra, notes, voltages = [], [], []
    for path, fmt, f, digest in read:
        for name, data in f.parts.items():
            origin = {"file": path.name, "sha256": digest, "format": fmt, **f.origins.get(name, {})}
            halves = {k: origin for k in data if k in ("after_reset", "after_set")}
            if name == "window" and name in parts and not (set(parts[name]) & set(halves)):
                # the reads after RESET from one file, after SET from another
                parts[name] = {**parts[name], **data}
                origins[name] = {**origins[name], **halves}
                continue
            if name in parts:
                raise MeasurementFileError(path, f"gives {DESCRIPTION[name]}, as {owner[name].name} does: import "
                                                 f"one of them")
            parts[name], owner[name] = data, path
            origins[name] = halves if name == "window" and len(halves) == 1 else origin
        extra += [RawArray(r.name, r.kind, r.unit, r.values,
                           {**r.meta, "source": {"file": path.name, "sha256": digest, "format": fmt}})
                  for r in f.extra]
        notes += [f"{path.name}: {n}" for n in f.notes]
        voltages += f.read_voltages_v
    voltages = [v for v in voltages if np.isfinite(v) and v != 0]
    read_voltage = float(np.median(np.abs(voltages))) if voltages else None
    if read_voltage is None:
        notes.append("no read voltage in the files: the noise model records the default, 0.2 V")
    settle = parts.get("programming", {}).get("settle_s")
    cal = Calibration(options_for(read_voltage, settle))
    rows, cols = shape
    grid = _Grid(rows, cols)
    for name in PARTS:
        if name not in parts:
            continue
        data, path = parts[name], owner[name]
        try:
            _fill(cal, name, data, grid, notes)
        except MeasurementFileError:
            raise
        except ValueError as exc:
            raise MeasurementFileError(path, str(exc), name) from None
    return Imported(cal, (rows, cols), sources, origins, extra, notes)


class _Grid:
    def __init__(self, rows: int, cols: int):
        self.rows, self.cols = rows, cols

    def fit(self, a: np.ndarray) -> np.ndarray:
        """``a`` of shape (n, r, c) with r <= rows and c <= cols, padded with NaN to the array's shape."""
        a = np.asarray(a, np.float64)
        if a.shape[1:] == (self.rows, self.cols):
            return a
        out = np.full((a.shape[0], self.rows, self.cols), np.nan)
        out[:, :a.shape[1], :a.shape[2]] = a
        return out


def _fill(cal, name: str, data: dict, grid: _Grid, notes: list[str]) -> None:
    if name == "window":
        for key, when in (("after_reset", "RESET"), ("after_set", "SET")):
            if key not in data:
                raise ValueError(f"window reads after {when} are missing (a window needs the reads after saturating "
                                 f"RESET and after saturating SET pulses, from this file or another)")
        low, high = grid.fit(data["after_reset"]), grid.fit(data["after_set"])
        n = min(low.shape[0], high.shape[0])
        if low.shape[0] != high.shape[0]:
            notes.append(f"window: {low.shape[0]} reads after RESET, {high.shape[0]} after SET: the first {n} of "
                         f"each kept")
        cal.window = WindowMeasurement(low[:n], high[:n], float(data.get("stuck_fraction") or DEFAULT_STUCK_FRACTION))
    elif name == "read_noise":
        reads = grid.fit(data["reads"])
        if reads.shape[0] < 3:
            raise ValueError(f"repeated reads need at least 3 reads of each device, got {reads.shape[0]}")
        cal.read_noise = ReadNoiseMeasurement(reads, data.get("age_s"))
    elif name == "drift":
        times = np.asarray(data["times_s"], np.float64)
        if times.size < 3:
            raise ValueError(f"a drift series needs reads at 3 or more times, got {times.size}")
        if not (np.all(np.isfinite(times)) and times[0] > 0 and np.all(np.diff(times) > 0)):
            raise ValueError(f"the drift times after programming must be positive and increasing (the drift law is "
                             f"fitted against log time), got {', '.join(f'{t:g}' for t in times[:4])}"
                             f"{', ...' if times.size > 4 else ''}")
        var = data.get("var_s")
        cal.drift = DriftMeasurement(times, grid.fit(data["mean_s"]), int(data.get("reads") or 1),
                                     None if var is None else grid.fit(var))
    elif name == "programming":
        targets, achieved = grid.fit(data["targets_s"]), grid.fit(data["achieved_s"])
        levels = data.get("levels_s")
        if levels is None:
            levels = np.unique(targets[np.isfinite(targets)])
        levels = np.asarray(levels, np.float64)
        if levels.size < 1:
            raise ValueError("no device has a target conductance")
        if levels.size > MAX_LEVELS:
            raise ValueError(f"the targets take {levels.size} distinct values; programming error is fitted per "
                             f"target level, at most {MAX_LEVELS} of them")
        if np.any(levels <= 0):
            raise ValueError("a target conductance is not positive")
        tolerance = data.get("tolerance_s")
        if tolerance is None or not tolerance > 0:
            span = float(levels.max() - levels.min()) if levels.size > 1 else float(levels.max())
            tolerance = DEFAULT_TOLERANCE_FRACTION * span
            notes.append(f"programming: no write-verify tolerance recorded: taken as 2% of the level span "
                         f"({tolerance * 1e6:.3g} µS); errors are measured in it, the fitted spreads do not depend "
                         f"on it")
        index = np.abs(np.where(np.isfinite(targets), targets, levels[0])[..., None] - levels).argmin(axis=-1)
        # a device without a target has no programming error: its achieved read is left out
        achieved = np.where(np.isfinite(targets), achieved, np.nan)
        write_verify = data.get("write_verify") or [{"tolerance_s": float(tolerance)} for _ in range(targets.shape[0])]
        cal.programming = ProgrammingMeasurement(levels, index, achieved, int(data.get("reads") or 1), 0.0,
                                                 list(write_verify))
    elif name == "pulse_response":
        # the file's reader has noted what the arrangement left out
        cal.pulse_response = arrange_trains(data["trains"], [])


def arrange_trains(trains: list[Train], notes: list[str]) -> PulseResponseMeasurement | None:
    """Pulse trains as the calibration's pulse response: SET and RESET trains at each amplitude both
    polarities were pulsed at (to the millivolt), as many devices per train and pulses per train as every
    one of them has. None (with a note) when there are none such."""
    def key(t: Train) -> int:
        return int(round(abs(t.amplitude_v) * 1000))

    groups: dict[tuple[int, int], list[Train]] = {}
    for t in trains:
        groups.setdefault((1 if t.amplitude_v > 0 else -1, key(t)), []).append(t)
    amplitudes = sorted(k for s, k in groups if s > 0 and (-1, k) in groups)
    if not amplitudes:
        notes.append(f"pulse trains: {len(trains)} found, but no amplitude was pulsed in both polarities: kept "
                     f"as a record, not as the pulse response")
        return None
    chosen = [groups[(s, k)] for k in amplitudes for s in (1, -1)]
    cells = min(len(g) for g in chosen)
    pulses = min(t.reads_s.size for g in chosen for t in g) - 1
    if pulses < 1:
        notes.append("pulse trains: a train has no pulse: kept as a record, not as the pulse response")
        return None
    used = sum(len(g) for g in chosen)
    if used != cells * len(chosen) or any(t.reads_s.size != pulses + 1 for g in chosen for t in g) \
            or used != len(trains):
        notes.append(f"pulse trains: {len(trains)} found; the pulse response keeps {cells} devices per amplitude and "
                     f"polarity at {len(amplitudes)} amplitudes, {pulses} pulses each")

    def curves(sign: int):
        c = np.stack([np.stack([t.reads_s[:pulses + 1] for t in groups[(sign, k)][:cells]], axis=1)
                      for k in amplitudes])
        where = np.stack([np.array([[t.row, t.col] for t in groups[(sign, k)][:cells]]) for k in amplitudes])
        return c, where

    (set_c, set_cells), (reset_c, reset_cells) = curves(1), curves(-1)
    widths = {t.width_s for g in chosen for t in g if t.width_s is not None}
    return PulseResponseMeasurement(np.array(amplitudes, np.float64) / 1000, set_c, reset_c, set_cells, reset_cells,
                                    widths.pop() if len(widths) == 1 else None)


def trains_record(trains: list[Train]) -> RawArray:
    """Pulse trains that do not make a pulse response, kept as one table: row, col, train, pulse (0: the
    read before the first pulse), amplitude (V), width (s, NaN unknown), conductance (S)."""
    rows = [(t.row, t.col, k, p, t.amplitude_v, np.nan if t.width_s is None else t.width_s, g)
            for k, t in enumerate(trains) for p, g in enumerate(t.reads_s)]
    return RawArray("pulse_trains", "table", "mixed", np.array(rows, np.float64).reshape(-1, 7),
                    {"columns": ["row", "col", "train", "pulse", "amplitude_v", "width_s", "conductance_s"]})
