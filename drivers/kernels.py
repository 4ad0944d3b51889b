"""Compiled element-wise kernels for the software crossbar's MVM hot path.

Each numpy operation is a separate pass over memory with its own call overhead;
for a 256x128 batch the DAC, I-V nonlinearity and ADC were a dozen passes that
together cost more than the matrix product. These kernels fuse each stage into
one pass. Results are identical to the numpy expressions given in the docstrings.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .compiled import pick, serial_and_parallel


def _dac_drive(v: np.ndarray, scale: np.float32, kappa: np.float32, out: np.ndarray) -> None:
    vf = v.ravel()
    of = out.ravel()
    one = np.float32(1.0)
    for i in prange(vf.size):
        k = np.rint(vf[i] * scale)
        of[i] = k * (one + kappa * k * k)


_DAC_DRIVE = serial_and_parallel()(_dac_drive)


def dac_drive(v: np.ndarray, scale: np.float32, kappa: np.float32, out: np.ndarray) -> None:
    """out = k * (1 + kappa * k**2) with k = rint(v * scale): DAC codes through the I-V nonlinearity."""
    pick(_DAC_DRIVE, v.size)(v, scale, kappa, out)


def _adc_convert(x: np.ndarray, noise: np.ndarray, levels: np.float32, lsb: np.float32, out: np.ndarray) -> None:
    xf = x.ravel()
    of = out.ravel()
    for i in prange(xf.size):
        y = np.rint(xf[i] + noise[i])
        of[i] = min(max(y, -levels), levels) * lsb


_ADC_CONVERT = serial_and_parallel()(_adc_convert)


def adc_convert(x: np.ndarray, noise: np.ndarray, levels: np.float32, lsb: np.float32, out: np.ndarray) -> None:
    """out = clip(rint(x + noise), -levels, levels) * lsb, ``noise`` being the first x.size values given."""
    pick(_ADC_CONVERT, x.size)(x, noise, levels, lsb, out)


def _adc_convert_parts(x: np.ndarray, noise: np.ndarray, gains: np.ndarray, levels: np.float32, lsb: np.float32,
                       out: np.ndarray) -> None:
    n = x.size // x.shape[0]
    xf = x.ravel()
    of = out.ravel()
    for i in prange(xf.size):
        g = gains[i // n]
        y = np.rint(g * xf[i] + g * noise[i])
        of[i] = min(max(y, -levels), levels) * (lsb / g)


_ADC_CONVERT_PARTS = serial_and_parallel()(_adc_convert_parts)


def adc_convert_parts(x: np.ndarray, noise: np.ndarray, gains: np.ndarray, levels: np.float32, lsb: np.float32,
                      out: np.ndarray) -> None:
    """adc_convert for a stack of MVMs (parts, batch, cols), part p read at gain ``gains[p]``:
    out = clip(rint(g * x + g * noise), -levels, levels) * lsb / g."""
    pick(_ADC_CONVERT_PARTS, x.size)(x, noise, gains, levels, lsb, out)


@njit(cache=True, nogil=True, error_model="numpy")
def fluctuated(scaled: np.ndarray, sigma: np.ndarray, pool: np.ndarray, starts: np.ndarray, flat: np.ndarray,
               out: np.ndarray) -> None:
    """out[p] = scaled[f] + sigma[f] * pool[starts[p] + f] for each flat cell index f of ``flat[p]``: the
    cells of part p in the read-noise window whose pool offset is ``starts[p]``."""
    n = flat.size // flat.shape[0]
    ff = flat.reshape(flat.shape[0], n)
    of = out.reshape(flat.shape[0], n)
    for p in range(flat.shape[0]):
        s = starts[p]
        for i in range(n):
            f = ff[p, i]
            of[p, i] = sigma[f] * pool[s + f] + scaled[f]


def _stack_matmul(a: np.ndarray, g: np.ndarray, out: np.ndarray) -> None:
    n_parts, batch, k_rows = a.shape
    cols = g.shape[2]
    for pb in prange(n_parts * batch):
        p = pb // batch
        b = pb - p * batch
        if cols < 8:                          # few columns: a dot product per column
            for c in range(cols):
                acc = np.float32(0.0)
                for k in range(k_rows):
                    acc += a[p, b, k] * g[p, k, c]
                out[p, b, c] = acc
            continue
        for c in range(cols):
            out[p, b, c] = 0.0
        for k in range(k_rows):
            x = a[p, b, k]
            if x != 0.0:
                for c in range(cols):
                    out[p, b, c] += x * g[p, k, c]


_STACK_MATMUL = serial_and_parallel(fastmath=True)(_stack_matmul)


def stack_matmul(a: np.ndarray, g: np.ndarray, out: np.ndarray) -> None:
    """out[p] = a[p] @ g[p] for (P, B, K) and (P, K, C), in compiled loops rather than a BLAS: the products
    of a stack are small, and a threaded BLAS spends more waking its threads than multiplying (rows at
    0 V are skipped). Large stacks share the (part, sample) products among the cores."""
    pick(_STACK_MATMUL, a.shape[0] * a.shape[1] * g.shape[2] * max(a.shape[2] // 8, 1))(a, g, out)
