"""The conductance range the programming stage writes its levels over, from the measured window.

The default range keeps a margin inside the median window of the working devices:

- low end: 5 % of the span above the median g_min. At the very bottom the read-noise floor
  and the spread of g_min are large next to the conductance, and a device at its floor can
  only be moved up: levels there measure the floor, not write-verify.
- high end: 80 % of the span above the median g_min. A level at the median g_max is out of
  reach of half of the devices (their g_max lies below it); 20 % below covers a device-to-device
  spread of ln g_max up to about 0.2, several times what RRAM arrays typically show.

On an array whose window is 1-100 µS this gives about 6-80 µS, the range the project has
always used for such arrays. A range the protocol sets is kept where it lies inside the
measured window (median g_min to median g_max); an end outside it is replaced by the default
end on that side, with a warning, since levels no device can reach would measure only that
they cannot be reached (and store that as a programming bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .options import ProgrammingOptions

LOW_MARGIN = 0.05
HIGH_FRACTION = 0.80
_US = 1e6


@dataclass(frozen=True)
class LevelRange:
    g_low_s: float
    g_high_s: float
    source: str            # "protocol", "window" or "protocol, clipped to the window"
    warnings: tuple[str, ...] = ()


def measured_window(g_min_s: np.ndarray, g_max_s: np.ndarray, working: np.ndarray) -> tuple[float, float]:
    """Median g_min and g_max over working devices with finite bounds; raises if there are none."""
    ok = working & np.isfinite(g_min_s) & np.isfinite(g_max_s)
    if not ok.any():
        raise ValueError("no working device with finite reads at both bounds: there is no window to place "
                         "programming levels in")
    low, high = float(np.median(g_min_s[ok])), float(np.median(g_max_s[ok]))
    if not high > max(low, 0.0):
        raise ValueError(f"the measured window is empty (median g_min {low * _US:.3g} µS, median g_max "
                         f"{high * _US:.3g} µS): there is no range to place programming levels in")
    return low, high


def level_range(options: ProgrammingOptions, window: tuple[float, float] | None) -> LevelRange:
    """Levels from the protocol, the measured window ``(median g_min, median g_max)``, or both."""
    asked = (options.g_low_s, options.g_high_s)
    if window is None:
        if None in asked:
            raise ValueError("programming levels need g_low_s and g_high_s when the window is not measured")
        return LevelRange(*asked, source="protocol")
    g_min, g_max = window
    span = g_max - g_min
    # A floor reading 0 S or below still leaves the low end positive: 5 % of a positive span.
    default = (max(g_min, 0.0) + LOW_MARGIN * span, g_min + HIGH_FRACTION * span)
    if asked == (None, None):
        return LevelRange(*default, source="window")
    warnings = []
    chosen = list(default)
    for k, name in enumerate(("g_low_s", "g_high_s")):
        if asked[k] is None:
            continue
        chosen[k] = asked[k]
        if not g_min <= asked[k] <= g_max:
            warnings.append(f"programming {name} {asked[k] * _US:.3g} µS lies outside the measured window "
                            f"{g_min * _US:.3g}-{g_max * _US:.3g} µS (median of working devices): "
                            f"using {default[k] * _US:.3g} µS")
            chosen[k] = default[k]
    low, high = chosen
    if low >= high:
        warnings.append(f"programming levels {low * _US:.3g}-{high * _US:.3g} µS are empty inside the measured "
                        f"window: using {default[0] * _US:.3g}-{default[1] * _US:.3g} µS")
        low, high = default
    source = "protocol, clipped to the window" if warnings else (
        "protocol" if None not in asked else "protocol and window")
    return LevelRange(low, high, source, tuple(warnings))
