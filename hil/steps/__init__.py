"""Executors of the protocol's step kinds: each takes the run context, its step and its database row."""

from .calibrate import run_calibrate
from .program import run_program
from .read import run_read
from .train import run_train

EXECUTORS = {"program": run_program, "read": run_read, "calibrate": run_calibrate, "train": run_train}

__all__ = ["EXECUTORS"]
