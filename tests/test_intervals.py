"""The results scripts' intervals against closed forms and against their coverage in simulation."""

import numpy as np
from scipy import stats

from hil.intervals import interval, ratio_interval


def test_the_t_interval_is_scipys():
    x = np.array([0.91, 0.95, 0.89, 0.97, 0.93])
    low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    mean, half = interval(x)
    assert np.isclose(mean - half, low) and np.isclose(mean + half, high)


def test_a_ratio_over_constant_denominators_is_the_t_interval_scaled():
    x = np.array([3.0, 5.0, 4.0, 6.5])
    ratio, half = ratio_interval(x, np.full(4, 8.0))
    mean, t_half = interval(x)
    assert np.isclose(ratio, mean / 8.0) and np.isclose(half, t_half / 8.0)


def test_the_ratio_interval_covers_the_true_ratio_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits, trials = 0, 2000
    for _ in range(trials):
        gap = rng.normal(10.0, 2.0, 8)                  # a gap per chip
        won = 0.8 * gap + rng.normal(0.0, 1.0, 8)       # 80 % of it won back, with noise
        ratio, half = ratio_interval(won, gap)
        hits += abs(ratio - 0.8) <= half
    assert 0.92 <= hits / trials <= 0.98
