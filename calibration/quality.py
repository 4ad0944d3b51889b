"""Reads a fit cannot take as they are: non-finite, zero, negative or saturated values, per device.

An instrument that is working correctly still returns such values: a broken channel reads NaN,
a converter at its floor reads exactly 0 S or, with an offset, slightly negative, and one
at its ceiling repeats its full-scale value. They are legal observations and are stored as
measured; this module only says which devices show them, so that each fit can leave out the
devices it cannot use (a logarithm needs g > 0, a noise estimate needs an unclipped read).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Above this fraction of the array reading NaN or infinity, a stage describes the instrument (a
# loose connection, a crashed converter), not the devices: every statistic over the remaining
# cells (the median window that stuck devices are judged against, the rates of stuck devices)
# would be one of a minority of the array, and the median itself stops being robust once more
# than half of its inputs are garbage.
MAX_NON_FINITE_FRACTION = 0.5

KINDS = ("non_finite", "zero", "negative", "saturated")


@dataclass(frozen=True)
class ReadQuality:
    """Per-device flags of one measurement: True where at least one of its values is of that kind."""

    non_finite: np.ndarray
    zero: np.ndarray
    negative: np.ndarray
    saturated: np.ndarray

    @property
    def flagged(self) -> np.ndarray:
        """Devices with any value a fit of conductance or noise cannot take as it is."""
        return self.non_finite | self.zero | self.negative | self.saturated

    @property
    def unclipped(self) -> np.ndarray:
        """Devices whose values are all finite and below the ceiling (zero and negative are kept: a
        linear statistic can use them)."""
        return ~(self.non_finite | self.saturated)

    def counts(self) -> dict[str, int]:
        return {kind: int(getattr(self, kind).sum()) for kind in KINDS}

    def __or__(self, other: ReadQuality) -> ReadQuality:
        return ReadQuality(*(getattr(self, k) | getattr(other, k) for k in KINDS))


def saturation_ceiling(values: np.ndarray) -> float | None:
    """The value a saturated converter repeats, or None if there is none.

    The largest finite value counts as a ceiling only if it occurs more than once: analog reads
    carry noise and never repeat to the last bit, a clipped converter returns its full scale
    every time.
    """
    finite = values[np.isfinite(values)]
    if finite.size < 2:
        return None
    top = float(finite.max())
    return top if top > 0 and np.count_nonzero(finite == top) >= 2 else None


def assess(values: np.ndarray, axis: int | tuple[int, ...] | None = 0) -> ReadQuality:
    """Flags of ``values`` reduced over ``axis`` (the repeated reads, times or pulses) per device."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    ceiling = saturation_ceiling(v)
    with np.errstate(invalid="ignore"):
        flags = (~finite, finite & (v == 0), finite & (v < 0),
                 (v == ceiling) if ceiling is not None else np.zeros(v.shape, dtype=bool))
    return ReadQuality(*(f.any(axis=axis) if axis is not None else f for f in flags))


def non_finite_fraction(quality: ReadQuality) -> float:
    return float(quality.non_finite.mean()) if quality.non_finite.size else 0.0
