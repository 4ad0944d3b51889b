"""Measurements recorded elsewhere (arc2control HDF5, CSV, .npy) imported as calibrations, and exported.

The arc2control files here are written by a helper of this test with h5py directly, after arc2control's
documented layout ("The H5 Data Store": root attributes words/bits, /crossbar current and voltage indexed
[bit, word], /crosspoints/WxxByy/timeseries of current, voltage, pulse_width, read_voltage, op_type with
NROWS, module tables such as RET_<ns> and CT_<ns> under experiments/), not by the exporter.
"""

import hashlib
import json
import time

import h5py
import numpy as np
import pytest
from sqlalchemy import func, select

import hil.calibrate
import hil.run
from db import Database
from db.models import Measurement, NoiseModelRecord, Run
from db.records import load_measurement_array
from drivers import DeviceConfig, SoftwareCrossbar
from hil.noise_models import load_noise_model

READ, PULSE, PULSEREAD = 1, 2, 3
TIMESERIES = [("current", "<f4"), ("voltage", "<f4"), ("pulse_width", "<f4"), ("read_voltage", "<f4"),
              ("op_type", "<u4")]
RET = [("read_voltage", "<f4"), ("current", "<f4"), ("tstamp_s", "<u8"), ("tstamp_us", "<u8")]
CT = [("voltage", "<f4"), ("current", "<f4"), ("read_voltage", "<f4")]
VREAD = 0.2
T0 = 1_700_000_000          # the retention runs' first read, s since the epoch


def device_values(rows: int, cols: int, seed: int = 0) -> dict[str, np.ndarray]:
    """What the helper's file holds per device, in siemens."""
    rng = np.random.default_rng(seed)
    return {"low": rng.uniform(1e-6, 3e-6, (rows, cols)), "high": rng.uniform(80e-6, 120e-6, (rows, cols)),
            "reads": rng.uniform(20e-6, 60e-6, (rows, cols)), "nu": rng.uniform(0.005, 0.02, (rows, cols))}


