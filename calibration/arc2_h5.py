"""arc2control's HDF5 data files: read into calibration parts, and written from a calibration.

The layout, as arc2control's documentation ("The H5 Data Store") gives it:

* root attributes ``words`` and ``bits`` (the crossbar's word and bit lines: rows and columns here),
  ``H5DS_VERSION_MAJOR``/``H5DS_VERSION_MINOR``, ``PYTABLES_FORMAT_VERSION``, ``TITLE``;
* ``/crossbar`` (attributes ``words``, ``bits``) with datasets ``current`` and ``voltage``, indexed
  ``[bit, word]``: the last read of every device (conductance = |current / voltage|);
* ``/crosspoints/WxxByy`` per device (word xx, bit yy, from 0): ``timeseries``, the device's biasing
  history, a table of ``current, voltage, pulse_width, read_voltage, op_type`` (op_type 1 READ, 2 PULSE,
  3 PULSEREAD: a pulse then a read) whose first ``NROWS`` rows are filled; and ``experiments/``, the
  tables of the modules run on that device, named ``TAG_<ns timestamp>``: ``RET`` (Retention: reads over
  time, ``read_voltage, current, tstamp_s, tstamp_us``), ``CT`` (CurveTracer: ``voltage, current,
  read_voltage``), ...;
* ``/synthetics``: tables of experiments over many devices (attribute ``crosspoints``: their [word, bit]),
  also ``TAG_<ns timestamp>``.

What becomes what (every part keeps the dataset it came from and its timestamps):

* ``RET`` tables: a drift series. Times are taken from the first read of each device's retention run,
  plus ``retention_start_s``, the time after programming of that first read, which the file does not say
  (default: one read interval, the time between the run's first two reads); one read per time.
* timeseries: the first block of reads after a run of negative pulses is the device's window read after
  RESET, the first after positive pulses its read after SET; the longest other block of three or more
  reads (no pulse between them) its repeated reads; a run of PULSEREADs of one amplitude and width a
  pulse train, starting from the read before it.
* ``CT`` tables and the ``/crossbar`` snapshot are kept as records; no part of the noise model is
  fitted from them.
* the tables this module writes (below), in ``/synthetics``, give their parts directly, and take
  precedence over the timeseries.

A calibration is written as a third-party arc2control module writes its data: ``/synthetics`` tables
tagged ``WINDOW``, ``PULSETRAIN``, ``PROGRAM``, ``READS`` and ``DRIFT``, one row per device and
observation (``word``, ``bit``, ``current`` in A and ``read_voltage`` in V, and the stage's own columns),
with the stage's settings as attributes; ``/crossbar`` holds the last full read.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .measurement_files import FileParts, MAX_ARRAY_DIM, MeasurementFileError, Train, arrange_trains, trains_record
from .raw import RawArray

READ, PULSE, PULSEREAD = 1, 2, 3
TIMESERIES_FIELDS = ("current", "voltage", "pulse_width", "read_voltage", "op_type")
TAGGED = re.compile(r"^([A-Za-z][A-Za-z0-9]*?)(?:_(\d+))?$")
CROSSPOINT = re.compile(r"^W(\d+)B(\d+)$")
# The tables written here: tag -> (part, the fields beyond word, bit, current, read_voltage)
OWN_TABLES = {"WINDOW": ("window", ("state", "read")), "PULSETRAIN": ("pulse_response", ("train", "pulse", "voltage",
                                                                                          "pulse_width")),
              "PROGRAM": ("programming", ("round", "target")), "READS": ("read_noise", ("read",)),
              "DRIFT": ("drift", ("time", "current_var"))}


def _iso(ns: Any) -> str | None:
    try:
        return datetime.fromtimestamp(int(ns) / 1e9, tz=timezone.utc).isoformat()
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _plain(value: Any) -> Any:
    """An HDF5 attribute as JSON-able Python."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return _plain(value.tolist()) if value.size <= 64 else f"array {value.shape} {value.dtype}"
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class _Reader:
    def __init__(self, path: Path, h5, retention_start_s: float | None):
        self.path, self.h5, self.retention_start_s = path, h5, retention_start_s
        self.out = FileParts(shape=None)

    def fail(self, where: str, what: str):
        raise MeasurementFileError(self.path, what, where)

    # ----------------------------------------------------------------- structure

    def shape(self) -> tuple[int, int]:
        attrs = self.h5.attrs
        dims = []
        for key in ("words", "bits"):
            if key not in attrs:
                self.fail("/", f"no attribute {key!r}: not an arc2control data file (it gives the crossbar's size "
                               f"in 'words' and 'bits')")
            value = np.asarray(attrs[key])
            if value.size != 1 or value.dtype.kind not in "iu" or not 1 <= int(value) <= MAX_ARRAY_DIM:
                self.fail("/", f"attribute {key!r} is {_plain(attrs[key])!r}, not a count of lines from 1 to "
                               f"{MAX_ARRAY_DIM}")
            dims.append(int(value))
        for group in ("crossbar", "crosspoints", "synthetics"):
            if group not in self.h5:
                self.fail("/", f"no /{group} group: not an arc2control data file")
        return dims[0], dims[1]

    def table(self, dset, fields: tuple[str, ...], rows: int | None = None) -> np.ndarray:
        """The first ``rows`` rows (default: NROWS when set, else all) of a table with the named fields."""
        import h5py
        if not isinstance(dset, h5py.Dataset):
            self.fail(dset.name, "is a group, expected a table")
        names = dset.dtype.names or ()
        for f in fields:
            if f not in names:
                self.fail(dset.name, f"has no column {f!r} (columns: {', '.join(names) or 'none: not a table'})")
        if dset.ndim != 1:
            self.fail(dset.name, f"is {dset.ndim}-dimensional, expected a table of rows")
        if rows is None:
            n = int(np.asarray(dset.attrs.get("NROWS", 0)).reshape(-1)[0]) if "NROWS" in dset.attrs else 0
            rows = n if 0 < n <= dset.shape[0] else dset.shape[0]
        try:
            return dset[:rows]
        except (OSError, RuntimeError, ValueError) as exc:
            self.fail(dset.name, f"cannot be read ({' '.join(str(exc).split())}): the file is damaged or truncated")

    def conductance(self, where: str, current: np.ndarray, voltage: np.ndarray) -> np.ndarray:
        voltage = np.asarray(voltage, np.float64)
        bad = ~np.isfinite(voltage) | (voltage == 0)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            self.fail(where, f"row {k}: read voltage {voltage[k]!r}: a read needs a non-zero voltage")
        self.out.read_voltages_v += [float(np.median(np.abs(voltage)))]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.abs(np.asarray(current, np.float64) / voltage)

    def device(self, where: str, word, bit, shape) -> tuple[np.ndarray, np.ndarray]:
        w, b = np.asarray(word), np.asarray(bit)
        for name, v, n in (("word", w, shape[0]), ("bit", b, shape[1])):
            if v.dtype.kind not in "iu":
                self.fail(where, f"column {name!r} holds {v.dtype} values, expected line numbers")
            out = (v < 0) | (v >= n)
            if out.any():
                k = int(np.flatnonzero(out)[0])
                self.fail(where, f"row {k}: {name} {int(v[k])} is outside the crossbar's {n} {name} lines")
        return w.astype(np.intp), b.astype(np.intp)

    # ----------------------------------------------------------------- reading

    def read(self) -> FileParts:
        shape = self.shape()
        self.out.shape = shape
        self.out.details = {"title": _plain(self.h5.attrs.get("TITLE")),
                            "format_version": f"{_plain(self.h5.attrs.get('H5DS_VERSION_MAJOR'))}."
                                              f"{_plain(self.h5.attrs.get('H5DS_VERSION_MINOR'))}"}
        own = self.synthetics(shape)
        self.crosspoints(shape, skip=set(own))
        self.snapshot(shape)
        return self.out

    def synthetics(self, shape) -> list[str]:
        found = []
        ignored = []
        for name, item in self.h5["synthetics"].items():
            m = TAGGED.match(name)
            tag = m.group(1) if m else None
            if tag not in OWN_TABLES:
                ignored.append(name)
                continue
            part, fields = OWN_TABLES[tag]
            if part in found:
                self.fail(item.name, f"a second {tag} table: import a file with one calibration")
            rows = self.table(item, ("word", "bit", "current", "read_voltage", *fields))
            where = item.name
            w, b = self.device(where, rows["word"], rows["bit"], shape)
            g = self.conductance(where, rows["current"], rows["read_voltage"])
            attrs = {k: _plain(v) for k, v in item.attrs.items() if k not in ("crosspoints", "TITLE", "CLASS")}
            getattr(self, f"_own_{part}")(item, rows, w, b, g, shape)
            self.out.origins[part] = {"dataset": where, "recorded_at": _iso(item.attrs.get("TSTAMP")),
                                      "attributes": attrs}
            found.append(part)
        if ignored:
            self.out.notes.append(f"/synthetics: {len(ignored)} table(s) of other modules not imported "
                                  f"({', '.join(sorted(ignored)[:5])}{', ...' if len(ignored) > 5 else ''})")
        return found

    @staticmethod
    def _grid(index, w, b, values, n, shape) -> np.ndarray:
        out = np.full((n, *shape), np.nan)
        out[index, w, b] = values
        return out

    def _count(self, where, rows, column, limit=1_000_000) -> int:
        v = np.asarray(rows[column])
        if v.size and (v.dtype.kind not in "iu" or v.min() < 0 or v.max() >= limit):
            self.fail(where, f"column {column!r} must hold counts from 0, got {v.dtype} up to {v.max()!r}")
        return int(v.max()) + 1 if v.size else 0

    def _own_window(self, item, rows, w, b, g, shape):
        n = self._count(item.name, rows, "read")
        state = np.asarray(rows["state"])
        if not np.isin(state, (0, 1)).all():
            self.fail(item.name, "column 'state' must be 0 (after RESET) or 1 (after SET)")
        parts = {}
        for key, s in (("after_reset", 0), ("after_set", 1)):
            sel = state == s
            parts[key] = self._grid(rows["read"][sel], w[sel], b[sel], g[sel], n, shape)
        fraction = item.attrs.get("stuck_fraction")
        self.out.parts["window"] = {**parts, "stuck_fraction": None if fraction is None else float(fraction)}

    def _own_read_noise(self, item, rows, w, b, g, shape):
        n = self._count(item.name, rows, "read")
        age = item.attrs.get("age_s")
        age = None if age is None or not np.isfinite(float(age)) else float(age)
        self.out.parts["read_noise"] = {"reads": self._grid(rows["read"], w, b, g, n, shape), "age_s": age}

    def _own_drift(self, item, rows, w, b, g, shape):
        times, index = np.unique(np.asarray(rows["time"], np.float64), return_inverse=True)
        v = np.asarray(rows["read_voltage"], np.float64)
        var = np.asarray(rows["current_var"], np.float64) / v ** 2
        reads = item.attrs.get("reads", 1)
        var_grid = self._grid(index, w, b, var, times.size, shape)
        self.out.parts["drift"] = {"times_s": times, "mean_s": self._grid(index, w, b, g, times.size, shape),
                                   "reads": int(reads), "var_s": None if np.isnan(var_grid).all() else var_grid}

    def _own_programming(self, item, rows, w, b, g, shape):
        n = self._count(item.name, rows, "round")
        a = item.attrs
        levels = a.get("levels_s")
        wv = a.get("write_verify")
        settle = a.get("settle_s")
        tolerance = a.get("tolerance_s")
        self.out.parts["programming"] = {
            "targets_s": self._grid(rows["round"], w, b, np.asarray(rows["target"], np.float64), n, shape),
            "achieved_s": self._grid(rows["round"], w, b, g, n, shape),
            "levels_s": None if levels is None else np.asarray(levels, np.float64),
            "reads": int(a.get("reads", 1)),
            "settle_s": None if settle is None or not np.isfinite(float(settle)) else float(settle),
            "tolerance_s": None if tolerance is None else float(tolerance),
            "write_verify": json.loads(_plain(wv)) if wv is not None else None}

    def _own_pulse_response(self, item, rows, w, b, g, shape):
        trains: dict[int, list] = {}
        for k in range(rows.shape[0]):
            trains.setdefault(int(rows["train"][k]), []).append(k)
        found = []
        for ks in trains.values():
            ks = sorted(ks, key=lambda k: int(rows["pulse"][k]))
            pulsed = [k for k in ks if int(rows["pulse"][k]) > 0]
            if not pulsed:
                continue
            amplitude = float(rows["voltage"][pulsed[0]])
            width = float(rows["pulse_width"][pulsed[0]])
            found.append(Train(int(w[ks[0]]), int(b[ks[0]]), amplitude, width if np.isfinite(width) else None,
                               g[ks]))
        self._trains(found)

    def _trains(self, trains: list[Train]):
        notes: list[str] = []
        arranged = arrange_trains(trains, notes)
        self.out.notes += notes
        if arranged is None:
            self.out.extra.append(trains_record(trains))
        else:
            self.out.parts["pulse_response"] = {"trains": trains}

    # ----------------------------------------------------------------- per crosspoint

    def crosspoints(self, shape, skip: set[str]):
        import h5py
        blocks: dict[tuple[int, int], list] = {}
        retention: dict[tuple[int, int], tuple] = {}
        curves = []
        ignored: set[str] = set()
        stamps: list[int] = []
        for name, group in self.h5["crosspoints"].items():
            m = CROSSPOINT.match(name)
            if not m or not isinstance(group, h5py.Group):
                ignored.add(name)
                continue
            word, bit = int(m.group(1)), int(m.group(2))
            if word >= shape[0] or bit >= shape[1]:
                self.fail(group.name, f"is outside the crossbar's {shape[0]} words and {shape[1]} bits")
            if "timeseries" not in group:
                self.fail(group.name, "has no timeseries dataset (arc2control keeps one for every crosspoint)")
            ts = group["timeseries"]
            if "NROWS" not in ts.attrs:
                self.fail(ts.name, "has no NROWS attribute (the number of filled rows)")
            rows = self.table(ts, TIMESERIES_FIELDS, int(np.asarray(ts.attrs["NROWS"]).reshape(-1)[0]))
            blocks[(word, bit)] = self.parse_timeseries(ts.name, rows)
            experiments = group.get("experiments")
            if experiments is None:
                continue
            for ename, item in experiments.items():
                tag = TAGGED.match(ename).group(1) if TAGGED.match(ename) else ename
                if tag == "RET":
                    stamp = int(np.asarray(item.attrs.get("TSTAMP", 0)).reshape(-1)[0])
                    # the latest retention run of a device
                    if (word, bit) not in retention or stamp > retention[(word, bit)][0]:
                        retention[(word, bit)] = (stamp, item)
                elif tag == "CT":
                    rows = self.table(item, ("voltage", "current", "read_voltage"))
                    curves.append((word, bit, item.name, rows))
                    stamps.append(int(np.asarray(item.attrs.get("TSTAMP", 0)).reshape(-1)[0]))
                else:
                    ignored.add(tag)
        if ignored:
            self.out.notes.append(f"/crosspoints: experiments of other modules not imported ({', '.join(sorted(ignored))})")
        self.from_timeseries(blocks, shape, skip)
        if retention and "drift" not in skip:
            self.from_retention(retention, shape)
        if curves:
            table = np.concatenate([np.column_stack([np.full(r.shape[0], w), np.full(r.shape[0], b),
                                                     np.arange(r.shape[0]), r["voltage"], r["current"],
                                                     r["read_voltage"]]).astype(np.float64)
                                    for w, b, _, r in curves])
            self.out.extra.append(RawArray("curve_tracer.iv", "table", "mixed", table, {
                "columns": ["row", "col", "point", "voltage_v", "current_a", "read_voltage_v"],
                "datasets": [name for *_, name, _ in curves][:64],
                "recorded_at": [_iso(s) for s in stamps if s][:64]}))
            self.out.notes.append(f"curve-tracer runs of {len(curves)} device(s) kept as a record; the noise model "
                                  f"has no law for a single device's I-V sweep")

    def parse_timeseries(self, where: str, rows) -> list[dict]:
        """The device's history as blocks: reads (with the pulses just before them) and pulse trains."""
        op = np.asarray(rows["op_type"]).astype(np.int64)
        bad = ~np.isin(op, (READ, PULSE, PULSEREAD))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            self.fail(where, f"row {k}: op_type {int(op[k])} is not READ (1), PULSE (2) or PULSEREAD (3)")
        reading = op != PULSE
        g = np.full(op.size, np.nan)
        if reading.any():
            g[reading] = self.conductance(where, rows["current"][reading], rows["read_voltage"][reading])
        voltage = np.asarray(rows["voltage"], np.float64)
        width = np.asarray(rows["pulse_width"], np.float64)
        blocks: list[dict] = []
        k = 0
        pulses: list[float] = []           # amplitudes of the pulses since the last read
        last_read = np.nan
        while k < op.size:
            if op[k] == PULSE:
                pulses.append(voltage[k])
                k += 1
            elif op[k] == READ:
                j = k
                while j < op.size and op[j] == READ:
                    j += 1
                signs = {np.sign(v) for v in pulses if np.isfinite(v) and v != 0}
                blocks.append({"kind": "reads", "after": signs.pop() if len(signs) == 1 else 0.0, "reads": g[k:j]})
                last_read = g[j - 1]
                pulses = []
                k = j
            else:
                j = k
                while j < op.size and op[j] == PULSEREAD and voltage[j] == voltage[k] and \
                        (width[j] == width[k] or not (np.isfinite(width[j]) or np.isfinite(width[k]))):
                    j += 1
                blocks.append({"kind": "train", "amplitude": float(voltage[k]),
                               "width": float(width[k]) if np.isfinite(width[k]) else None,
                               "reads": np.concatenate([[last_read if not pulses else np.nan], g[k:j]])})
                # the pulses of a train count as the pulses before a block of reads that follows it
                pulses = list(voltage[k:j])
                last_read = g[j - 1]
                k = j
        return blocks

    def from_timeseries(self, blocks: dict[tuple[int, int], list], shape, skip: set[str]):
        low, high, reads, trains = {}, {}, {}, []
        for device, history in blocks.items():
            window = set()
            for i, blk in enumerate(history):
                if blk["kind"] != "reads":
                    continue
                if blk["after"] < 0 and device not in low:
                    low[device], window = blk["reads"], window | {i}
                elif blk["after"] > 0 and device not in high:
                    high[device], window = blk["reads"], window | {i}
            others = [b["reads"] for i, b in enumerate(history) if b["kind"] == "reads" and i not in window
                      and b["reads"].size >= 3]
            if others:
                reads[device] = max(others, key=len)
            trains += [Train(device[0], device[1], b["amplitude"], b["width"], b["reads"]) for b in history
                       if b["kind"] == "train" and b["amplitude"] != 0 and np.isfinite(b["amplitude"])]
        origin = {"dataset": "/crosspoints/*/timeseries"}
        if "window" not in skip and low and high:
            both = sorted(set(low) & set(high))
            self.out.parts["window"] = {"after_reset": self._stack(low, both, shape, "window after RESET"),
                                        "after_set": self._stack(high, both, shape, "window after SET")}
            self.out.origins["window"] = {**origin, "devices": len(both),
                                          "rule": "first reads after negative pulses, first reads after positive "
                                                  "pulses"}
        elif "window" not in skip and (low or high):
            self.out.notes.append(f"timeseries: reads after {'RESET' if low else 'SET'} pulses only: no window")
        if "read_noise" not in skip and reads:
            self.out.parts["read_noise"] = {"reads": self._stack(reads, sorted(reads), shape, "repeated reads"),
                                            "age_s": None}
            self.out.origins["read_noise"] = {**origin, "devices": len(reads),
                                              "rule": "longest block of 3 or more reads without pulses"}
        if "pulse_response" not in skip and trains:
            self._trains(trains)
            if "pulse_response" in self.out.parts:
                self.out.origins["pulse_response"] = {**origin, "trains": len(trains),
                                                      "rule": "runs of PULSEREAD at one amplitude and width"}

    def _stack(self, per_device: dict, devices: list, shape, what: str) -> np.ndarray:
        counts = {len(per_device[d]) for d in devices}
        n = min(counts)
        if len(counts) > 1:
            self.out.notes.append(f"{what}: {min(counts)} to {max(counts)} reads per device: the first {n} of each kept")
        out = np.full((n, *shape), np.nan)
        for d in devices:
            out[:, d[0], d[1]] = per_device[d][:n]
        return out

    def from_retention(self, retention: dict, shape):
        series, stamps = {}, []
        for device, (stamp, item) in retention.items():
            rows = self.table(item, ("read_voltage", "current", "tstamp_s", "tstamp_us"))
            g = self.conductance(item.name, rows["current"], rows["read_voltage"])
            t = np.asarray(rows["tstamp_s"], np.float64) + 1e-6 * np.asarray(rows["tstamp_us"], np.float64)
            if t.size < 3:
                self.fail(item.name, f"has {t.size} reads: a drift series needs reads at 3 or more times")
            if np.any(np.diff(t) <= 0):
                k = int(np.flatnonzero(np.diff(t) <= 0)[0]) + 1
                self.fail(item.name, f"row {k}: its timestamp is not after the one before")
            series[device] = (t, g)
            stamps.append((stamp, item.name, t[0], t[-1]))
        n = min(t.size for t, _ in series.values())
        if len({t.size for t, _ in series.values()}) > 1:
            self.out.notes.append(f"retention: devices have different numbers of reads: the first {n} of each kept")
        elapsed = np.median(np.stack([t[:n] - t[0] for t, _ in series.values()]), axis=0)
        # The file does not say when the devices were programmed; the drift law is fitted against log time
        start = self.retention_start_s if self.retention_start_s is not None else float(elapsed[1])
        mean = np.full((n, *shape), np.nan)
        for (w, b), (_, g) in series.items():
            mean[:, w, b] = g[:n]
        self.out.parts["drift"] = {"times_s": elapsed + start, "mean_s": mean, "reads": 1,
                                   "var_s": None}
        first = min(s[2] for s in stamps)
        self.out.origins["drift"] = {
            "dataset": "/crosspoints/*/experiments/RET_*", "devices": len(series),
            "first_read_at": datetime.fromtimestamp(first, tz=timezone.utc).isoformat(),
            "last_read_at": datetime.fromtimestamp(max(s[3] for s in stamps), tz=timezone.utc).isoformat(),
            "time_origin": f"each device's first retention read, taken as {start:g} s after programming"
                           + (" (one read interval: the file does not say)" if self.retention_start_s is None else ""),
            "datasets": [s[1] for s in sorted(stamps)][:64]}

    def snapshot(self, shape):
        group = self.h5["crossbar"]
        for name in ("current", "voltage"):
            if name not in group:
                self.fail(group.name, f"has no {name!r} dataset (the crossbar's last read)")
        try:
            current = np.asarray(group["current"][()], np.float64)
            voltage = np.asarray(group["voltage"][()], np.float64)
        except (OSError, RuntimeError, ValueError, TypeError) as exc:
            self.fail(group.name, f"cannot be read ({' '.join(str(exc).split())}): the file is damaged or truncated")
        expected = (shape[1], shape[0])
        for name, a in (("current", current), ("voltage", voltage)):
            if a.shape != expected:
                self.fail(f"{group.name}/{name}", f"has shape {a.shape}, expected {expected} (bits x words)")
        read = np.isfinite(voltage) & (voltage != 0)
        if not read.any():
            return
        with np.errstate(invalid="ignore", divide="ignore"):
            g = np.where(read, np.abs(current / np.where(read, voltage, 1.0)), np.nan).T
        self.out.extra.append(RawArray("crossbar.snapshot", "conductance", "S", g,
                                       {"dataset": group.name, "note": "the last read of each device arc2control "
                                                                       "kept; NaN: never read"}))


