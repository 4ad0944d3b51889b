"""A calibration report: Markdown with PNG figures beside it, for a person to look at."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # files only; no display on a bench PC or in CI
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from .checks import MIN_DEVICES, Check  # noqa: E402
from .noise_model import NoiseModel  # noqa: E402
from .pipeline import Calibration  # noqa: E402

_US = 1e6   # plots speak microsiemens
# Bins per programmed level: at fewer, a level's tails (the devices write-verify could not
# pull in) vanish into one or two bars; at many more, a level of a few hundred devices
# turns to noise.
MIN_LEVEL_BINS, MAX_LEVEL_BINS = 20, 80


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def level_bins(g: np.ndarray) -> np.ndarray:
    """Bin edges for one level's conductances: the Freedman-Diaconis width (robust to the tails it is
    meant to show), held between MIN_LEVEL_BINS and MAX_LEVEL_BINS bins over the level's range."""
    g = g[np.isfinite(g)]
    if g.size == 0 or np.ptp(g) == 0:
        centre = g[0] if g.size else 0.0
        return np.linspace(centre - 0.5, centre + 0.5, MIN_LEVEL_BINS + 1)
    n = len(np.histogram_bin_edges(g, bins="fd")) - 1
    return np.linspace(g.min(), g.max(), int(np.clip(n, MIN_LEVEL_BINS, MAX_LEVEL_BINS)) + 1)


