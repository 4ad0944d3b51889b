"""A read-only web view of the database: runs as they go, arrays and their calibration history,
each run's results. ``python -m hil.web [--db URL] [--port P]``; see :mod:`hil.web.app`."""