def read_arc2(path: Path, *, retention_start_s: float | None = None) -> FileParts:
    """The parts an arc2control data file gives (see the module's docstring)."""
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise MeasurementFileError(path, f"not a readable HDF5 file ({' '.join(str(exc).split())})") from None
    try:
        with h5:
            return _Reader(path, h5, retention_start_s).read()
    except MeasurementFileError:
        raise
    except (OSError, KeyError, RuntimeError) as exc:
        # h5py reports a damaged object when it is first touched
        raise MeasurementFileError(path, f"cannot be read ({' '.join(str(exc).split())}): the file is damaged or "
                                         f"truncated") from None


# --------------------------------------------------------------------------- writing

def _table(h5, tag: str, dtype, rows: dict[str, np.ndarray], devices: np.ndarray, stamp: int, attrs: dict) -> str:
    data = np.zeros(len(next(iter(rows.values()))), dtype=dtype)
    for key, values in rows.items():
        data[key] = values
    name = f"/synthetics/{tag}_{stamp}"
    dset = h5.create_dataset(name, data=data)
    dset.attrs["NROWS"] = data.shape[0]
    dset.attrs["TITLE"] = name
    dset.attrs["CLASS"] = "TABLE"
    dset.attrs["BASE_SIZE"] = max(data.shape[0], 1)
    dset.attrs["TSTAMP"] = stamp
    dset.attrs["crosspoints"] = devices
    for key, value in attrs.items():
        dset.attrs[key] = np.nan if value is None else value
    return name


