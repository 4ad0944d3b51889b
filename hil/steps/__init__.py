"""Executors of the protocol's step kinds: each takes the run context, its step and its database row."""

from .calibrate import run_calibrate
from .program import run_program
from .read import run_read

EXECUTORS = {"program": run_program, "read": run_read, "calibrate": run_calibrate}

__all__ = ["EXECUTORS"]
