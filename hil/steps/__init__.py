"""Executors of the protocol's step kinds: each takes the run context, its step and its database row."""

from .calibrate import restore_calibrate, run_calibrate
from .deploy import run_deploy
from .infer import run_infer
from .program import run_program
from .read import run_read
from .train import restore_train, run_train

EXECUTORS = {"program": run_program, "read": run_read, "calibrate": run_calibrate, "train": run_train,
             "deploy": run_deploy, "infer": run_infer}

# What a completed step left for later ones, taken back from its stored summary when a run is resumed.
RESTORERS = {"calibrate": restore_calibrate, "train": restore_train}

__all__ = ["EXECUTORS", "RESTORERS"]
