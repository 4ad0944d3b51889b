"""What calibration recovers of each device family's hidden truth, and how its predictions hold on held-out devices.

    python scripts/truth_recovery.py [--out docs/truth_recovery.md] [--seeds 0 1 2] [--size 64]

For each family of the software crossbar (rram, pcm, vcm, and the rram pessimistic preset) and each chip
seed, a calibration as protocols/mgrade_loop.yaml runs it (levels from the measured window; drift read up
to one day so the check covers 1 h and 1 day) is fitted, and the noise model is compared with the
simulator's hidden truth:

* window: the noise-free conductance of the working devices after the window stage's saturating RESET
  and SET (a twin chip of the same seed, whose true state can be looked at between the two), median and
  spread of ln g;
* read noise: the simulator's own read-noise sigma at three conductances of the programmed range, one
  hour after programming (the PCM family's 1/f noise grows with that time);
* drift: the exponents of the working devices (one distribution: rram) or, for PCM, the mean and spread
  of the exponent at three conductances from the published law (nu = |mu(x) + sigma(x) z|, a folded
  normal, in closed form); for VCM, which relaxes by an absolute shift and broadening in ln t, the mean
  shift and the spread per unit of ln((t + t0)/t0) (VCMConfig relax_mean_per_ln_s, relax_sigma_per_ln_s);
* faults: the fraction of devices stuck anywhere (absolute error, rates are of order 1 %);
* periphery: the I-V curvature.

"within 15 %" is the largest relative error over the seeds. The second table is the calibration's own
predictive check (calibration.checks) on its held-out devices: KS distance and predicted/observed spread.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calibration.checks import evaluate_checks  # noqa: E402
from calibration.options import CalibrationOptions  # noqa: E402
from calibration.pipeline import fit_noise_model, run_calibration  # noqa: E402
from drivers import DeviceConfig, SoftwareCrossbar  # noqa: E402
from drivers.families import PCMConfig, VCMConfig  # noqa: E402
from drivers.families.pcm import drift_mu, drift_sigma  # noqa: E402

FAMILIES = {"rram": DeviceConfig, "pcm": PCMConfig, "vcm": VCMConfig,
            "pessimistic": lambda: DeviceConfig(preset="pessimistic")}
DRIFT_TIMES_S = [1, 3, 10, 30, 100, 300, 1000, 3600, 10000, 86400]
HOUR = 3600.0
_US = 1e6


def calibration_options() -> CalibrationOptions:
    step = yaml.safe_load((ROOT / "protocols" / "mgrade_loop.yaml").read_text(encoding="utf-8"))["steps"][0]
    for key in ("kind", "name"):
        step.pop(key)
    step["programming"].pop("g_low_s")
    step["programming"].pop("g_high_s")
    step["drift"]["times_s"] = DRIFT_TIMES_S
    return CalibrationOptions(**step)


def window_truth(config, size: int, seed: int, options: CalibrationOptions) -> dict[str, np.ndarray]:
    """Noise-free conductances after the window stage's RESET and after its SET, on a twin chip."""
    w = options.window
    rows, cols = (a.ravel() for a in np.indices((size, size)))
    out = {}
    with SoftwareCrossbar(size, size, config=config, seed=seed) as twin:
        for name, amplitude in (("low", -w.reset_voltage_v), ("high", w.set_voltage_v)):
            for _ in range(w.pulses):
                twin.pulse(rows, cols, amplitude, w.pulse_width_s)
            out[name] = twin.true_conductance()
    return out


