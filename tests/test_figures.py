"""The figures, read as matplotlib objects: what a reader of the figure must be able to see."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from calibration.pipeline import Calibration
from calibration.programming import ProgrammingMeasurement
from calibration.report import MIN_LEVEL_BINS, levels_figure
from hil.history import trend_figure

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)


def _trend(values, step=timedelta(days=1), status=None):
    return [{"run_id": i + 1, "started_at": T0 + i * step, "step_name": "calibration", "value": v, "unit": "1",
             "status": (status or {}).get(i, "completed")} for i, v in enumerate(values)]


@pytest.mark.parametrize("values", [[0.91, 0.93, 0.92, 0.95, 0.97], [0.99, 1.0, 1.0, 0.998], [0.0, 0.01, 0.002]])
def test_a_yield_axis_stays_within_zero_and_one(values):
    axes = trend_figure(_trend(values), "yield", "chip-A").axes[0]
    low, high = axes.get_ylim()
    assert 0.0 <= low <= min(values) and max(values) <= high <= 1.0 and low < high
    assert "%" in axes.get_ylabel()


def test_a_statistic_that_is_not_a_fraction_is_not_clipped():
    rows = [{**row, "unit": "S"} for row in _trend([2e-5, 3e-5])]
    axes = trend_figure(rows, "g_max_s", "chip-A").axes[0]
    assert axes.get_ylim()[1] > 3e-5 and axes.get_ylabel() == "g_max_s [S]"


def _tick_labels(figure):
    figure.canvas.draw()
    return [t.get_text() for t in figure.axes[0].get_xticklabels() if t.get_text()]


def test_date_axis_has_one_kind_of_label():
    days = _tick_labels(trend_figure(_trend([0.9, 0.91, 0.92, 0.93, 0.94]), "yield", "chip-A"))
    assert days and all(len(label) == 10 and ":" not in label for label in days)  # YYYY-MM-DD, no clock times
    hours = _tick_labels(trend_figure(_trend([0.9, 0.91, 0.92], step=timedelta(hours=2)), "yield", "chip-A"))
    assert hours and all(len(label) == 5 and label[2] == ":" for label in hours)  # HH:MM, no seconds or dates
    minutes = _tick_labels(trend_figure(_trend([0.9, 0.91, 0.92], step=timedelta(seconds=90)), "yield", "chip-A"))
    assert minutes and all(len(label) == 8 for label in minutes)  # HH:MM:SS throughout


def test_a_run_that_failed_later_is_marked():
    figure = trend_figure(_trend([0.9, 0.91, 0.92], status={1: "failed"}), "yield", "chip-A")
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ["run completed", "run failed or interrupted later"]


def _calibration(levels=8, rows=32, cols=32, seed=0):
    rng = np.random.default_rng(seed)
    levels_s = np.linspace(5e-6, 80e-6, levels)
    index = rng.integers(0, levels, size=(2, rows, cols))
    achieved = levels_s[index] + rng.normal(0, 0.3e-6, size=index.shape)
    achieved[0, 0, 0] += 3e-6                          # a tail a coarse histogram would hide
    programming = ProgrammingMeasurement(levels_s=levels_s, level_index=index, achieved_s=achieved, reads=8,
                                         programmed_at_s=0.0, write_verify=[{"tolerance_s": 1.5e-6}])
    stuck = np.zeros((rows, cols), dtype=bool)
    stuck[1, 1] = True
    return Calibration(options=None, programming=programming, stuck_on=stuck, stuck_off=np.zeros_like(stuck))


def test_level_histograms_have_bins_enough_to_see_tails():
    cal = _calibration()
    figure = levels_figure(cal)
    panels = [ax for ax in figure.axes if any(isinstance(c, BarContainer) for c in ax.containers)]
    assert len(panels) == 8                           # one panel per level, each with its own bins
    for k, ax in enumerate(panels):
        (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
        assert len(bars.patches) >= MIN_LEVEL_BINS
        assert ax.get_yscale() == "log"
        counts = np.array([p.get_height() for p in bars.patches])
        in_level = (cal.programming.level_index == k) & cal.working[None]
        assert counts.sum() == in_level.sum()           # the stuck device is left out, nobody else
    # The outlier is in a bin of its own, far from the peak of its level.
    level = cal.programming.level_index[0, 0, 0]
    (bars,) = [c for c in panels[level].containers if isinstance(c, BarContainer)]
    assert bars.patches[-1].get_height() >= 1 and bars.patches[-1].get_x() > cal.programming.levels_s[level] * 1e6 + 2
    assert "mean of 8 reads" in figure._suptitle.get_text()


def _inference_rows(programmings=3):
    rng = np.random.default_rng(1)
    rows = []
    for k in range(programmings):
        for t, compensated in [(0.0, False), (3600.0, False), (86400.0, False), (3600.0, True), (86400.0, True)]:
            rows.append({"time_s": t, "drift_compensation": compensated, "samples": 200, "deployment_id": k,
                         "crossbar_accuracy": 0.88 - (0 if compensated else 0.01 * np.log10(1 + t)) +
                         rng.normal(0, 0.01), "digital_accuracy": 0.9})
    return rows


def test_accuracy_figure_shows_t0_error_bars_digital_line_and_title():
    pytest.importorskip("torch")
    from hil.inference_report import accuracy_figure

    figure = accuracy_figure(_inference_rows(), "model on the array: accuracy after programming")
    ax = figure.axes[0]
    assert ax.get_title().startswith("model on the array")
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2 and all(c.has_yerr for c in bars)
    for c in bars:
        x, _ = c.lines[0].get_data()
        assert x[0] == 0.0                              # both lines start at the accuracy as programmed
    assert ax.get_xlim()[0] < 0.0 < 3600.0 < ax.get_xlim()[1]
    figure.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1 h", "1 d"]
    digital = [line for line in ax.get_lines() if list(line.get_ydata()) == [90.0, 90.0]]
    assert digital, "the digital model's accuracy is drawn as a reference line"
    # Error bars are the spread over programmings: sd of the three values at t = 0.
    t0 = 100 * np.array([r["crossbar_accuracy"] for r in _inference_rows() if r["time_s"] == 0])
    segments = bars[0].lines[2][0].get_segments()
    low, high = segments[0][:, 1]
    assert high - low == pytest.approx(2 * t0.std(ddof=1))


def test_accuracy_figure_of_one_programming_has_no_error_bars():
    pytest.importorskip("torch")
    from hil.inference_report import accuracy_figure

    ax = accuracy_figure(_inference_rows(1), "one").axes[0]
    assert not any(c.has_yerr for c in ax.containers if isinstance(c, ErrorbarContainer))


def test_a_drift_step_draws_t0_from_the_earlier_evaluation_of_its_programming():
    """The loop protocols evaluate each programming at t = 0, then wait on the last one in a later step:
    that step's figure starts from the earlier t = 0 of the same deployment, not of another programming."""
    pytest.importorskip("torch")
    from hil.inference_report import accuracy_figure, figure_rows

    earlier = [{"deployment_id": k, "step_id": 1, "checkpoint": "m", "time_s": 0.0, "drift_compensation": False,
                "samples": 200, "crossbar_accuracy": 0.80 + 0.01 * k, "digital_accuracy": 0.9} for k in (1, 2, 3)]
    drift = [r for r in _inference_rows(1) if r["time_s"] > 0]
    for r in drift:
        r["deployment_id"] = 3
    rows = figure_rows(drift, earlier)
    assert [r["crossbar_accuracy"] for r in rows if r["time_s"] == 0] == [earlier[2]["crossbar_accuracy"]]
    ax = accuracy_figure(rows, "drift").axes[0]
    starts = [c.lines[0].get_data()[0][0] for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert starts == [0.0, 0.0]
    assert figure_rows(_inference_rows(1), earlier) == _inference_rows(1)     # a t = 0 of its own is kept
