"""What every choice between two laws of the noise model shares.

Calibration fits each effect (programming error, read noise, drift) with a simple law and with wider
ones, and scores each on devices it was not fitted to (two-fold held-out log-likelihood per device or
per sample). A wider law is chosen only if it predicts the held-out data better than the simpler one by
``SELECTION_MARGIN`` nats per device: on data without the effect its extra parameters fit one half's
scatter and gain nothing (a few 1e-4 nats) on the other, and a simpler law that predicts as well is
preferred.
"""

SELECTION_MARGIN = 0.01