def _long(values: np.ndarray) -> dict[str, np.ndarray]:
    """(n, rows, cols) -> the index, word and bit of every value, index-major, and the values."""
    index, word, bit = np.indices(values.shape)
    return {"index": index.ravel(), "word": word.ravel(), "bit": bit.ravel(), "values": values.ravel()}


def write_arc2(path: str | Path, cal, *, title: str, attrs: dict[str, Any] | None = None) -> list[str]:
    """Write ``cal``'s raw measurements (window, pulse response, programming, read noise, drift) as an
    arc2control data file at ``path`` (overwritten); returns the tables written. ``attrs`` are added to the
    root (provenance: the array, the run, ...)."""
    import h5py

    shape = _shape_of(cal)
    rows, cols = shape
    v = float(cal.options.read_voltage_v)
    base = time.time_ns()
    written: list[str] = []
    devices = np.argwhere(np.ones(shape, bool)).astype(np.int64)
    f8, u4 = "<f8", "<u4"
    # libver v108: attributes larger than 64 KiB (the crosspoints of a large array) in dense storage
    with h5py.File(path, "w", libver=("v108", "latest")) as h5:
        h5.attrs["CLASS"] = "GROUP"
        h5.attrs["PYTABLES_FORMAT_VERSION"] = "2.1"
        h5.attrs["H5DS_VERSION_MAJOR"] = 0
        h5.attrs["H5DS_VERSION_MINOR"] = 2
        h5.attrs["TITLE"] = title
        h5.attrs["words"] = rows
        h5.attrs["bits"] = cols
        for key, value in (attrs or {}).items():
            if value is not None:
                h5.attrs[key] = value
        for group in ("crossbar", "crosspoints", "synthetics", "sequences"):
            h5.create_group(group).attrs["CLASS"] = "GROUP"
        h5["crossbar"].attrs["words"] = rows
        h5["crossbar"].attrs["bits"] = cols
        last = _last_read(cal)
        h5["crossbar"].create_dataset("voltage", data=np.where(np.isnan(last), 0.0, v).T.astype(np.float32))
        h5["crossbar"].create_dataset("current", data=np.where(np.isnan(last), 0.0, last * v).T.astype(np.float32))
        stamp = iter(range(base, base + 100))
        if cal.window is not None:
            both = np.stack([cal.window.low_reads_s, cal.window.high_reads_s])       # (2, n, rows, cols)
            state, read, word, bit = (a.ravel() for a in np.indices(both.shape))
            written.append(_table(h5, "WINDOW", [("word", u4), ("bit", u4), ("state", "u1"), ("read", u4),
                                                 ("current", f8), ("read_voltage", f8)],
                                  {"word": word, "bit": bit, "state": state, "read": read,
                                   "current": both.ravel() * v, "read_voltage": v}, devices, next(stamp),
                                  {"stuck_fraction": cal.window.stuck_fraction}))
        if cal.pulse_response is not None:
            written.append(_pulse_table(h5, cal.pulse_response, v, next(stamp)))
        if cal.programming is not None:
            p = cal.programming
            flat = _long(p.achieved_s)
            settle = cal.options.programming.settle_s if cal.options.programming is not None else None
            written.append(_table(h5, "PROGRAM", [("word", u4), ("bit", u4), ("round", u4), ("target", f8),
                                                  ("current", f8), ("read_voltage", f8)],
                                  {"word": flat["word"], "bit": flat["bit"], "round": flat["index"],
                                   "target": p.targets_s.ravel(), "current": flat["values"] * v, "read_voltage": v},
                                  devices, next(stamp),
                                  {"levels_s": np.asarray(p.levels_s, np.float64), "reads": p.reads,
                                   "settle_s": settle,
                                   "tolerance_s": p.write_verify[0]["tolerance_s"] if p.write_verify else None,
                                   "write_verify": json.dumps(p.write_verify)}))
        if cal.read_noise is not None:
            flat = _long(cal.read_noise.reads_s)
            written.append(_table(h5, "READS", [("word", u4), ("bit", u4), ("read", u4), ("current", f8),
                                                ("read_voltage", f8)],
                                  {"word": flat["word"], "bit": flat["bit"], "read": flat["index"],
                                   "current": flat["values"] * v, "read_voltage": v}, devices, next(stamp),
                                  {"age_s": cal.read_noise.age_s}))
        if cal.drift is not None:
            d = cal.drift
            flat = _long(d.mean_s)
            var = d.var_s.ravel() * v ** 2 if d.var_s is not None else np.full(flat["values"].size, np.nan)
            written.append(_table(h5, "DRIFT", [("word", u4), ("bit", u4), ("time", f8), ("current", f8),
                                                ("current_var", f8), ("read_voltage", f8)],
                                  {"word": flat["word"], "bit": flat["bit"], "time": d.times_s[flat["index"]],
                                   "current": flat["values"] * v, "current_var": var, "read_voltage": v},
                                  devices, next(stamp), {"reads": d.reads}))
    return written


