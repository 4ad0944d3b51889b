"""The physical laws of the noise model, each written once for numpy arrays and torch tensors.

Calibration fits these laws, the predictive check and the report evaluate them, and noise-aware
training (hil.nn.analog) samples them: every one of those calls the functions here, so that a
law cannot mean one thing in a fit and another in training. The functions use only arithmetic,
``abs`` and ``** p`` (which numpy arrays, torch tensors and Python floats all define) and a
logarithm that dispatches on its argument; this module imports no torch.

All quantities in SI units: conductances in siemens, times in seconds.
"""

from __future__ import annotations

import numpy as np

# A conductance (S) far below any device's and above float32's smallest normal number.
_TINY_S = 1e-30


def _log(x):
    # A torch tensor has a .log() method; np.log of a tensor would return a numpy array and lose
    # the tensor (and its device and dtype), so dispatch on the argument.
    return x.log() if hasattr(x, "log") else np.log(x)


def _positive_part(x):
    # max(x, 0) with arithmetic only: the same expression for floats, arrays and tensors.
    return (x + abs(x)) / 2


def log_age(t_s, t0_s: float, t_read_s: float):
    """The time term L(t) of 1/f read noise, ``t_s`` after programming:

        L(t) = ln((t + t0 + t_read) / (2 t_read)),  never below 0.

    1/f noise has equal power per decade of frequency, so the variance one read sees is its
    power integrated from the lowest frequency the device has had time to show, 1 / (t + t0)
    (``t0`` sets when after the programming pulse the state starts to count), to the read's own
    bandwidth 1 / (2 t_read) (``t_read``: the duration of one read): a logarithm of their ratio,
    growing with the time since programming. This is the form of IBM's statistical PCM model
    (Nandakumar et al., ICECS 2019; aihwkit ``PCMLikeNoiseModel``).
    """
    return _positive_part(_log((t_s + t0_s + t_read_s) / (2 * t_read_s)))


def read_variance(g_s, floor_s: float, relative: float, flicker: float = 0.0, flicker_exponent: float = 1.0,
                  g_ref_s: float = 1.0, log_age=0.0, g_programmed_s=None):
    """Variance (S^2) of one read of a device at conductance ``g_s``:

        sigma^2 = floor^2 + (relative g)^2 + (q g_ref (|g_p| / g_ref)^p  g / g_p)^2 L(t)

    a white part (an absolute floor from the read circuit and noise proportional to the
    conductance) and a 1/f part whose amplitude ``q`` (``flicker``, relative at the reference
    conductance ``g_ref_s``) scales as the conductance to the power ``p`` (``flicker_exponent``)
    and grows with the time term ``log_age`` = L(t) (:func:`log_age`). With ``flicker`` 0 it is
    the white law alone.

    ``g_programmed_s`` (g_p; default ``g_s``) is the conductance the device was programmed to: the
    1/f amplitude relative to the conductance is set by the state programming left, and as the
    device drifts its fluctuations scale with its conductance (the factor g / g_p). Read soon after
    programming, g_p = g and the 1/f part is (q g_ref (|g| / g_ref)^p)^2 L(t).
    """
    white = floor_s ** 2 + (relative * g_s) ** 2
    if flicker == 0:
        return white
    if g_programmed_s is None:
        amplitude = (flicker * g_ref_s) ** 2 * (abs(g_s) / g_ref_s) ** (2 * flicker_exponent)
    else:
        # _TINY_S keeps a device programmed to exactly 0 S finite (it has no 1/f part then).
        g_p = abs(g_programmed_s) + _TINY_S
        amplitude = (flicker * g_ref_s) ** 2 * (g_p / g_ref_s) ** (2 * flicker_exponent) * (g_s / g_p) ** 2
    return white + amplitude * log_age


def read_sigma(g_s, floor_s: float, relative: float, flicker: float = 0.0, flicker_exponent: float = 1.0,
               g_ref_s: float = 1.0, log_age=0.0, g_programmed_s=None):
    """Standard deviation (S) of one read: the square root of :func:`read_variance`."""
    return read_variance(g_s, floor_s, relative, flicker, flicker_exponent, g_ref_s, log_age, g_programmed_s) ** 0.5


def drift_factor(t_s, t0_s: float, nu):
    """g(t) / g(0) of the drift power law g(t) = g0 ((t + t0) / t0)^-nu, ``t_s`` after programming."""
    return ((t_s + t0_s) / t0_s) ** (-nu)


__all__ = ["drift_factor", "log_age", "read_sigma", "read_variance"]
