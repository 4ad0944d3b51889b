"""Executors of the protocol's step kinds: each takes the run context, its step and its database row.

A step's module is imported when a step of its kind runs: training, deployment and inference bring
torch, and calibration matplotlib, which a protocol that only programs and reads should not wait for.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


class _Lazy(dict):
    """Step kind -> function; a value written ``"module:function"`` is imported on first use.

    A dict (not a read-only mapping) so that tests can substitute a step with ``patch.dict``.
    """

    def __getitem__(self, kind: str) -> Callable:
        value = super().__getitem__(kind)
        if isinstance(value, str):
            module, function = value.split(":")
            value = getattr(import_module(f"{__name__}.{module}"), function)
        return value

    def get(self, kind, default=None):
        return self[kind] if kind in self else default


EXECUTORS = _Lazy({"program": "program:run_program", "read": "read:run_read", "calibrate": "calibrate:run_calibrate",
                   "train": "train:run_train", "deploy": "deploy:run_deploy", "infer": "infer:run_infer",
                   "finetune": "finetune:run_finetune", "maintain": "maintain:run_maintain"})

# What a completed step left for later ones, taken back from its stored summary when a run is resumed.
RESTORERS = _Lazy({"calibrate": "calibrate:restore_calibrate", "train": "train:restore_train"})

__all__ = ["EXECUTORS", "RESTORERS"]