def levels_figure(cal: Calibration):
    """Programmed levels, one panel each with bins of its own and counts on a log scale, where the
    tails (the devices that matter for accuracy) show next to the peak; a last panel overlays
    every level's error against its target, to compare their spreads."""
    m = cal.programming
    levels = len(m.levels_s)
    cols = int(np.ceil(np.sqrt(levels + 1)))
    rows = int(np.ceil((levels + 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows + 0.5), squeeze=False)
    axes = axes.ravel()
    working = cal.working[None] if cal.working is not None else np.ones(m.level_index.shape[1:], dtype=bool)[None]
    colors = plt.cm.viridis(np.linspace(0, 0.9, levels))
    tolerance = next((w.get("tolerance_s") for w in m.write_verify if isinstance(w, dict) and w.get("tolerance_s")),
                     None)
    errors = []
    for k, (level, color, ax) in enumerate(zip(m.levels_s, colors, axes)):
        g = m.achieved_s[(m.level_index == k) & working]
        g = g[np.isfinite(g)] * _US
        errors.append(g - level * _US)
        if g.size:
            ax.hist(g, bins=level_bins(g), color=color, alpha=0.9, log=True)
            spread = f", sd {g.std(ddof=1):.2f} µS" if g.size > 1 else ""
            ax.set_title(f"target {level * _US:.1f} µS (n = {g.size}{spread})", fontsize=9)
        else:
            ax.set_title(f"target {level * _US:.1f} µS: no devices", fontsize=9)
        ax.axvline(level * _US, color="k", lw=0.8, ls="--")
        if tolerance:
            for edge in (-tolerance, tolerance):
                ax.axvline((level + edge) * _US, color="0.5", lw=0.8, ls=":")
        ax.set_xlabel("achieved conductance (µS)", fontsize=9)
        if k % cols == 0:
            ax.set_ylabel("devices per bin", fontsize=9)
    ax = axes[levels]
    pooled = np.concatenate(errors) if errors else np.array([])
    if pooled.size:
        # One set of bins for every level, so that their spreads compare bar for bar.
        edges = level_bins(pooled)
        for e, color in zip(errors, colors):
            if e.size:
                ax.hist(e, bins=edges, histtype="step", color=color, lw=1.2, log=True)
    if tolerance:
        for edge in (-tolerance, tolerance):
            ax.axvline(edge * _US, color="0.5", lw=0.8, ls=":")
    ax.set_title("error, every level (colours as above)", fontsize=9)
    ax.set_xlabel("achieved − target (µS)", fontsize=9)
    for extra in axes[levels + 1:]:
        extra.set_visible(False)
    excluded = "" if cal.working is None else f"; {int((~cal.working).sum())} stuck devices left out"
    limits = f"; dotted: ±{tolerance * _US:.2f} µS write-verify tolerance" if tolerance else ""
    fig.suptitle(f"Programmed levels: {m.achieved_s.shape[0]} round(s), each device the mean of {m.reads} reads"
                 f"{excluded}\ndashed: target{limits}; counts on a log scale", fontsize=10)
    return fig


def _histograms(cal: Calibration, out: Path) -> str:
    return _save(levels_figure(cal), out / "levels_histogram.png")


def read_law_text(read) -> str:
    """The read-noise law and its parameters in one line, for tables and legends."""
    white = f"floor {read.floor_s * _US:.4f} µS, relative {100 * read.relative:.3f}%"
    if read.base_law == "white":
        text = f"white: {white}"
    else:
        text = (f"flicker: {white}, 1/f q {100 * read.flicker:.3f}% at {read.flicker_g_ref_s * _US:.3g} µS "
                f"× (g/g_ref)^{read.flicker_exponent:.2f}, L(t) = ln((t + {read.flicker_t0_s:.3g} s + t_read) / "
                f"(2 t_read)), t_read {read.t_read_s:.3g} s")
    if read.law == "telegraph":
        text = (f"telegraph: {text}; plus telegraph noise on {100 * read.telegraph_fraction:.2f}% of the devices, "
                f"rms {100 * read.telegraph_amplitude:.3f}% of g (median) at {read.telegraph_g_ref_s * _US:.3g} µS "
                f"× (g/g_ref)^{read.telegraph_exponent:.2f}, spread of ln amplitude {read.telegraph_sigma_ln:.2f}, "
                f"in bursts of {read.telegraph_reads} reads")
    if read.reference_age_s is not None:
        text += f"; reads of the read-noise stage {read.reference_age_s:.3g} s after programming"
    return text


def _read_noise(cal: Calibration, model: NoiseModel, out: Path) -> str:
    law = model.read
    d = cal.drift
    over_time = d is not None and d.var_s is not None
    fig, axes = plt.subplots(1, 2 if over_time else 1, figsize=(11 if over_time else 6, 4.5), squeeze=False)
    ax = axes[0, 0]
    sources = []
    if cal.read_noise is not None:
        sources.append(("programmed levels", cal.read_noise.mean_s, cal.read_noise.std_s))
    if cal.window is not None and cal.window.low_reads_s.shape[0] >= 3:
        for name, reads in (("after RESET", cal.window.low_reads_s), ("after SET", cal.window.high_reads_s)):
            sources.append((name, reads.mean(axis=0), reads.std(axis=0, ddof=1)))
    for name, mean, std in sources:
        ax.scatter(mean.ravel() * _US, std.ravel() * _US, s=2, alpha=0.3, label=name)
    # The curve spans the positive, finite means: a log axis has no place for 0 S, NaN or negatives.
    means = np.concatenate([m.ravel() for _, m, _ in sources]) if sources else np.array([])
    means = means[np.isfinite(means) & (means > 0)]
    low, high = (max(1e-9, float(means.min())), float(means.max())) if means.size else (1e-6, 1e-4)
    g = np.geomspace(low, max(high, 1.01 * low), 200)
    age = law.reference_age_s
    at = "" if age is None or law.law == "white" else f" at {age:.3g} s"
    ax.plot(g * _US, law.sigma(g) * _US, "k-", label=f"{law.base_law} law{at}")
    if law.law == "telegraph":
        # a device with telegraph noise of the median amplitude
        median = np.sqrt(law.variance(g) + law.telegraph_variance(g, law.telegraph_amplitude))
        ax.plot(g * _US, median * _US, "k:", label=f"with telegraph noise of the median amplitude "
                                                  f"({100 * law.telegraph_fraction:.1f}% of devices)")
    if law.base_law == "flicker" and over_time:
        last = float(d.times_s[-1])
        ax.plot(g * _US, law.sigma(g, last) * _US, "k--", label=f"{law.law} law at {last:.3g} s")
    ax.set(xscale="log", yscale="log", xlabel="mean conductance (µS)", ylabel="read noise σ (µS)",
           title="Read noise against conductance (one point per device)")
    legend = ax.legend(markerscale=4, fontsize=8)
    for handle in legend.legend_handles:
        handle.set_alpha(1)  # the points are faint so that dense clouds show; their keys need not be
    if over_time:
        # Each time's variance over the same devices, against the law's prediction for them at the reference
        # time: the white law predicts a flat line, the flicker law one that rises with the time since
        # programming.
        ax2 = axes[0, 1]
        g_prog = cal.read_noise.mean_s if cal.read_noise is not None else d.mean_s[0]
        working = cal.fitted if cal.fitted is not None else np.ones(d.mean_s.shape[1:], dtype=bool)
        observed, predicted = [], []
        for t, mean, var in zip(d.times_s, d.mean_s, d.var_s):
            with np.errstate(invalid="ignore"):
                ok = working & np.isfinite(var) & (mean > 0) & (g_prog > 0)
            # the same devices, in the same state, as the law has them at the reference time
            reference = law.variance(mean[ok], None, g_prog[ok])
            observed.append(np.sqrt(np.mean(var[ok]) / np.mean(reference)) if ok.any() else np.nan)
            predicted.append(np.sqrt(np.mean(law.variance(mean[ok], float(t), g_prog[ok])) / np.mean(reference))
                             if ok.any() else np.nan)
        ax2.plot(d.times_s, observed, "o", color="tab:blue", label=f"measured ({d.reads} reads per time)")
        ax2.plot(d.times_s, predicted, "k-", label=f"{law.law} law")
        ax2.axhline(1.0, color="0.6", lw=0.8, ls=":")
        ax2.set(xscale="log", xlabel="time since programming (s)", ylabel="σ / σ of the law at the reference time",
                title="Read noise against time since programming")
        ax2.legend(fontsize=8)
    if law.selection:
        fig.suptitle(f"law {law.law}, chosen by held-out log-likelihood per sample variance: "
                     + ", ".join(f"{k} {v:.3f}" for k, v in law.selection.items()), fontsize=9)
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
        g = d.mean_s[:, sel]
        # Devices with a non-finite or non-positive read have no ratio to the first read.
        g = g[:, np.all(np.isfinite(g) & (g > 0), axis=0)]
        if not g.shape[1]:
            continue
        rel = g / g[0]
        ax.plot(t, rel.mean(axis=1), "o-", color=color, ms=3, label=f"{p.levels_s[k] * _US:.1f} µS")
        if model.drift.law != "power":
            # The law's median device from the level's mean first read: by conductance, or an absolute shift
            # whose relative size depends on it.
            g1 = float(g[0].mean())
            ax.plot(t, model.drift.sample(g1, t, 0.0, since_s=t[0]) / g1, "--", color=color, lw=1)
    if model.drift.law == "power":
        ax.plot(t, model.drift.factor(t) / model.drift.factor(t[0]), "k--", label=f"fit ν={model.drift.nu_mean:.4f}")
    else:
        ax.plot([], [], "k--", lw=1, label=f"law {model.drift.law}")
    ax.set(xscale="log", xlabel="time after programming (s)", ylabel="g(t) / g(first read), level mean",
           title=f"Drift by level (fit t0 = {model.drift.t0_s:.3g} s)")
    ax.legend(ncol=2, loc="upper right", title="programmed level")  # the curves fall away from that corner
    nu = fit.nu[np.isfinite(fit.nu)]
    ax2.hist(nu, bins=60, color="tab:blue", alpha=0.8)
    ax2.axvline(model.drift.nu_mean, color="k", ls="--", lw=1, label="mean")
    ax2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(6))
    ax2.set(xlabel="drift exponent ν per device", ylabel="devices",
            title=f"ν per device (n = {nu.size}): mean {model.drift.nu_mean:.4f}, sd {model.drift.nu_std:.4f}")
    ax2.legend()
    return _save(fig, out / "drift.png")


