"""Compiled loops for the crossbar executor's per-step arithmetic.

A stack of MVM groups turns a layer input into row voltages (per-tile scaling, the I-V
pre-distortion) and column currents back into layer outputs (differential pairs, per-sample
and per-output rescaling, partial sums). As numpy expressions these were a dozen passes over
(group, batch, line) arrays with their temporaries, which cost more than the MVMs themselves;
each direction is one pass here. :mod:`tests.test_executor` checks them against the numpy forms.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def predistort(v, kappa, ohmic_gain, limit) -> None:
    """In place, each voltage u of ``v`` becomes the V with V (1 + kappa V^2) = u (1 + kappa V_r^2):
    Halley's method from the first-order guess (see CrossbarExecutor.predistort; two steps reach
    float64 precision at read voltages), never beyond the read voltage. One branch-free pass, in the
    array's own precision."""
    vf = v.ravel()
    one, two, three, six = vf.dtype.type(1.0), vf.dtype.type(2.0), vf.dtype.type(3.0), vf.dtype.type(6.0)
    k, g, lim = vf.dtype.type(kappa), vf.dtype.type(ohmic_gain), vf.dtype.type(limit)
    for i in range(vf.size):
        rhs = vf[i] * g
        x = rhs / (one + k * rhs * rhs)
        for _ in range(2):
            sq = k * x * x
            f = x * (one + sq) - rhs
            d1 = one + three * sq
            x -= two * f * d1 / (two * d1 * d1 - f * six * k * x)
        vf[i] = min(max(x, -lim), lim)


@njit(cache=True, nogil=True, error_model="numpy")
def row_voltages(x, inputs, inv_gain, input_tile, n_tiles, full_v, volts, top) -> bool:
    """For each group p and sample b: the inputs ``x[b, inputs[p]] * inv_gain[p]``, each tile's scaled so that
    its largest magnitude sits at ``full_v`` (that magnitude, or 1 for an all-zero tile, into
    ``top[p, b, tile]``), into ``volts[p, b]``. False if any voltage is not finite."""
    n_groups, k_rows = inputs.shape
    batch = x.shape[0]
    finite = True
    scale = np.empty(n_tiles)
    row = np.empty(k_rows)
    for p in range(n_groups):
        for b in range(batch):
            for t in range(n_tiles):
                top[p, b, t] = 0.0
            for k in range(k_rows):
                u = x[b, inputs[p, k]] * inv_gain[p, k]
                row[k] = u
                a = abs(u)
                t = input_tile[k]
                if a > top[p, b, t] or np.isnan(a):   # a NaN stays: nothing compares greater
                    top[p, b, t] = a
            for t in range(n_tiles):
                if top[p, b, t] == 0.0:
                    top[p, b, t] = 1.0
                if not np.isfinite(top[p, b, t]):    # a NaN or an infinite input
                    finite = False
                scale[t] = full_v / top[p, b, t]
            for k in range(k_rows):
                volts[p, b, k] = row[k] * scale[input_tile[k]]
    return finite


@njit(cache=True, nogil=True, error_model="numpy")
def add_outputs(currents, top, output_tile, factor, outputs, y) -> None:
    """y[b, outputs[p, j]] += (I+ - I-) * top[p, b, tile of j] * factor[p, j], the positive columns of
    group p first in ``currents[p, b]`` and the negative ones after them."""
    n_groups, batch, width = currents.shape
    m = width // 2
    for p in range(n_groups):
        for b in range(batch):
            for j in range(m):
                d = np.float64(currents[p, b, j]) - np.float64(currents[p, b, m + j])
                y[b, outputs[p, j]] += d * top[p, b, output_tile[j]] * factor[p, j]