def folded_normal(m: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of |X|, X ~ Normal(m, s^2)."""
    m, s = np.asarray(m, float), np.asarray(s, float)
    phi = 0.5 * (1 + np.vectorize(math.erf)(m / (s * math.sqrt(2))))
    mean = s * math.sqrt(2 / math.pi) * np.exp(-m ** 2 / (2 * s ** 2)) + m * (2 * phi - 1)
    return mean, np.sqrt(np.maximum(m ** 2 + s ** 2 - mean ** 2, 0.0))


def model_read_sigma(model, g: np.ndarray, age_s: float) -> np.ndarray:
    read = model.read
    try:
        return read.sigma(g, age_s=age_s)
    except TypeError:      # a law without time dependence
        return read.sigma(g)


def one_chip(family: str, size: int, seed: int, options: CalibrationOptions) -> tuple[list[tuple], list]:
    config = FAMILIES[family]()
    truth_window = window_truth(config, size, seed, options)
    with SoftwareCrossbar(size, size, config=config, seed=seed) as xbar:
        cal = run_calibration(xbar, options, np.random.default_rng(seed))
        model = fit_noise_model(cal, array_id=f"{family}-{seed}", rows=size, cols=size)
        checks = (evaluate_checks(cal.check, model, options.check, np.random.default_rng(seed),
                                  drift_times_s=options.drift.times_s) if cal.check else [])
        truth = xbar.truth
        working = ~truth.stuck
        g_probe = np.quantile(model.programming.levels_s, [0.25, 0.5, 0.75])
        if family == "pcm":
            read_truth = xbar.read_noise_sigma(g_probe, age_s=HOUR)
        else:
            read_truth = xbar.read_noise_sigma(g_probe)
    rows = []   # (parameter, unit, truth, fitted, kind) kind: "rel" or "abs"

    def ln_spread(g):
        g = g[working & (g > 0)]
        return float(np.log(g).std())

    rows.append(("window g_min (median)", "µS", float(np.median(truth_window["low"][working])) * _US,
                 model.window.g_min_s * _US, "rel"))
    rows.append(("window g_max (median)", "µS", float(np.median(truth_window["high"][working])) * _US,
                 model.window.g_max_s * _US, "rel"))
    rows.append(("window spread of ln g_max", "1", ln_spread(truth_window["high"]), model.window.g_max_spread, "rel"))
    fitted_read = model_read_sigma(model, g_probe, HOUR)
    for q, g, t, f in zip(("25", "50", "75"), g_probe, read_truth, fitted_read):
        rows.append((f"read-noise sigma at the {q}% level, 1 h", "µS", float(t) * _US, float(f) * _US, "rel"))
    if model.drift is not None:
        if family == "vcm":
            d = model.drift
            rows.append((f"relaxation law chosen: {d.law}", "", float("nan"), float("nan"), "info"))
            if d.law in ("shift", "shift_g"):
                rows.append(("relaxation mean shift per ln t", "µS", config.relax_mean_per_ln_s * _US,
                             d.shift_mean_s * _US, "rel"))
                rows.append(("relaxation spread per ln t", "µS", config.relax_sigma_per_ln_s * _US,
                             d.shift_sigma_s * _US, "rel"))
        elif family == "pcm":
            x = g_probe / config.g_max_s
            mean, std = folded_normal(drift_mu(x), drift_sigma(x))
            mean, std = mean * config.drift_scale, std * config.drift_scale
            for q, g, mt, st in zip(("25", "50", "75"), g_probe, mean, std):
                rows.append((f"drift nu mean at the {q}% level", "1", float(mt), float(model.drift.nu_mean_at(g)), "rel"))
                rows.append((f"drift nu spread at the {q}% level", "1", float(st), float(model.drift.nu_std_at(g)),
                             "rel"))
        else:
            nu = truth.drift_nu[working]
            rows.append(("drift nu mean", "1", float(nu.mean()), float(model.drift.nu_mean), "rel"))
            rows.append(("drift nu spread", "1", float(nu.std()), float(model.drift.nu_std), "rel"))
    stuck_fit = model.defects.stuck_on_rate + model.defects.stuck_off_rate + getattr(model.defects, "stuck_mid_rate", 0.0)
    rows.append(("stuck devices (any value)", "%", float(truth.stuck.mean()) * 100, stuck_fit * 100, "abs"))
    kappa = getattr(config, "iv_nonlinearity_per_v2", None)
    if kappa is not None and model.periphery.iv_cubic_per_v2 is not None:
        rows.append(("I-V curvature kappa", "1/V²", float(kappa), float(model.periphery.iv_cubic_per_v2), "iv"))
    return rows, checks


def fmt(x: float) -> str:
    return f"{x:.4g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "truth_recovery.md")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    args = parser.parse_args()
    options = calibration_options()
    truth_lines, check_lines = [], []
    for family in args.families:
        per_param: dict[str, list] = {}
        per_check: dict[str, list] = {}
        for seed in args.seeds:
            t0 = time.perf_counter()
            rows, checks = one_chip(family, args.size, seed, options)
            print(f"{family} seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            for name, unit, truth, fitted, kind in rows:
                per_param.setdefault(name, []).append((unit, truth, fitted, kind))
            for c in checks:
                per_check.setdefault(c.quantity, []).append(c)
        for name, values in per_param.items():
            unit, kind = values[0][0], values[0][3]
            truths = np.array([v[1] for v in values])
            fits = np.array([v[2] for v in values])
            if kind == "info":
                truth_lines.append(f"| {family} | {name} | | | | | |")
                continue
            if kind == "abs":
                err = np.abs(fits - truths)
                worst, ok = f"{err.max():.2f} points", err.max() <= 1.0
            elif kind == "iv":
                err = np.abs(fits - truths)
                worst, ok = f"{err.max():.3f} /V²", bool(err.max() <= 0.03 + 0.15 * abs(truths[0]))
            else:
                err = np.abs(fits / truths - 1)
                worst, ok = f"{100 * err.max():.1f} %", bool(err.max() <= 0.15)
            truth_lines.append(f"| {family} | {name} | {unit} | {fmt(truths.mean())} | {fmt(fits.mean())} | {worst} | "
                               f"{'yes' if ok else '**no**'} |")
        for quantity, cs in per_check.items():
            ks = np.array([c.ks for c in cs if c.ks is not None])
            ratio = np.array([c.spread_ratio for c in cs if c.spread_ratio is not None])
            verdicts = [c.verdict for c in cs]
            passed = sum(v == "pass" for v in verdicts)
            check_lines.append(f"| {family} | {quantity} | {fmt(ks.max()) if ks.size else '–'} | "
                               f"{fmt(ratio.min()) if ratio.size else '–'} – {fmt(ratio.max()) if ratio.size else '–'} | "
                               f"{passed}/{len(cs)} |")
    seeds = ", ".join(str(s) for s in args.seeds)
    text = [
        "# Calibration against each device family's hidden truth",
        "",
        f"`python scripts/truth_recovery.py` ({args.size}x{args.size} arrays, chip seeds {seeds}; see the script's "
        "docstring for what each truth is). Values are means over the seeds; the error column is the worst seed.",
        "",
        "| family | parameter | unit | truth | fitted | worst error | within 15 % (faults: 1 point) |",
        "|---|---|---|---:|---:|---:|---|",
        *truth_lines,
        "",
        "## Predictive check on held-out devices",
        "",
        "Pass: KS < 0.1 and predicted/observed spread in 0.8–1.25, per seed. Largest KS and the range of the "
        "spread ratio over the seeds.",
        "",
        "| family | quantity | largest KS | spread ratio | seeds passing |",
        "|---|---|---:|---|---|",
        *check_lines,
        "",
    ]
    args.out.write_text("\n".join(text), encoding="utf-8")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