def _pulse_table(h5, pr, v: float, stamp: int) -> str:
    cols = {k: [] for k in ("word", "bit", "train", "pulse", "voltage", "pulse_width", "current")}
    width = np.nan if pr.pulse_width_s is None else pr.pulse_width_s
    train = 0
    for sign, curves, cells in ((1, pr.set_curves_s, pr.set_cells), (-1, pr.reset_curves_s, pr.reset_cells)):
        for a, amplitude in enumerate(pr.amplitudes_v):
            for k in range(cells.shape[1]):
                n = curves.shape[1]
                cols["word"] += [cells[a, k, 0]] * n
                cols["bit"] += [cells[a, k, 1]] * n
                cols["train"] += [train] * n
                cols["pulse"] += list(range(n))
                cols["voltage"] += [0.0] + [sign * amplitude] * (n - 1)
                cols["pulse_width"] += [0.0] + [width] * (n - 1)
                cols["current"] += list(curves[a, :, k] * v)
                train += 1
    devices = np.unique(np.concatenate([pr.set_cells.reshape(-1, 2), pr.reset_cells.reshape(-1, 2)]), axis=0)
    f8, u4 = "<f8", "<u4"
    return _table(h5, "PULSETRAIN", [("word", u4), ("bit", u4), ("train", u4), ("pulse", u4), ("voltage", f8),
                                     ("pulse_width", f8), ("current", f8), ("read_voltage", f8)],
                  {**{k: np.asarray(x) for k, x in cols.items()}, "read_voltage": v}, devices.astype(np.int64), stamp,
                  {"note": "pulse 0 is the read before the train"})


def _shape_of(cal) -> tuple[int, int]:
    for a in (cal.window and cal.window.low_reads_s, cal.read_noise and cal.read_noise.reads_s,
              cal.programming and cal.programming.achieved_s, cal.drift and cal.drift.mean_s):
        if a is not None:
            return tuple(a.shape[1:])
    raise ValueError("the calibration holds no measurement of the whole array to write")


def _last_read(cal) -> np.ndarray:
    """The last single read of every device: the repeated reads' last, else the window's last."""
    if cal.read_noise is not None:
        return cal.read_noise.reads_s[-1]
    if cal.window is not None:
        return cal.window.high_reads_s[-1]
    return np.full(_shape_of(cal), np.nan)
