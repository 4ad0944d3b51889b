"""The predictive check: a calibration tests its model on devices it kept out of the fit.

The software crossbar's devices follow the laws the NoiseModel has, so a calibration of it must
pass its own check; a model made wrong on purpose, or a device family with a law the model lacks,
must fail the check of that quantity, and only where the law is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import TypeAdapter

import hil.history
import hil.run
from calibration.checks import evaluate_checks
from calibration.options import CalibrationOptions
from calibration.pipeline import fit_noise_model, run_calibration
from drivers.families import AnyDeviceConfig, crossbar_class

DRIFT_TIMES = [1.0, 10.0, 100.0, 1000.0, 3600.0, 86400.0]


def calibrate(device: dict, seed: int = 0, size: int = 64):
    # No pulse response or periphery: the check compares programming, read noise and drift only.
    options = CalibrationOptions(pulse_response=None, periphery=None,
                                 drift={"times_s": DRIFT_TIMES, "reads": 4})
    config = TypeAdapter(AnyDeviceConfig).validate_python(device)
    with crossbar_class(device.get("family", "rram"))(size, size, config=config, seed=seed) as xbar:
        cal = run_calibration(xbar, options, np.random.default_rng(seed))
    model = fit_noise_model(cal, array_id="a", rows=size, cols=size)
    return cal, model, options


def by_quantity(cal, model, options, seed: int = 0) -> dict:
    checks = evaluate_checks(cal.check, model, options.check, np.random.default_rng(seed), options.drift.times_s)
    return {c.quantity: c for c in checks}


@pytest.fixture(scope="module")
def default_device():
    return calibrate({})


def test_held_out_devices_are_kept_out_of_every_fit(default_device):
    cal, model, options = default_device
    working = cal.working
    assert cal.holdout.sum() == pytest.approx(0.25 * working.sum(), abs=1)
    assert not (cal.holdout & ~working).any()
    # The drift fit gave no exponent to a held-out device: it never saw one.
    assert np.isnan(cal.drift_fit.nu[cal.holdout]).all()
    assert np.isfinite(cal.drift_fit.nu[cal.fitted]).mean() > 0.95
    # programmed as many rounds as the fitted devices were
    assert cal.check.achieved_s.shape == (options.programming.repeats, int(cal.holdout.sum()))


def test_default_device_passes_its_own_check(default_device):
    checks = by_quantity(*default_device)
    assert set(checks) == {"programming", "read_noise", *(f"drift_{t:g}s" for t in DRIFT_TIMES[1:])}
    for c in checks.values():
        assert c.n > 900
        assert c.ks < 0.1 and 0.8 <= c.spread_ratio <= 1.25, c
        assert c.verdict == "pass"


def test_a_model_with_doubled_read_noise_fails_the_read_noise_check_only(default_device):
    cal, model, options = default_device
    wrong = model.model_copy(update={"read": model.read.model_copy(
        update={"floor_s": 2 * model.read.floor_s, "relative": 2 * model.read.relative})})
    checks = by_quantity(cal, wrong, options)
    assert checks["read_noise"].verdict == "warn"
    # Predicted noise twice the observed: the ratio says by how much.
    assert checks["read_noise"].spread_ratio == pytest.approx(2, rel=0.1)
    # Programming error is dominated by write-verify, not by read noise: still described.
    assert checks["programming"].verdict == "pass"


def test_a_model_with_half_the_drift_exponent_fails_the_long_drift_checks(default_device):
    cal, model, options = default_device
    wrong = model.model_copy(update={"drift": model.drift.model_copy(update={"nu_mean": model.drift.nu_mean / 2})})
    checks = by_quantity(cal, wrong, options)
    # After an hour and a day the predicted ratios sit well above the observed ones.
    for t in ("3600", "86400"):
        assert checks[f"drift_{t}s"].verdict == "warn" and checks[f"drift_{t}s"].ks > 0.3
    assert checks["programming"].verdict == checks["read_noise"].verdict == "pass"


def test_pcm_drift_that_depends_on_conductance_is_chosen_and_then_passes_the_check():
    # PCM drifts faster at low conductance (Nandakumar 2019: mean exponent -0.0155 ln x + 0.0244, clipped at
    # 0.049 above x = 0.2) and its 1/f read noise grows with age: the calibration chooses the flicker law.
    cal, model, options = calibrate({"family": "pcm"})
    drift = model.drift
    assert drift.law == "power_g" and drift.selection["power_g"] > drift.selection["power"]
    # the lowest band's exponent exceeds the plateau the upper bands share, as the published law has it
    assert drift.nu_mean_by_level[0] > 1.15 * np.median(drift.nu_mean_by_level[2:])
    assert np.median(drift.nu_mean_by_level[2:]) == pytest.approx(0.049, rel=0.1)
    checks = by_quantity(cal, model, options)
    assert all(checks[f"drift_{t:g}s"].verdict == "pass" for t in DRIFT_TIMES[1:])
    assert model.read.law == "flicker" and checks["read_noise"].verdict == "pass"

    # One exponent distribution for every conductance misses: the low-conductance band, and by more after a
    # day than after 10 s.
    single = model.model_copy(update={"drift": drift.model_copy(update={
        "law": "power", "levels_s": None, "nu_mean_by_level": None, "nu_std_by_level": None})})
    checks = by_quantity(cal, single, options)
    day = checks["drift_86400s"]
    assert day.verdict == "warn"
    low = np.median(cal.check.drift.mean_s[0])
    assert float(day.note.split(": ")[1].split("-")[1].split(" ")[0]) * 1e-6 < 1.05 * low
    assert day.ks > 2 * checks["drift_10s"].ks


def test_a_device_whose_drift_does_not_depend_on_conductance_keeps_the_single_law(default_device):
    _, model, _ = default_device
    assert model.drift.law == "power" and model.drift.levels_s is None
    assert model.drift.selection["power"] + 0.01 >= model.drift.selection["power_g"]


def test_a_device_with_white_read_noise_keeps_the_white_law(default_device):
    _, model, _ = default_device
    assert model.read.law == "white" and model.read.flicker == 0
    assert model.read.selection["white"] + 0.01 >= model.read.selection["flicker"]
    # the read-noise stage's reads came about a second after programming (settle_s)
    assert 0.5 < model.read.reference_age_s < 2


def test_too_few_held_out_devices_give_no_verdict():
    cal, model, options = calibrate({}, size=16)
    checks = by_quantity(cal, model, options)
    assert {c.verdict for c in checks.values()} == {"n/a"}
    assert all(c.ks is None and "fewer than" in c.note for c in checks.values())


STEP = """name: checked
array: {rows: 32, cols: 32}
steps:
  - kind: calibrate
    name: cal
    pulse_response: null
    programming: {levels: 4, repeats: 1}
    read_noise: {reads: 20}
    drift: {times_s: [1, 100, 3600, 86400], reads: 2}
    periphery: null
    check: {holdout_fraction: 0.4}
