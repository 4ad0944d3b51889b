"""A calibration report: Markdown with PNG figures beside it, for a person to look at."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # files only; no display on a bench PC or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .noise_model import NoiseModel  # noqa: E402
from .pipeline import Calibration  # noqa: E402

_US = 1e6   # plots speak microsiemens


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _histograms(cal: Calibration, out: Path) -> str:
    m = cal.programming
    fig, ax = plt.subplots(figsize=(8, 4))
    working = cal.working[None] if cal.working is not None else True
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(m.levels_s)))
    lo, hi = m.achieved_s.min(), m.achieved_s.max()
    bins = np.linspace(lo, hi, 200) * _US
    for k, (level, color) in enumerate(zip(m.levels_s, colors)):
        g = m.achieved_s[(m.level_index == k) & working]
        ax.hist(g * _US, bins=bins, color=color, alpha=0.8, label=f"{level * _US:.1f} µS")
        ax.axvline(level * _US, color=color, lw=0.8, ls="--")
    ax.set(xlabel="achieved conductance (µS)", ylabel="devices",
           title=f"Programmed levels ({m.achieved_s.shape[0]} round(s), {m.reads} reads each; dashed: target)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out / "levels_histogram.png")


def _read_noise(cal: Calibration, model: NoiseModel, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    sources = []
    if cal.read_noise is not None:
        sources.append(("programmed levels", cal.read_noise.mean_s, cal.read_noise.std_s))
    if cal.window is not None and cal.window.low_reads_s.shape[0] >= 3:
        for name, reads in (("after RESET", cal.window.low_reads_s), ("after SET", cal.window.high_reads_s)):
            sources.append((name, reads.mean(axis=0), reads.std(axis=0, ddof=1)))
    for name, mean, std in sources:
        ax.scatter(mean.ravel() * _US, std.ravel() * _US, s=2, alpha=0.3, label=name)
    g = np.geomspace(max(1e-9, min(s[1].min() for s in sources)), max(s[1].max() for s in sources), 200)
    ax.plot(g * _US, model.read.sigma(g) * _US, "k-",
            label=f"fit: floor {model.read.floor_s * _US:.3f} µS, {100 * model.read.relative:.2f} %")
    ax.set(xscale="log", yscale="log", xlabel="conductance (µS)", ylabel="read noise σ (µS)",
           title="Read noise against conductance")
    ax.legend(fontsize=7, markerscale=4)
    return _save(fig, out / "read_noise.png")


def _drift(cal: Calibration, model: NoiseModel, out: Path) -> str:
    d, p = cal.drift, cal.programming
    fit = cal.drift_fit
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    index = p.level_index[-1]
    working = cal.working if cal.working is not None else np.ones(index.shape, dtype=bool)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(p.levels_s)))
    t = d.times_s
    for k, color in enumerate(colors):
        sel = (index == k) & working
        rel = d.mean_s[:, sel] / d.mean_s[0, sel]
        ax.plot(t, rel.mean(axis=1), "o-", color=color, ms=3, label=f"{p.levels_s[k] * _US:.1f} µS")
    ax.plot(t, model.drift.factor(t) / model.drift.factor(t[0]), "k--", label=f"fit ν={model.drift.nu_mean:.4f}")
    ax.set(xscale="log", xlabel="time after programming (s)", ylabel="g(t) / g(first read)",
           title=f"Drift (t0 = {model.drift.t0_s:.3g} s)")
    ax.legend(fontsize=7, ncol=2)
    nu = fit.nu[np.isfinite(fit.nu)]
    ax2.hist(nu, bins=60, color="tab:blue", alpha=0.8)
    ax2.set(xlabel="drift exponent ν per device", ylabel="devices",
            title=f"ν mean {model.drift.nu_mean:.4f}, spread {model.drift.nu_std:.4f}")
    return _save(fig, out / "drift.png")


def _yield_map(cal: Calibration, out: Path) -> str:
    w = cal.window
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    state = np.zeros(w.g_min_s.shape)
    state[cal.stuck_on] = 1
    state[cal.stuck_off] = -1
    cmap = matplotlib.colors.ListedColormap(["tab:blue", "0.92", "tab:red"])
    ax.imshow(state, cmap=cmap, vmin=-1.5, vmax=1.5, interpolation="nearest")
    ax.set(title=f"Yield {100 * w.yield_fraction:.2f}%: {int(cal.stuck_on.sum())} stuck on (red), "
                 f"{int(cal.stuck_off.sum())} stuck off (blue)", xlabel="column", ylabel="row")
    ax.title.set_fontsize(9)
    im = ax2.imshow(w.g_max_s * _US, cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=ax2, label="g_max (µS)")
    ax2.set(title="Upper conductance bound per device", xlabel="column", ylabel="row")
    return _save(fig, out / "yield_map.png")


def _pulse_response(cal: Calibration, out: Path) -> str:
    m = cal.pulse_response
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = plt.cm.plasma(np.linspace(0, 0.8, len(m.amplitudes_v)))
    for ax, curves, sign, name in ((axes[0], m.set_curves_s, "+", "SET"), (axes[1], m.reset_curves_s, "−", "RESET")):
        n = np.arange(curves.shape[1])
        for a, curve, color in zip(m.amplitudes_v, curves, colors):
            mean, std = curve.mean(axis=1) * _US, curve.std(axis=1) * _US
            ax.plot(n, mean, color=color, label=f"{sign}{a:g} V")
            ax.fill_between(n, mean - std, mean + std, color=color, alpha=0.2)
        ax.set(xlabel="pulse number", title=f"{name} trains (mean ± device spread)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("conductance (µS)")
    return _save(fig, out / "pulse_response.png")


def _model_table(model: NoiseModel) -> list[str]:
    rows = [("g_min (median)", f"{model.window.g_min_s * _US:.3f} µS"),
            ("g_max (median)", f"{model.window.g_max_s * _US:.2f} µS"),
            ("g_max spread (σ ln)", f"{model.window.g_max_spread:.4f}"),
            ("stuck on / off", f"{100 * model.defects.stuck_on_rate:.2f}% / {100 * model.defects.stuck_off_rate:.2f}%"),
            ("read noise", f"floor {model.read.floor_s * _US:.4f} µS, relative {100 * model.read.relative:.3f}%")]
    if model.drift:
        rows.append(("drift", f"ν = {model.drift.nu_mean:.5f} ± {model.drift.nu_std:.5f}, t0 = {model.drift.t0_s:.3g} s"))
    if model.programming:
        sig = ", ".join(f"{s * _US:.3f}" for s in model.programming.sigma_s)
        rows.append(("programming σ per level", f"{sig} µS"))
    p = model.periphery
    rows.append(("converters (declared)", f"DAC {p.dac_bits} bits, ADC {p.adc_bits} bits"))
    if p.adc_step_a:
        rows.append(("ADC step (measured)", f"{p.adc_step_a * 1e6:.4f} µA"))
    if p.output_noise_a is not None:
        rows.append(("output noise", f"{p.output_noise_a * 1e9:.2f} nA"))
    elif p.output_noise_upper_a is not None:
        rows.append(("output noise", f"below {p.output_noise_upper_a * 1e9:.1f} nA (half an ADC step)"))
    if p.iv_cubic_per_v2 is not None:
        rows.append(("I-V curvature κ (I ∝ V (1 + κ V²))", f"{p.iv_cubic_per_v2:.3f} V⁻²"))
    return ["| quantity | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]


def write_report(cal: Calibration, model: NoiseModel, out_dir: Path, *, title: str) -> Path:
    """Write ``report.md`` and its figures into ``out_dir``; returns the Markdown file's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", f"Array `{model.array_id}` ({model.rows}x{model.cols}), "
             f"noise model schema v{model.schema_version}, fitted {model.created_at:%Y-%m-%d %H:%M:%S} UTC.", "",
             "## Fitted noise model", "", *_model_table(model), ""]
    figures = []
    if cal.window is not None:
        figures.append(("Yield map and conductance window", _yield_map(cal, out)))
    if cal.programming is not None:
        figures.append(("Programmed conductance per level", _histograms(cal, out)))
    figures.append(("Read noise", _read_noise(cal, model, out)))
    if cal.drift is not None and model.drift is not None:
        figures.append(("Drift", _drift(cal, model, out)))
    if cal.pulse_response is not None:
        figures.append(("Pulse response", _pulse_response(cal, out)))
    for caption, name in figures:
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
