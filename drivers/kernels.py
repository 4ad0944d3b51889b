"""Compiled element-wise kernels for the software crossbar's MVM hot path.

Each numpy operation is a separate pass over memory with its own call overhead;
for a 256x128 batch the DAC, I-V nonlinearity and ADC were a dozen passes that
together cost more than the matrix product. These kernels fuse each stage into
one pass. Results are identical to the numpy expressions given in the docstrings.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def dac_drive(v: np.ndarray, scale: np.float32, kappa: np.float32, out: np.ndarray) -> None:
    """out = k * (1 + kappa * k**2) with k = rint(v * scale): DAC codes through the I-V nonlinearity."""
    vf = v.ravel()
    of = out.ravel()
    one = np.float32(1.0)
    for i in range(vf.size):
        k = np.rint(vf[i] * scale)
        of[i] = k * (one + kappa * k * k)


@njit(cache=True, nogil=True)
def adc_convert(x: np.ndarray, noise: np.ndarray, levels: np.float32, lsb: np.float32, out: np.ndarray) -> None:
    """out = clip(rint(x + noise), -levels, levels) * lsb, ``noise`` being the first x.size values given."""
    xf = x.ravel()
    of = out.ravel()
    for i in range(xf.size):
        y = np.rint(xf[i] + noise[i])
        of[i] = min(max(y, -levels), levels) * lsb