def write_arc2control_file(path, rows: int = 8, cols: int = 8, *, reads: int = 10, window_reads: int = 4,
                           retention_times=(0.0, 1.0, 10.0, 100.0, 1000.0), seed: int = 0,
                           skip_timeseries_of=None):
    """An arc2control data file of a small array: each device's log (window after RESET and SET pulses, a
    SET or RESET pulse train on some devices, repeated reads), a retention run on every device, a curve
    tracer run on one, and the crossbar view. Returns what was written (conductances, times)."""
    v = device_values(rows, cols, seed)
    noise = np.random.default_rng(seed + 1)
    written = {"low": [], "high": [], "reads": [], "retention": {}, "trains": {}}
    with h5py.File(path, "w") as h5:
        h5.attrs.update({"CLASS": "GROUP", "PYTABLES_FORMAT_VERSION": "2.1", "H5DS_VERSION_MAJOR": 0,
                         "H5DS_VERSION_MINOR": 2, "TITLE": "chip-X bench", "words": rows, "bits": cols})
        for group in ("crossbar", "crosspoints", "synthetics", "sequences"):
            h5.create_group(group).attrs["CLASS"] = "GROUP"
        h5["crossbar"].attrs.update({"words": rows, "bits": cols})
        raster_i = np.zeros((cols, rows), np.float32)     # (bits, words), indexed [bit, word]
        raster_v = np.zeros((cols, rows), np.float32)
        low = np.empty((window_reads, rows, cols))
        high = np.empty((window_reads, rows, cols))
        rep = np.empty((reads, rows, cols))
        for w in range(rows):
            for b in range(cols):
                log = []
                log += [(np.nan, -2.0, 1e-5, np.nan, PULSE)] * 3
                g = v["low"][w, b] * (1 + 0.01 * noise.standard_normal(window_reads))
                low[:, w, b] = g
                log += [(x * VREAD, VREAD, 0.0, VREAD, READ) for x in g]
                log += [(np.nan, 2.0, 1e-5, np.nan, PULSE)] * 3
                g = v["high"][w, b] * (1 + 0.01 * noise.standard_normal(window_reads))
                high[:, w, b] = g
                log += [(x * VREAD, VREAD, 0.0, VREAD, READ) for x in g]
                k = w * cols + b
                if k < 8:
                    # a pulse train of 5 identical pulses, SET at 1.2 V on even devices, RESET on odd ones
                    amplitude = 1.2 if k % 2 == 0 else -1.2
                    start = v["high"][w, b] if amplitude < 0 else v["low"][w, b]
                    curve = start * (1.3 if amplitude > 0 else 0.8) ** np.arange(1, 6)
                    log += [(x * VREAD, amplitude, 1e-6, VREAD, PULSEREAD) for x in curve]
                    written["trains"][(w, b)] = (amplitude, np.concatenate([[g[-1]], curve]))
                    log += [(np.nan, 1.5, 1e-6, np.nan, PULSE)]   # programmed for the repeated reads
                else:
                    log += [(np.nan, 1.5, 1e-6, np.nan, PULSE)]
                g = v["reads"][w, b] * (1 + 0.005 * noise.standard_normal(reads))
                rep[:, w, b] = g
                log += [(x * VREAD, VREAD, 0.0, VREAD, READ) for x in g]
                grp = h5["crosspoints"].create_group(f"W{w:02d}B{b:02d}")
                if (w, b) != skip_timeseries_of:
                    table = np.zeros(len(log) + 7, dtype=TIMESERIES)       # spare rows, as the store keeps them
                    table[:len(log)] = log
                    ts = grp.create_dataset("timeseries", data=table, maxshape=(None,), chunks=True)
                    ts.attrs.update({"NROWS": len(log), "TITLE": grp.name[1:], "CLASS": "TABLE", "BASE_SIZE": 1000})
                raster_i[b, w], raster_v[b, w] = g[-1] * VREAD, VREAD
                # retention: reads at the given times after the first, drifting as (1 + t)^-nu
                times = T0 + np.asarray(retention_times) + 1e-3 * k
                gr = v["reads"][w, b] * (1 + np.asarray(retention_times)) ** -v["nu"][w, b]
                ret = np.zeros(len(times), dtype=RET)
                ret["read_voltage"], ret["current"] = VREAD, gr * VREAD
                ret["tstamp_s"] = np.floor(times).astype(np.uint64)
                ret["tstamp_us"] = np.round((times - np.floor(times)) * 1e6).astype(np.uint64)
                stamp = int(T0 * 1e9) + k
                dset = grp.create_dataset(f"experiments/RET_{stamp}", data=ret)
                dset.attrs.update({"TSTAMP": stamp, "crosspoints": [[w, b]], "NROWS": 0, "vread": VREAD})
                written["retention"][(w, b)] = gr
                if k == 0:
                    sweep = np.linspace(0, 1, 11, dtype=np.float32)
                    ct = np.zeros(11, dtype=CT)
                    ct["voltage"], ct["current"], ct["read_voltage"] = sweep, sweep * 1e-5, sweep
                    grp.create_dataset(f"experiments/CT_{stamp}", data=ct).attrs["TSTAMP"] = stamp
        h5["crossbar"].create_dataset("current", data=raster_i)
        h5["crossbar"].create_dataset("voltage", data=raster_v)
    # values as a float32 file holds them
    f32 = lambda a: np.abs((np.asarray(a) * VREAD).astype(np.float32).astype(np.float64) / np.float32(VREAD))  # noqa: E731
    written.update(low=f32(low), high=f32(high), reads=f32(rep), values=v)
    return written


def stored(url, run_id):
    """name -> (array, meta) of a run's measurements, and the run."""
    with Database(url) as db, db.session() as s:
        run = s.get(Run, run_id)
        out = {m.name: (load_measurement_array(m), m.meta) for m in
               s.scalars(select(Measurement).where(Measurement.run_fk == run_id))}
        return out, {"status": run.status, "backend": run.backend, "options": run.options, "error": run.error,
                     "summary": run.steps[0].summary, "protocol": run.protocol_text}


def counts(url):
    with Database(url) as db, db.session() as s:
        return (s.scalar(select(func.count()).select_from(Run)), s.scalar(select(func.count()).select_from(Measurement)),
                s.scalar(select(func.count()).select_from(NoiseModelRecord)))


