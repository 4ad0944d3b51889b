"""Compiled element-wise kernels for the software crossbar's MVM hot path.

Each numpy operation is a separate pass over memory with its own call overhead;
for a 256x128 batch the DAC, I-V nonlinearity and ADC were a dozen passes that
together cost more than the matrix product. These kernels fuse each stage into
one pass. Results are identical to the numpy expressions given in the docstrings.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def dac_drive(v: np.ndarray, scale: np.float32, kappa: np.float32, out: np.ndarray) -> None:
    """out = k * (1 + kappa * k**2) with k = rint(v * scale): DAC codes through the I-V nonlinearity."""
    vf = v.ravel()
    of = out.ravel()
    one = np.float32(1.0)
    for i in range(vf.size):
        k = np.rint(vf[i] * scale)
        of[i] = k * (one + kappa * k * k)


@njit(cache=True, nogil=True, error_model="numpy")
def adc_convert(x: np.ndarray, noise: np.ndarray, levels: np.float32, lsb: np.float32, out: np.ndarray) -> None:
    """out = clip(rint(x + noise), -levels, levels) * lsb, ``noise`` being the first x.size values given."""
    xf = x.ravel()
    of = out.ravel()
    for i in range(xf.size):
        y = np.rint(xf[i] + noise[i])
        of[i] = min(max(y, -levels), levels) * lsb


@njit(cache=True, nogil=True, error_model="numpy")
def adc_convert_parts(x: np.ndarray, noise: np.ndarray, gains: np.ndarray, levels: np.float32, lsb: np.float32,
                      out: np.ndarray) -> None:
    """adc_convert for a stack of MVMs (parts, batch, cols), part p read at gain ``gains[p]``:
    out = clip(rint(g * x + g * noise), -levels, levels) * lsb / g."""
    n = x.size // x.shape[0]
    xf = x.ravel()
    of = out.ravel()
    for p in range(x.shape[0]):
        g = gains[p]
        step = lsb / g
        base = p * n
        for i in range(base, base + n):
            y = np.rint(g * xf[i] + g * noise[i])
            of[i] = min(max(y, -levels), levels) * step


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


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def stack_matmul(a: np.ndarray, g: np.ndarray, out: np.ndarray) -> None:
    """out[p] = a[p] @ g[p] for (P, B, K) and (P, K, C), on one thread: the products of a stack are small,
    and a threaded BLAS spends more waking its threads than multiplying (rows at 0 V are skipped)."""
    n_parts, batch, k_rows = a.shape
    cols = g.shape[2]
    for p in range(n_parts):
        for b in range(batch):
            if cols < 8:                      # few columns: a dot product per column
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