def _yield_map(cal: Calibration, out: Path) -> str:
    w = cal.window
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    state = np.zeros(w.g_min_s.shape)
    state[cal.stuck_on] = 1
    state[cal.stuck_off] = -1
    cmap = matplotlib.colors.ListedColormap(["tab:blue", "0.92", "tab:red"])
    ax.imshow(state, cmap=cmap, vmin=-1.5, vmax=1.5, interpolation="nearest")
    ax.set(title=f"Yield {100 * w.yield_fraction:.2f}% of {state.size} devices", xlabel="column", ylabel="row")
    ax.legend(handles=[matplotlib.patches.Patch(color="tab:red", label=f"stuck on ({int(cal.stuck_on.sum())})"),
                       matplotlib.patches.Patch(color="tab:blue", label=f"stuck off ({int(cal.stuck_off.sum())})")],
              loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    # The colour scale spans the working devices: a stuck device at 0 µS would otherwise take
    # half of it and leave the spread of the others in one shade.
    working = cal.working
    g_max = np.ma.masked_where(~working, w.g_max_s * _US)
    lo, hi = np.percentile(w.g_max_s[working] * _US, [0.5, 99.5]) if working.any() else (None, None)
    magma = plt.get_cmap("magma").with_extremes(bad="0.75")
    im = ax2.imshow(g_max, cmap=magma, vmin=lo, vmax=hi, interpolation="nearest")
    fig.colorbar(im, ax=ax2, label="g_max (µS)", extend="both")
    ax2.set(title="g_max per device (stuck devices grey)", xlabel="column", ylabel="row")
    return _save(fig, out / "yield_map.png")


def _pulse_response(cal: Calibration, out: Path) -> str:
    m = cal.pulse_response
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = plt.cm.plasma(np.linspace(0, 0.8, len(m.amplitudes_v)))
    for ax, curves, sign, name in ((axes[0], m.set_curves_s, "+", "SET"), (axes[1], m.reset_curves_s, "−", "RESET")):
        n = np.arange(curves.shape[1])
        for a, curve, color in zip(m.amplitudes_v, curves, colors):
            # A device that read NaN is left out of that point's mean, not of the whole curve.
            curve = np.where(np.isfinite(curve), curve, np.nan)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(curve, axis=1) * _US, np.nanstd(curve, axis=1) * _US
            ax.plot(n, mean, color=color, label=f"{sign}{a:g} V")
            ax.fill_between(n, mean - std, mean + std, color=color, alpha=0.2)
        ax.set(xlabel="pulse number", title=f"{name} trains: mean ± sd over {curves.shape[2]} devices")
        ax.legend(title="pulse amplitude")
    axes[0].set_ylabel("conductance (µS)")
    return _save(fig, out / "pulse_response.png")


def _model_table(model: NoiseModel) -> list[str]:
    rows = [("g_min (median)", f"{model.window.g_min_s * _US:.3f} µS"),
            ("g_max (median)", f"{model.window.g_max_s * _US:.2f} µS"),
            ("g_max spread (σ ln)", f"{model.window.g_max_spread:.4f}"),
            ("stuck on / off", f"{100 * model.defects.stuck_on_rate:.2f}% / {100 * model.defects.stuck_off_rate:.2f}%"),
            ("read noise", read_law_text(model.read)
             + ("" if not model.read.selection else " (law chosen by held-out log-likelihood per sample variance: "
                + ", ".join(f"{k} {v:.3f}" for k, v in model.read.selection.items()) + ")"))]
    if model.drift:
        d = model.drift
        text = f"ν = {d.nu_mean:.5f} ± {d.nu_std:.5f}, t0 = {d.t0_s:.3g} s"
        if d.law == "power_g":
            text += "; by conductance: " + ", ".join(f"{g * 1e6:.3g} µS: {m:.4f} ± {sd:.4f}" for g, m, sd in
                                                      zip(d.levels_s, d.nu_mean_by_level, d.nu_std_by_level))
        if d.law in ("shift", "shift_g"):
            text = (f"g(t) = g_p + m h + z (b0 a + b1 h), h = ln((t + t0) / t0), a = t / (t + t0): "
                    f"m = {d.shift_mean_s * _US:.4f} µS, b1 = {d.shift_sigma_s * _US:.4f} µS, "
                    f"b0 = {d.shift_sigma_early_s * _US:.4f} µS, t0 = {d.t0_s:.3g} s (the power law's exponent for "
                    f"comparison: ν = {d.nu_mean:.5f} ± {d.nu_std:.5f})")
            if d.law == "shift_g":
                text += "; by conductance (m, b1, b0 in µS): " + ", ".join(
                    f"{g * _US:.3g} µS: {m * _US:.4f}, {b1 * _US:.4f}, {b0 * _US:.4f}" for g, m, b1, b0 in zip(
                        d.levels_s, d.shift_mean_by_level, d.shift_sigma_by_level, d.shift_sigma_early_by_level))
        if d.selection:
            text += (f" (law {d.law}, chosen by held-out log-likelihood per device: "
                     + ", ".join(f"{k} {v:.3f}" for k, v in d.selection.items()) + ")")
        rows.append(("drift", text))
    if model.programming:
        prog = model.programming
        law = prog.law + ("" if not prog.selection else " (chosen by held-out log-likelihood per device: "
                          + ", ".join(f"{k} {v:.3f}" for k, v in prog.selection.items()) + ")")
        rows.append(("programming law", law))
        sig = ", ".join(f"{s * _US:.3f}" for s in prog.sigma_s)
        rows.append(("programming σ per level" + (" (core)" if prog.law != "normal" else ""), f"{sig} µS"))
        if prog.law == "mixture":
            tails = ", ".join(f"{100 * f:.1f}% (scale {w * _US:.2f} µS)"
                              for f, w in zip(prog.tail_fraction, prog.tail_width_s))
            rows.append(("programming tail per level: fraction (Laplace scale)", tails))
        elif prog.law == "skewed":
            tails = ", ".join(f"{100 * f:.1f}% ({100 * p:.0f}% above, mean {w * _US:.2f} µS; below {d * _US:.2f} µS)"
                              for f, p, w, d in zip(prog.tail_fraction, prog.tail_up, prog.tail_width_s,
                                                    prog.tail_width_down_s))
            rows.append(("programming tail per level: fraction (share above and mean distance each side)", tails))
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


def _quality_table(cal: Calibration) -> list[str]:
    """Devices per measurement with reads a fit cannot take as they are; empty if there were none."""
    quality = cal.read_quality()
    if not any(any(counts.values()) for counts in quality.values()):
        return []
    kinds = ("non_finite", "zero", "negative", "saturated")
    lines = ["## Read quality", "",
             "Devices (pulse trains for the pulse response, values for the periphery's MVM outputs) with at "
             "least one read of each kind. The raw data are stored as measured; each fit leaves out the "
             "devices it cannot use.", "",
             "| measurement | NaN or infinite | 0 S | negative | saturated |", "|---|---|---|---|---|"]
    for stage, counts in quality.items():
        lines.append(f"| {stage} | " + " | ".join(str(counts.get(k, "")) for k in kinds) + " |")
    return lines + [""]


def _checks_table(cal: Calibration, checks: list[Check]) -> list[str]:
    """The predictive check: each quantity of the held-out devices against the model's prediction."""
    if not checks:
        return []
    o = cal.options.check
    n = int(cal.holdout.sum()) if cal.holdout is not None else 0
    lines = ["## Predictive check on held-out devices", "",
             f"{n} working devices ({100 * o.holdout_fraction:.0f}%) were kept out of every fit, programmed afresh "
             f"after the other stages and measured again; each distribution is compared with what the fitted "
             f"model predicts for them. Pass: KS distance below {o.max_ks:g} and predicted/observed spread within "
             f"{o.min_spread_ratio:g}-{o.max_spread_ratio:g}; no verdict below {MIN_DEVICES} devices.", "",
             "| quantity | devices | KS distance | spread ratio (predicted/observed) | verdict | note |",
             "|---|---|---|---|---|---|"]
    for c in checks:
        ks = "" if c.ks is None else f"{c.ks:.3f}"
        ratio = "" if c.spread_ratio is None else f"{c.spread_ratio:.3f}"
        verdict = {"pass": "pass", "warn": "**warn**", "n/a": "n/a"}[c.verdict]
        lines.append(f"| {c.quantity} | {c.n} | {ks} | {ratio} | {verdict} | {c.note} |")
    return lines + [""]


def _warnings(cal: Calibration) -> list[str]:
    if not cal.warnings:
        return []
    return ["## Warnings", "", *(f"- {w}" for w in cal.warnings), ""]


def write_report(cal: Calibration, model: NoiseModel, out_dir: Path, *, title: str,
                 checks: list[Check] | None = None) -> Path:
    """Write ``report.md`` and its figures into ``out_dir``; returns the Markdown file's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", f"Array `{model.array_id}` ({model.rows}x{model.cols}), "
             f"noise model schema v{model.schema_version}, fitted {model.created_at:%Y-%m-%d %H:%M:%S} UTC.", "",
             *_warnings(cal), "## Fitted noise model", "", *_model_table(model), ""]
    if cal.levels is not None:
        lines += [f"Programming levels {cal.levels.g_low_s * _US:.3g}-{cal.levels.g_high_s * _US:.3g} µS "
                  f"(from the {cal.levels.source}).", ""]
    lines += _checks_table(cal, checks or [])
    lines += _quality_table(cal)
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
