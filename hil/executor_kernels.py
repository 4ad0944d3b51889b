"""Compiled loops for the crossbar executor's per-step arithmetic.

A stack of MVM groups turns a layer input into row voltages (per-tile scaling, the I-V
pre-distortion) and column currents back into layer outputs (differential pairs, per-sample
and per-output rescaling, partial sums). As numpy expressions these were a dozen passes over
(group, batch, line) arrays with their temporaries, which cost more than the MVMs themselves;
each direction is one pass here, shared among the cores when the batch is large (drivers.compiled).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from drivers.compiled import pick, serial_and_parallel


def _predistort(v, kappa, ohmic_gain, limit) -> None:
    vf = v.ravel()
    one, two, three, six = vf.dtype.type(1.0), vf.dtype.type(2.0), vf.dtype.type(3.0), vf.dtype.type(6.0)
    k, g, lim = vf.dtype.type(kappa), vf.dtype.type(ohmic_gain), vf.dtype.type(limit)
    for i in prange(vf.size):
        rhs = vf[i] * g
        x = rhs / (one + k * rhs * rhs)
        for _ in range(2):
            sq = k * x * x
            f = x * (one + sq) - rhs
            d1 = one + three * sq
            x -= two * f * d1 / (two * d1 * d1 - f * six * k * x)
        vf[i] = min(max(x, -lim), lim)


_PREDISTORT = serial_and_parallel(fastmath=True)(_predistort)


def predistort(v, kappa, ohmic_gain, limit) -> None:
    """In place, each voltage u of ``v`` becomes the V with V (1 + kappa V^2) = u (1 + kappa V_r^2):
    Halley's method from the first-order guess (see CrossbarExecutor.predistort; two steps reach
    float64 precision at read voltages), never beyond the read voltage. One branch-free pass, in the
    array's own precision."""
    pick(_PREDISTORT, v.size)(v, kappa, ohmic_gain, limit)


def _row_voltages(x, inputs, inv_gain, input_tile, n_tiles, full_v, volts, top) -> bool:
    n_groups, k_rows = inputs.shape
    batch = x.shape[0]
    total = n_groups * batch
    # contiguous runs of (group, sample) pairs, each with its own scratch, shared out among the threads
    n_chunks = min(total, 64)
    bad = np.zeros(max(n_chunks, 1), np.bool_)
    for c in prange(n_chunks):
        scale = np.empty(n_tiles)
        largest = np.empty(n_tiles)
        row = np.empty(k_rows)
        for pb in range(c * total // n_chunks, (c + 1) * total // n_chunks):
            p = pb // batch
            b = pb - p * batch
            xb, idx, gain = x[b], inputs[p], inv_gain[p]
            largest[:] = 0.0
            for k in range(k_rows):
                u = xb[idx[k]] * gain[k]
                row[k] = u
                a = abs(u)
                t = input_tile[k]
                # branch-free (a data-dependent branch here mispredicted on half the inputs); a NaN stays
                largest[t] = np.maximum(largest[t], a)
            for t in range(n_tiles):
                m = largest[t]
                if m == 0.0:
                    m = 1.0
                if not m < np.inf:               # a NaN or an infinite input
                    bad[c] = True
                top[p, b, t] = m
                scale[t] = full_v / m
            out = volts[p, b]
            for k in range(k_rows):
                out[k] = row[k] * scale[input_tile[k]]
    return not bad.any()


_ROW_VOLTAGES = serial_and_parallel()(_row_voltages)


def row_voltages(x, inputs, inv_gain, input_tile, n_tiles, full_v, volts, top) -> bool:
    """For each group p and sample b: the inputs ``x[b, inputs[p]] * inv_gain[p]``, each tile's scaled so that
    its largest magnitude sits at ``full_v`` (that magnitude, or 1 for an all-zero tile, into
    ``top[p, b, tile]``), into ``volts[p, b]``. False if any voltage is not finite."""
    return pick(_ROW_VOLTAGES, volts.size)(x, inputs, inv_gain, input_tile, n_tiles, full_v, volts, top)


def _add_outputs(currents, top, output_tile, factor, outputs, y) -> None:
    n_groups, batch, width = currents.shape
    m = width // 2
    for b in prange(batch):                  # each sample's outputs are its own: no two threads add to one
        for p in range(n_groups):
            for j in range(m):
                d = np.float64(currents[p, b, j]) - np.float64(currents[p, b, m + j])
                y[b, outputs[p, j]] += d * top[p, b, output_tile[j]] * factor[p, j]


_ADD_OUTPUTS = serial_and_parallel()(_add_outputs)


def add_outputs(currents, top, output_tile, factor, outputs, y) -> None:
    """y[b, outputs[p, j]] += (I+ - I-) * top[p, b, tile of j] * factor[p, j], the positive columns of
    group p first in ``currents[p, b]`` and the negative ones after them."""
    pick(_ADD_OUTPUTS, currents.size)(currents, top, output_tile, factor, outputs, y)