"""


def test_calibrate_step_stores_reports_and_lists_its_check(tmp_path, capsys):
    protocol = tmp_path / "cal.yaml"
    protocol.write_text(STEP, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'cal.db'}"
    assert hil.run.main([str(protocol), "--db", url, "--seed", "2", "--report-dir", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert hil.history.main(["--db", url, "--format", "json", "checks", "--array", "mock-32x32-seed0"]) == 0
    rows = {r["quantity"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"programming", "read_noise", "drift_100s", "drift_3600s", "drift_86400s"}
    for r in rows.values():
        # 40% of about 1000 working devices
        assert 350 < r["n"] < 450 and r["step_name"] == "cal"
        assert r["verdict"] == ("pass" if r["ks"] < 0.1 and 0.8 <= r["spread_ratio"] <= 1.25 else "warn")
    assert hil.history.main(["--db", url, "checks", "--array", "mock-32x32-seed0", str(rows["read_noise"]["run_id"])]) == 0
    assert "read_noise" in capsys.readouterr().out
    assert hil.history.main(["--db", url, "checks", "--array", "mock-32x32-seed0", "99"]) == 2
    assert "no predictive check" in capsys.readouterr().err
    report = next(Path(tmp_path / "r").rglob("report.md")).read_text(encoding="utf-8")
    assert "## Predictive check on held-out devices" in report
    assert "| drift_86400s |" in report


def test_a_conductance_dependent_drift_law_needs_its_curves():
    from pydantic import ValidationError
    from calibration.noise_model import Drift
    with pytest.raises(ValidationError, match="power_g needs levels_s"):
        Drift(law="power_g", nu_mean=0.05, nu_std=0.01, t0_s=1.0)
    with pytest.raises(ValidationError, match="belong to the drift law power_g"):
        Drift(nu_mean=0.05, nu_std=0.01, t0_s=1.0, levels_s=[1e-6, 2e-6])
    with pytest.raises(ValidationError, match="must increase"):
        Drift(law="power_g", nu_mean=0.05, nu_std=0.01, t0_s=1.0, levels_s=[2e-6, 1e-6], nu_mean_by_level=[0, 0],
              nu_std_by_level=[0, 0])
