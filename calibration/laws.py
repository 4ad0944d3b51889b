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


def _exp(x):
    # As _log: a tensor's own .exp() keeps it a tensor.
    return x.exp() if hasattr(x, "exp") else np.exp(x)


def _is_zero(x) -> bool:
    # A per-device amplitude (array or tensor) is never taken as "no telegraph part".
    return isinstance(x, (int, float)) and x == 0


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
                  g_ref_s: float = 1.0, log_age=0.0, g_programmed_s=None, telegraph=0.0,
                  telegraph_exponent: float = 0.5, telegraph_g_ref_s: float = 1.0):
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

    ``telegraph`` (a per-device amplitude, 0 for a device without a switching trap) adds the
    variance of random telegraph noise, :func:`telegraph_variance`.
    """
    white = floor_s ** 2 + (relative * g_s) ** 2
    if not _is_zero(telegraph):
        white = white + telegraph_variance(g_s, telegraph, telegraph_exponent, telegraph_g_ref_s)
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
               g_ref_s: float = 1.0, log_age=0.0, g_programmed_s=None, telegraph=0.0,
               telegraph_exponent: float = 0.5, telegraph_g_ref_s: float = 1.0):
    """Standard deviation (S) of one read: the square root of :func:`read_variance`."""
    return read_variance(g_s, floor_s, relative, flicker, flicker_exponent, g_ref_s, log_age, g_programmed_s,
                         telegraph, telegraph_exponent, telegraph_g_ref_s) ** 0.5


def telegraph_variance(g_s, amplitude, exponent: float = 0.5, g_ref_s: float = 1.0):
    """Variance (S^2) random telegraph noise adds to the reads of a device at conductance ``g_s``:

        sigma_rtn^2 = (a g_ref (|g| / g_ref)^beta)^2

    ``amplitude`` a is the device's rms telegraph fluctuation relative to the conductance, at the
    reference conductance ``g_ref_s``; beta (``exponent``) its scaling with conductance (a trap's
    dG/G ~ G^-alpha gives beta = 1 - alpha). A trap that switches many times within a burst of reads,
    filled a fraction p of the time, with relative step dG/G, has a = dG/G sqrt(p (1 - p)).
    """
    return (amplitude * g_ref_s) ** 2 * (abs(g_s) / g_ref_s) ** (2 * exponent)


def telegraph_amplitude(u, z, fraction: float, median: float, sigma_ln: float):
    """The telegraph amplitude of devices drawn from the law's distribution over devices: a fraction
    ``fraction`` of them (those with the uniform draw ``u`` below it) carry telegraph noise of amplitude
    ``median`` exp(``sigma_ln`` z), log-normal over devices (``z`` a standard normal draw); the others none.
    """
    return (u < fraction) * (median * _exp(sigma_ln * z))


def drift_factor(t_s, t0_s: float, nu):
    """g(t) / g(0) of the drift power law g(t) = g0 ((t + t0) / t0)^-nu, ``t_s`` after programming."""
    return ((t_s + t0_s) / t0_s) ** (-nu)


__all__ = ["drift_factor", "log_age", "read_sigma", "read_variance", "telegraph_amplitude", "telegraph_variance"]


def relaxation_terms(t_s, t0_s: float):
    """The two time terms of the relaxation law, ``t_s`` after programming:

        h(t) = ln((t + t0) / t0),   a(t) = t / (t + t0),

    both 0 at programming. h grows by one per e-fold of time once t >> t0; a rises to 1 within a few
    t0 and then stays (the early broadening that settles)."""
    return _log((t_s + t0_s) / t0_s), t_s / (t_s + t0_s)


def relaxation_shift(t_s, t0_s: float, mean_s, sigma_s, sigma_early_s, z):
    """g(t) - g_p of the relaxation law, ``t_s`` after programming, for a device with standard normal ``z``:

        g(t) = g_p + mean h(t) + z (sigma_early a(t) + sigma h(t))

    (:func:`relaxation_terms`): an absolute shift whose mean grows with log time and whose spread grows
    as b0 + b1 ln t once t >> t0, one normal per device for both (aihwkit ``ReRamCMONoiseModel``, whose
    G(t) - G_prog has mean m ln t and standard deviation b0 + b1 ln t). It does not scale with g_p, so
    devices move both ways; a multiplicative law (:func:`drift_factor`) cannot describe that."""
    h, a = relaxation_terms(t_s, t0_s)
    return mean_s * h + z * (sigma_early_s * a + sigma_s * h)


__all__ += ["relaxation_shift", "relaxation_terms"]


# Keeps the logarithm of the tail draw finite where a uniform draw or a tail fraction is exactly 0.
_TINY_FRACTION = 1e-30


def programming_error(bias, sigma, tail_fraction, tail_width, z, u, tail_up=0.5, tail_width_down=None):
    """Error (S) of write-verify programming, achieved minus target, from a standard-normal draw ``z`` and
    an independent uniform draw ``u`` in [0, 1) per device:

        error = bias + sigma z                          if u >= f           (the core)
        error = bias + w_up ln(p f / u)                 if u <  p f         (the tail above)
        error = bias - w_down ln((1 - p) f / (u - p f)) if p f <= u < f     (the tail below)

    The core is the devices write-verify brought to their level: a Gaussian of ``sigma``. The tail, a
    fraction f = ``tail_fraction`` of the devices, is those it left far from it (cells that stalled, froze
    or switched abruptly past the target), centred like the core on the level's ``bias``: a share
    p = ``tail_up`` of it above, exponential with mean w_up = ``tail_width``, the rest below with mean
    w_down = ``tail_width_down`` (default: w_up). With p = 1/2 and equal widths (the "mixture" law) that is a
    Laplace distribution of scale w (mean absolute deviation w, standard deviation sqrt(2) w); unequal
    (the "skewed" law), the tail of a polarity that switches abruptly: a VCM cell that missed its level
    mostly sits above it, where the SET left it. Exponential flanks follow the errors measured on PCM, VCM
    and pessimistic RRAM arrays better than a wide Gaussian does. The side and the exponential come from
    ``u`` alone: given u < f, u / f is uniform, below p it chooses the side above and, rescaled within its
    side's share, it is uniform again. So every device needs one ``z`` and one ``u`` whichever component it
    falls in.

    With ``tail_fraction`` 0 (the "normal" law) the error is bias + sigma z for any ``u``. Besides
    arithmetic and the logarithm it uses elementwise comparisons, which numpy arrays, torch tensors and
    floats all define.
    """
    in_core = (u >= tail_fraction) * 1.0
    width_down = tail_width if tail_width_down is None else tail_width_down
    v = u / (tail_fraction + _TINY_FRACTION)
    up = (v < tail_up) * 1.0
    within = up * v / (tail_up + _TINY_FRACTION) + (1 - up) * (v - tail_up) / (1 - tail_up + _TINY_FRACTION)
    # -ln(within) is an Exp(1) draw in the tail; in the core (within > 1) its positive part is 0.
    exponential = _positive_part(-_log(within + _TINY_FRACTION))
    tail = exponential * (up * tail_width - (1 - up) * width_down)
    return bias + z * sigma * in_core + tail * (1 - in_core)


__all__ += ["programming_error"]