def test_arc2control_file_becomes_the_calibration_it_describes(tmp_path, capsys):
    path = tmp_path / "bench.h5"
    w = write_arc2control_file(path)
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert hil.calibrate.main(["import", str(path), "--array", "chip-X", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "no programming results (targets and achieved conductances): programming error not fitted" in out
    data, run = stored(url, 1)
    assert run["status"] == "completed" and run["backend"] == "import"
    # window: the first reads after the RESET pulses and after the SET pulses; repeated reads: the reads after
    # the device was programmed (the trains' reads are not among them)
    np.testing.assert_allclose(data["window.after_reset"][0], w["low"], rtol=1e-6)
    np.testing.assert_allclose(data["window.after_set"][0], w["high"], rtol=1e-6)
    np.testing.assert_allclose(data["read_noise.reads"][0], w["reads"], rtol=1e-6)
    # drift: the retention runs, times from each device's first read (microsecond stamps), that read taken
    # as one read interval after programming (the file does not say)
    np.testing.assert_allclose(data["drift.mean"][1]["times_s"], [1, 2, 11, 101, 1001], atol=2e-6)
    for (r, c), g in w["retention"].items():
        np.testing.assert_allclose(data["drift.mean"][0][:, r, c], g, rtol=1e-6)
    # pulse trains: one SET and one RESET amplitude, four devices each, the read before and after 5 pulses
    pr = data["pulse_response.set"]
    assert pr[1]["amplitudes_v"] == [1.2] and pr[0].shape == (1, 6, 4)
    cells = data["pulse_response.set_cells"][0][0]
    for k, (r, c) in enumerate(cells):
        amplitude, curve = w["trains"][(r, c)]
        assert amplitude == 1.2
        np.testing.assert_allclose(pr[0][0, :, k], curve, rtol=1e-6)
    # records no fit uses: the crossbar view (its last read of each device) and the curve tracer sweep
    np.testing.assert_allclose(data["crossbar.snapshot"][0], w["reads"][-1], rtol=1e-6)
    assert data["curve_tracer.iv"][0].shape == (11, 6)
    # provenance: the file, its hash and format, where each part was found, the file's own timestamps
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    source = data["drift.mean"][1]["source"]
    assert source["file"] == "bench.h5" and source["sha256"] == digest and source["format"] == "arc2control-h5"
    assert source["first_read_at"].startswith("2023-11-14T22:13:20")
    assert data["window.after_reset"][1]["source"]["dataset"] == "/crosspoints/*/timeseries"
    assert run["options"]["import"][0]["sha256"] == digest and run["options"]["import"][0]["title"] == "chip-X bench"
    assert json.loads(run["protocol"])["steps"][0]["source"]["files"][0]["path"].endswith("bench.h5")
    # the noise model: fitted from what the file has, saying what it could not fit
    with Database(url) as db:
        model = load_noise_model(db, array_id="chip-X")
    assert model.programming is None and model.drift is not None
    assert model.window.g_max_s == pytest.approx(np.median(w["high"]), rel=0.01)
    assert model.drift.nu_mean == pytest.approx(w["values"]["nu"].mean(), rel=0.1)
    assert any("programming error not fitted" in x for x in run["summary"]["warnings"])


def test_csv_and_npy_files_of_reads_window_and_drift(tmp_path, capsys):
    rows, cols, n = 8, 8, 12
    rng = np.random.default_rng(3)
    g = rng.uniform(10e-6, 50e-6, (rows, cols))
    reads = g * (1 + 0.01 * rng.standard_normal((n, rows, cols)))
    lines = ["row,col,read,conductance_s"] + [f"{r},{c},{k},{float(reads[k, r, c])!r}" for r in range(rows)
                                              for c in range(cols) for k in range(n)]
    (tmp_path / "reads.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    times = [1.0, 10.0, 100.0, 1000.0]
    drift = g * (1 + np.asarray(times))[:, None, None] ** -0.01
    lines = ["row,col,time_s,current_a,read_voltage_v"] + [
        f"{r},{c},{t},{float(drift[k, r, c] * 0.1 * f)!r},0.1" for k, t in enumerate(times) for r in range(rows)
        for c in range(cols) for f in (0.999, 1.001)]
    (tmp_path / "drift.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    low, high = np.full((4, rows, cols), 2e-6), np.full((4, rows, cols), 90e-6) * rng.uniform(0.9, 1.1, (4, 1, 1))
    np.save(tmp_path / "low.npy", low)
    np.save(tmp_path / "high.npy", high)
    url = f"sqlite:///{tmp_path / 'h.db'}"
    args = ["import", str(tmp_path / "reads.csv"), str(tmp_path / "drift.csv"), f"after_reset={tmp_path / 'low.npy'}",
            f"after_set={tmp_path / 'high.npy'}", "--array", "chip-C", "--db", url]
    assert hil.calibrate.main(args) == 0
    data, run = stored(url, 1)
    np.testing.assert_array_equal(data["read_noise.reads"][0], reads)
    np.testing.assert_array_equal(data["window.after_set"][0], high)
    np.testing.assert_allclose(data["drift.mean"][0], drift, rtol=1e-12)
    assert data["drift.mean"][1]["times_s"] == times and data["drift.mean"][1]["reads"] == 2
    # two reads at each time: their variance is kept (read noise at that time)
    np.testing.assert_allclose(data["drift.variance"][0], 2 * (0.001 * drift) ** 2, rtol=1e-6)
    assert data["drift.mean"][1]["read_voltage_v"] == 0.1
    assert data["read_noise.reads"][1]["source"]["columns"] == ["row", "col", "read", "conductance_s"]
    assert data["window.after_reset"][1]["source"]["file"] == "low.npy"
    assert data["window.after_set"][1]["source"]["file"] == "high.npy"
    assert [s["format"] for s in run["options"]["import"]] == ["csv", "csv", "npy", "npy"]
    with Database(url) as db:
        model = load_noise_model(db, array_id="chip-C")
    assert model.read.relative == pytest.approx(0.01, rel=0.15)
    assert model.drift.nu_mean == pytest.approx(0.01, rel=0.1)

    # reads alone are stored, but no noise model can be made of them: the run says which part is missing
    url2 = f"sqlite:///{tmp_path / 'h2.db'}"
    np.save(tmp_path / "reads.npy", reads)
    capsys.readouterr()
    assert hil.calibrate.main(["import", str(tmp_path / "reads.npy"), "--array", "chip-D", "--db", url2]) == 1
    err = capsys.readouterr().err
    assert "noise model not fitted" in err and "no window (reads after saturating RESET" in err
    data, run = stored(url2, 1)
    assert run["status"] == "failed" and "read_noise.reads" in data
    assert counts(url2)[2] == 0


def test_noise_model_from_exported_and_imported_measurements_matches_the_live_one(tmp_path):
    """A mock array calibrated live, its raw measurements exported to an arc2control file, imported as
    another array and fitted: parameter by parameter, both fits agree, and both recover the mock's truth,
    within the truth-recovery tolerances (tests/test_calibration_truth.py). The live fit leaves a quarter
    of the devices out for its predictive check; the import fits them all."""
    rows = cols = 32
    chip = 7
    protocol = tmp_path / "live.yaml"
    protocol.write_text(f"""name: live
array: {{rows: {rows}, cols: {cols}, name: chip-A}}
mock: {{seed: {chip}}}
steps:
  - kind: calibrate
    name: cal
    report: false
    pulse_response: {{amplitudes_v: [1.3], pulses: 5, cells: 4}}
    periphery: null
""", encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert hil.run.main([str(protocol), "--db", url, "--seed", "1"]) == 0
    out = tmp_path / "chip-A.h5"
    assert hil.calibrate.main(["export", "--run", "1", str(out), "--db", url]) == 0
    assert hil.calibrate.main(["import", str(out), "--array", "chip-B", "--db", url]) == 0
    with Database(url) as db:
        live, imported = load_noise_model(db, array_id="chip-A"), load_noise_model(db, array_id="chip-B")
    cfg = DeviceConfig()
    truth = SoftwareCrossbar(rows, cols, config=cfg, seed=chip).truth
    working = ~truth.stuck
    relative = [("read.relative", lambda m: m.read.relative, cfg.read_noise_relative, 0.15),
                ("read.floor_s", lambda m: m.read.floor_s, cfg.read_noise_floor_s, 0.15),
                ("drift.nu_mean", lambda m: m.drift.nu_mean, truth.drift_nu[working].mean(), 0.15),
                ("drift.nu_std", lambda m: m.drift.nu_std, truth.drift_nu[working].std(), 0.15),
                ("drift.t0_s", lambda m: m.drift.t0_s, cfg.drift_t0_s, 0.5),
                ("window.g_max_s", lambda m: m.window.g_max_s, np.median(truth.g_max_s[working]), 0.05),
                ("window.g_max_spread", lambda m: m.window.g_max_spread, np.log(truth.g_max_s[working]).std(), 0.15)]
    for name, get, true, tol in relative:
        assert get(imported) == pytest.approx(get(live), rel=tol), name
        assert get(imported) == pytest.approx(true, rel=tol), name
    for rate in ("stuck_on_rate", "stuck_off_rate"):
        assert abs(getattr(imported.defects, rate) - getattr(live.defects, rate)) <= 0.01
        assert abs(getattr(imported.defects, rate) - getattr(truth, rate.replace("_rate", "")).mean()) <= 0.01
    assert imported.read.law == live.read.law and imported.drift.law == live.drift.law
    # programming error per level: the error's rms (core and tail together, whichever law each fit chose: on
    # this chip the import's extra devices tip its choice to a core with a tail) and its bias
    p, q = live.programming, imported.programming
    np.testing.assert_allclose(q.levels_s, p.levels_s, rtol=1e-12)
    for level in p.levels_s:
        assert q.std(level) == pytest.approx(p.std(level), rel=0.15), level
        assert q.bias(level) == pytest.approx(p.bias(level), abs=0.15 * p.std(level)), level
        if p.law == q.law:
            assert q.sigma(level) == pytest.approx(p.sigma(level), rel=0.15), level


def test_export_then_import_gives_back_the_measurements_exactly(tmp_path):
    """Without a held-out check both fits see the same devices: the exported file carries every value."""
    from calibration.arc2_h5 import write_arc2
    from calibration.measurement_files import read_measurements
    from calibration.options import CalibrationOptions, PulseResponseOptions
    from calibration.pipeline import fit_measured, fit_noise_model, run_calibration

    options = CalibrationOptions(periphery=None, check=None, pulse_response=PulseResponseOptions(pulses=5, cells=4))
    with SoftwareCrossbar(16, 16, seed=4) as x:
        live = run_calibration(x, options, np.random.default_rng(0))
    write_arc2(tmp_path / "c.h5", live, title="c")
    imported = read_measurements([tmp_path / "c.h5"])
    cal = fit_measured(imported.calibration)
    for a, b in ((live.window.low_reads_s, cal.window.low_reads_s), (live.read_noise.reads_s, cal.read_noise.reads_s),
                 (live.drift.var_s, cal.drift.var_s), (live.programming.achieved_s, cal.programming.achieved_s),
                 (live.pulse_response.reset_curves_s, cal.pulse_response.reset_curves_s)):
        np.testing.assert_allclose(b, a, rtol=1e-14)
    assert cal.read_noise.age_s == live.read_noise.age_s and cal.programming.reads == live.programming.reads
    m1 = fit_noise_model(live, array_id="a", rows=16, cols=16)
    m2 = fit_noise_model(cal, array_id="a", rows=16, cols=16)
    # every parameter the same but for rounding (a value goes to the file as current = g V)
    assert_same(m2.model_dump(exclude={"created_at"}), m1.model_dump(exclude={"created_at"}))


def assert_same(a, b, where="model"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{k}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-300), where
    else:
        assert a == b, where


def test_protocol_step_takes_its_measurements_from_a_file(tmp_path):
    path = tmp_path / "bench.h5"
    write_arc2control_file(path)
    protocol = tmp_path / "p.yaml"
    protocol.write_text("""name: from_file
array: {rows: 8, cols: 8, name: chip-X}
steps:
  - kind: calibrate
    name: cal
    report: false
    source: {file: bench.h5, retention_start_s: 5.0}
""", encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert hil.run.main([str(protocol), "--db", url]) == 0
    data, run = stored(url, 1)
    assert run["status"] == "completed" and run["summary"]["noise_model_id"] == 1
    assert data["drift.mean"][1]["times_s"] == pytest.approx([5, 6, 15, 105, 1005], abs=1e-5)
    assert data["window.after_set"][1]["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # a source step measures nothing: options of measuring are refused, with their line
    protocol.write_text(protocol.read_text().replace("    report: false\n", "    report: false\n    window: null\n"))
    assert hil.run.main([str(protocol), "--db", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert not (tmp_path / "x.db").exists()


def _one_line_refusal(capsys, argv, url, *expected):
    before = counts(url)
    assert hil.calibrate.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    for text in expected:
        assert text in err, err
    assert counts(url) == before
    return err


@pytest.fixture
def db_with_a_run(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    write_arc2control_file(tmp_path / "good.h5")
    assert hil.calibrate.main(["import", str(tmp_path / "good.h5"), "--array", "chip-X", "--db", url]) == 0
    return url


def test_bad_files_are_refused_in_one_line_with_nothing_written(tmp_path, capsys, db_with_a_run):
    url = db_with_a_run
    capsys.readouterr()
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    _one_line_refusal(capsys, ["import", str(garbage), "--array", "chip-Y", "--db", url], url,
                      "garbage.h5", "not a readable HDF5 file")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes((tmp_path / "good.h5").read_bytes()[:20000])
    _one_line_refusal(capsys, ["import", str(truncated), "--array", "chip-Y", "--db", url], url, "truncated.h5")
    missing = tmp_path / "missing.h5"
    write_arc2control_file(missing, skip_timeseries_of=(2, 3))
    _one_line_refusal(capsys, ["import", str(missing), "--array", "chip-Y", "--db", url], url,
                      "missing.h5: /crosspoints/W02B03: has no timeseries dataset")
    no_size = tmp_path / "no_size.h5"
    write_arc2control_file(no_size)
    with h5py.File(no_size, "a") as h5:
        del h5.attrs["bits"]
    _one_line_refusal(capsys, ["import", str(no_size), "--array", "chip-Y", "--db", url], url,
                      "no_size.h5: /: no attribute 'bits'")
    bad_csv = tmp_path / "reads.csv"
    bad_csv.write_text("row,col,conductance_s\n0,0,1e-5\n0,0,1.1e-5\n\n0,0,abc\n", encoding="utf-8")
    _one_line_refusal(capsys, ["import", str(bad_csv), "--array", "chip-Y", "--db", url], url,
                      "reads.csv: line 5, column conductance_s: 'abc' is not a number")
    bad_column = tmp_path / "typo.csv"
    bad_column.write_text("row,col,conductanse_s\n0,0,1e-5\n", encoding="utf-8")
    _one_line_refusal(capsys, ["import", str(bad_column), "--array", "chip-Y", "--db", url], url,
                      "typo.csv: header: unknown column 'conductanse_s'")
    # an array recorded with another shape is refused before anything is written
    _one_line_refusal(capsys, ["import", str(tmp_path / "good.h5"), "--array", "chip-X", "--shape", "8x9", "--db", url],
                      url, "is of a 8x8 array, not 8x9")


def test_bad_source_file_of_a_protocol_is_refused_before_the_run(tmp_path, capsys):
    (tmp_path / "reads.csv").write_text("row,col,conductance_s\n0,0,1e-5\n1,0,x\n", encoding="utf-8")
    protocol = tmp_path / "p.yaml"
    protocol.write_text("""name: from_file
array: {rows: 8, cols: 8}
steps:
  - kind: calibrate
    source:
      file: reads.csv
""", encoding="utf-8")
    assert hil.run.main([str(protocol), "--db", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    err = capsys.readouterr().err
    assert "p.yaml:6: steps[0].source.file:" in err and "reads.csv: line 3, column conductance_s: 'x' is not a number" in err
    assert not (tmp_path / "x.db").exists()


def test_export_of_a_run_without_a_calibration_is_refused(tmp_path, capsys, db_with_a_run):
    assert hil.calibrate.main(["export", "--run", "9", str(tmp_path / "o.h5"), "--db", db_with_a_run]) == 2
    assert "there is no run 9" in capsys.readouterr().err
    assert not (tmp_path / "o.h5").exists()
    assert hil.calibrate.main(["export", "--run", "1", str(tmp_path / "o.h5"), "--db", db_with_a_run]) == 0
    assert hil.calibrate.main(["export", "--run", "1", str(tmp_path / "o.h5"), "--db", db_with_a_run]) == 2
    assert "exists" in capsys.readouterr().err


def test_timestamps_in_retention_rows_are_read_to_the_microsecond(tmp_path):
    from calibration.measurement_files import read_measurements
    start = time.time()
    write_arc2control_file(tmp_path / "r.h5", retention_times=(0.0, 0.5, 2.25, 7.0))
    imported = read_measurements([tmp_path / "r.h5"])
    np.testing.assert_allclose(imported.calibration.drift.times_s, [0.5, 1, 2.75, 7.5], atol=2e-6)
    assert time.time() - start < 5


def test_a_failure_while_storing_leaves_no_part_of_the_import(tmp_path, monkeypatch, capsys):
    """The raw arrays of an import go in one transaction: a failure among them stores none, and the run
    records the failure."""
    path = tmp_path / "bench.h5"
    write_arc2control_file(path)
    url = f"sqlite:///{tmp_path / 'h.db'}"

    def broken(*args, **kwargs):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr("db.records.add_device_stats", broken)
    assert hil.calibrate.main(["import", str(path), "--array", "chip-X", "--db", url]) == 1
    assert "the disk is full" in capsys.readouterr().err
    data, run = stored(url, 1)
    assert run["status"] == "failed" and "the disk is full" in run["error"]
    assert data == {} and counts(url) == (1, 0, 0)
