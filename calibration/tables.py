"""CSV and ``.npy`` files of measurements: repeated reads, drift series, window reads, programming results
and pulse trains, read into calibration parts (:mod:`calibration.measurement_files`).

CSV: a header line naming the columns, then one line per read. Every line has ``row`` and ``col`` (the
device, from 0) and its conductance: ``conductance_s``, or ``current_a`` and ``read_voltage_v``
(conductance |current / voltage|). What the reads are is said by one more column:

* none: repeated reads of each device (``read``, optional: their order);
* ``time_s``: a drift series, the time after programming of each read (several reads of a device at one
  time are averaged, and their variance kept);
* ``state``: window reads, ``reset`` (after saturating RESET pulses) or ``set``;
* ``target_s``: programming results, the achieved conductance of each device against its target
  (``round``, optional: which programming round);
* ``pulse_v`` with ``pulse``: pulse trains, the read after pulse number ``pulse`` of amplitude ``pulse_v``
  (signed: negative is RESET; ``pulse`` 0 is the read before the first pulse), optionally
  ``pulse_width_s`` and ``train`` (to tell several trains of one device apart).

``.npy``: an array of conductances (S) of shape (n, rows, cols), declared as one of ``reads`` (repeated
reads), ``drift`` (reads at the given times after programming), ``after_reset`` or ``after_set`` (window
reads); the file carries no names, so the kind is given with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .measurement_files import FileParts, MAX_ARRAY_DIM, NPY_KINDS, MeasurementFileError, Train

KIND_COLUMNS = {"time_s": "drift", "state": "window", "target_s": "programming", "pulse_v": "pulse_response"}
OPTIONAL = {None: {"read"}, "drift": set(), "window": {"read"}, "programming": {"round"},
            "pulse_response": {"pulse", "pulse_width_s", "train"}}
VALUE_COLUMNS = {"conductance_s", "current_a", "read_voltage_v"}
_NAN_WORDS = {"nan", "NaN", "NAN"}


def read_csv(path: Path, *, read_voltage_v: float | None = None) -> FileParts:
    import pandas as pd

    def fail(what: str, where: str | None = None):
        raise MeasurementFileError(path, what, where)

    try:
        # header=None: the header line is read as data, so that it alone sets the number of fields (a line
        # with more is refused with its number, not taken for an index column)
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, skipinitialspace=True,
                            encoding="utf-8", header=None)
    except UnicodeDecodeError as exc:
        fail(f"is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): not a CSV file")
    except pd.errors.EmptyDataError:
        fail("is empty: expected a header line naming the columns")
    except (pd.errors.ParserError, ValueError) as exc:
        fail(f"cannot be parsed as CSV ({' '.join(str(exc).split())})")
    frame.columns = [str(c).strip() for c in frame.iloc[0]]
    frame = frame.iloc[1:]
    columns = set(frame.columns)
    kinds = [KIND_COLUMNS[c] for c in frame.columns if c in KIND_COLUMNS]
    if len(kinds) > 1:
        fail(f"has columns of more than one kind of measurement ({', '.join(c for c in frame.columns if c in KIND_COLUMNS)})"
             f": put each in its own file", "header")
    kind = kinds[0] if kinds else None
    allowed = {"row", "col"} | VALUE_COLUMNS | OPTIONAL[kind] | ({next(k for k, v in KIND_COLUMNS.items()
                                                                        if v == kind)} if kind else set())
    unknown = [c for c in frame.columns if c not in allowed]
    if unknown:
        fail(f"unknown column {unknown[0]!r} for {'repeated reads' if kind is None else kind} (expected {', '.join(sorted(allowed))})",
             "header")
    for needed in ("row", "col"):
        if needed not in columns:
            fail(f"no {needed!r} column (each line names its device by row and col)", "header")
    if "conductance_s" not in columns and not {"current_a", "read_voltage_v"} <= columns:
        fail("no conductance: give a conductance_s column, or current_a and read_voltage_v", "header")
    if kind == "pulse_response" and "pulse" not in columns:
        fail("pulse trains need a 'pulse' column (0 for the read before the first pulse, then 1, 2, ...)", "header")
    # blank lines are kept by the reader so that a data row's line in the file is its index + 1
    frame = frame[~(frame == "").all(axis=1)]
    if frame.empty:
        fail("has a header but no data lines")
    lines = frame.index.to_numpy() + 1

    def numbers(column: str, *, integer: bool = False, nan_ok: bool = False) -> np.ndarray:
        text = frame[column].str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
        bad = np.isnan(values) & ~(text.isin(_NAN_WORDS).to_numpy() if nan_ok else np.zeros(len(text), bool))
        if integer:
            bad |= ~np.isfinite(values) | (values < 0) | (values != np.round(values))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            cell = text.iloc[k]
            what = ("is empty" if cell == "" else f"{cell!r} is not a {'count (0, 1, 2, ...)' if integer else 'number'}")
            fail(what, f"line {lines[k]}, column {column}")
        return values.astype(np.int64) if integer else values

    row, col = numbers("row", integer=True), numbers("col", integer=True)
    for name, v in (("row", row), ("col", col)):
        if v.max() >= MAX_ARRAY_DIM:
            k = int(np.argmax(v))
            fail(f"{int(v[k])} is beyond the largest array ({MAX_ARRAY_DIM} lines)", f"line {lines[k]}, column {name}")
    out = FileParts(shape=None, min_shape=(int(row.max()) + 1, int(col.max()) + 1))
    if "conductance_s" in columns:
        g = numbers("conductance_s", nan_ok=True)
        if "read_voltage_v" in columns:
            out.read_voltages_v.append(float(np.nanmedian(np.abs(numbers("read_voltage_v")))))
    else:
        current, voltage = numbers("current_a", nan_ok=True), numbers("read_voltage_v")
        zero = voltage == 0
        if zero.any():
            fail("a read needs a non-zero voltage", f"line {lines[int(np.flatnonzero(zero)[0])]}, column read_voltage_v")
        g = np.abs(current / voltage)
        out.read_voltages_v.append(float(np.median(np.abs(voltage))))
    if not out.read_voltages_v and read_voltage_v is not None:
        out.read_voltages_v.append(float(read_voltage_v))
    shape = out.min_shape
    order = numbers("read", integer=True) if "read" in columns else np.arange(len(g))
    origin = {"columns": list(frame.columns), "lines": int(len(g))}
    out.details = {"lines": int(len(g))}

    if kind is None:
        reads, note = _per_device(row, col, g, order, shape)
        out.parts["read_noise"] = {"reads": reads, "age_s": None}
        out.notes += [f"repeated reads: {note}"] if note else []
        out.origins["read_noise"] = origin
    elif kind == "window":
        state = frame["state"].str.strip().str.lower().to_numpy()
        bad = ~np.isin(state, ("reset", "set"))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            fail(f"{frame['state'].iloc[k]!r} is not 'reset' or 'set'", f"line {lines[k]}, column state")
        window = {}
        for name, s in (("after_reset", "reset"), ("after_set", "set")):
            sel = state == s
            if sel.any():
                window[name], note = _per_device(row[sel], col[sel], g[sel], order[sel], shape)
                out.notes += [f"window reads after {s.upper()}: {note}"] if note else []
        out.parts["window"] = window
        out.origins["window"] = origin
    elif kind == "drift":
        out.parts["drift"], note = _drift(row, col, g, numbers("time_s"), shape)
        out.notes += [f"drift: {note}"] if note else []
        out.origins["drift"] = origin
    elif kind == "programming":
        target = numbers("target_s", nan_ok=True)
        rounds = numbers("round", integer=True) if "round" in columns else np.zeros(len(g), np.int64)
        n = int(rounds.max()) + 1
        targets, achieved = np.full((n, *shape), np.nan), np.full((n, *shape), np.nan)
        seen = np.zeros((n, *shape), bool)
        for k in range(len(g)):
            if seen[rounds[k], row[k], col[k]]:
                fail(f"device ({row[k]}, {col[k]}) appears twice in round {rounds[k]}", f"line {lines[k]}")
            seen[rounds[k], row[k], col[k]] = True
        targets[rounds, row, col], achieved[rounds, row, col] = target, g
        out.parts["programming"] = {"targets_s": targets, "achieved_s": achieved, "reads": 1}
        out.origins["programming"] = origin
    else:
        amplitude = numbers("pulse_v")
        pulse = numbers("pulse", integer=True)
        width = numbers("pulse_width_s") if "pulse_width_s" in columns else np.full(len(g), np.nan)
        train = numbers("train", integer=True) if "train" in columns else np.zeros(len(g), np.int64)
        trains = []
        keys = np.stack([row, col, train], axis=1)
        for key in np.unique(keys, axis=0):
            sel = np.flatnonzero((keys == key).all(axis=1))
            sel = sel[np.argsort(pulse[sel], kind="stable")]
            pulsed = sel[pulse[sel] > 0]
            if not pulsed.size:
                continue
            if np.unique(amplitude[pulsed]).size > 1 or np.unique(width[pulsed]).size > 1 and not np.isnan(width[pulsed]).all():
                fail(f"train {int(key[2])} of device ({int(key[0])}, {int(key[1])}) changes its pulse amplitude or "
                     f"width: a train is of identical pulses", f"line {lines[pulsed[0]]}")
            reads = np.full(int(pulse[sel].max()) + 1, np.nan)
            reads[pulse[sel]] = g[sel]
            w = float(width[pulsed[0]])
            trains.append(Train(int(key[0]), int(key[1]), float(amplitude[pulsed[0]]), w if np.isfinite(w) else None,
                                reads))
        if not trains:
            fail("no pulse train: every line has pulse 0 (the read before a train)")
        out.parts["pulse_response"] = {"trains": trains}
        out.origins["pulse_response"] = origin
    return out


def _per_device(row, col, g, order, shape) -> tuple[np.ndarray, str | None]:
    """(n, rows, cols) reads of each device in ``order``, n the fewest any device present has; NaN for
    devices with none."""
    index = np.lexsort((order, col, row))
    r, c, v = row[index], col[index], g[index]
    flat = r * shape[1] + c
    devices, first, counts = np.unique(flat, return_index=True, return_counts=True)
    n = int(counts.min())
    out = np.full((n, *shape), np.nan)
    for k in range(n):
        out[k].ravel()[devices] = v[first + k]
    note = None
    if counts.max() != n:
        note = f"{n} to {int(counts.max())} reads per device: the first {n} of each kept"
    missing = shape[0] * shape[1] - devices.size
    if missing:
        note = "; ".join(filter(None, [note, f"{missing} device(s) of the {shape[0]}x{shape[1]} grid have no reads "
                                             f"(NaN)"]))
    return out, note


def _drift(row, col, g, t, shape) -> tuple[dict, str | None]:
    flat = row * shape[1] + col
    times = np.unique(t)
    per_device = {d: np.unique(t[flat == d]) for d in np.unique(flat)}
    note = None
    if all(ts.size == times.size for ts in per_device.values()):
        slot = np.searchsorted(times, t)
    else:
        # each device read at its own times: the k-th time of each device, at the median over devices
        n = min(ts.size for ts in per_device.values())
        slot = np.array([np.searchsorted(per_device[d], x) for d, x in zip(flat, t)])
        keep = slot < n
        flat, g, slot = flat[keep], g[keep], slot[keep]
        times = np.median(np.stack([ts[:n] for ts in per_device.values()]), axis=0)
        note = (f"devices were read at different times: the k-th time of each device taken together ({n} times), "
                f"at the median over devices")
    T = times.size
    total = np.zeros((T, shape[0] * shape[1]))
    square = np.zeros_like(total)
    count = np.zeros_like(total)
    np.add.at(total, (slot, flat), g)
    np.add.at(square, (slot, flat), g * g)
    np.add.at(count, (slot, flat), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        var = (square - count * mean ** 2) / (count - 1)
    var = np.where(count >= 2, np.maximum(var, 0.0), np.nan)
    reads = int(count[count > 0].min())
    return ({"times_s": times, "mean_s": mean.reshape(T, *shape), "reads": reads,
             "var_s": var.reshape(T, *shape) if reads >= 2 else None}, note)


def read_npy(path: Path, kind: str, *, times_s: Sequence[float] | None = None,
             read_voltage_v: float | None = None) -> FileParts:
    def fail(what: str):
        raise MeasurementFileError(path, what)

    if kind not in NPY_KINDS:
        fail(f"kind {kind!r} is not one of {', '.join(NPY_KINDS)}")
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        if "pickle" in str(exc):
            fail("is not a .npy array of numbers (reading it would mean unpickling Python objects, which is refused)")
        fail(f"cannot be read as .npy ({' '.join(str(exc).split())})")
    if not isinstance(data, np.ndarray):
        fail("is an .npz archive, not a .npy array")
    if data.dtype.kind not in "iuf":
        fail(f"holds {data.dtype} values, expected conductances (real numbers, S)")
    if data.ndim != 3:
        fail(f"has shape {data.shape}; a {kind} file holds (n, rows, cols): n {'times' if kind == 'drift' else 'reads'}"
             f" of every device")
    n, rows, cols = data.shape
    if not (1 <= rows <= MAX_ARRAY_DIM and 1 <= cols <= MAX_ARRAY_DIM and n >= 1):
        fail(f"has shape {data.shape}, not (n, rows, cols) of an array of at most {MAX_ARRAY_DIM}x{MAX_ARRAY_DIM}")
    try:
        values = np.array(data, dtype=np.float64)
    except (ValueError, OSError) as exc:
        fail(f"cannot be read ({' '.join(str(exc).split())}): damaged or truncated")
    out = FileParts(shape=(rows, cols), min_shape=(rows, cols), details={"shape": list(data.shape),
                                                                         "dtype": str(data.dtype)})
    if read_voltage_v is not None:
        out.read_voltages_v.append(float(read_voltage_v))
    origin = {"array": f"{data.dtype} {tuple(data.shape)}", "kind": kind}
    if kind == "reads":
        out.parts["read_noise"] = {"reads": values, "age_s": None}
        out.origins["read_noise"] = origin
    elif kind == "drift":
        if times_s is None:
            fail("a drift series in a .npy file needs its times after programming (times_s, --times-s)")
        times = np.asarray(times_s, np.float64)
        if times.shape != (n,):
            fail(f"holds {n} times of every device, but {times.size} times after programming are given")
        out.parts["drift"] = {"times_s": times, "mean_s": values, "reads": 1, "var_s": None}
        out.origins["drift"] = {**origin, "times_s": times.tolist()}
    else:
        out.parts["window"] = {kind: values}
        out.origins["window"] = origin
    return out
