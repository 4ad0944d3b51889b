"""What a step sees while it runs: the instrument, the database rows of this run, and earlier steps' outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from db import Database
from db import records
from db.models import CrossbarArray, Run, RunStep
from drivers import Crossbar

from .progress import RunProgress
from .protocol import Protocol


class NonFiniteMeasurement(RuntimeError):
    """A step measured NaN or infinite values; it fails instead of recording garbage as a result."""


@dataclass
class StepReport:
    """One row of the run's summary table, plus the JSON summary stored with the step."""

    cells: str = ""
    iterations: str = ""
    detail: str = ""
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProgrammedPattern:
    """The targets last programmed in this run, for later steps to compare against."""

    step_name: str
    targets_s: np.ndarray
    tolerance_s: float


@dataclass
class RunContext:
    db: Database
    run: Run
    array: CrossbarArray
    xbar: Crossbar
    protocol: Protocol
    base_dir: Path
    rng: np.random.Generator
    console: Console
    progress: RunProgress        # where every step reports how far it has got
    report_dir: Path = Path("reports")
    last_program: ProgrammedPattern | None = None
    noise_models: dict[str, int] = field(default_factory=dict)    # calibrate step name -> noise model id
    checkpoints: dict[str, int] = field(default_factory=dict)     # train step name -> checkpoint id
    deployments: dict[str, Any] = field(default_factory=dict)     # deploy step name -> hil.deployment.Deployed
    # the protocol's further arrays: name -> (opened crossbar, its row in the arrays table)
    extra_arrays: dict[str, tuple[Crossbar, CrossbarArray]] = field(default_factory=dict)

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass on the main array's clock and bring every further array's clock level with it
        (the mock's clocks are virtual, one per array; a bench's share real time, so they wait no longer)."""
        if seconds > 0:
            self.xbar.wait(seconds)
        for other, _ in self.extra_arrays.values():
            lag = self.xbar.now() - other.now()
            if lag > 0:
                other.wait(lag)

    def save(self, step: RunStep, name: str, kind: str, unit: str, array: np.ndarray, *, finite: bool = True,
             on_array: CrossbarArray | None = None, **meta) -> None:
        """Store one measured array of ``step`` in its own committed transaction.

        With ``finite`` (the default), raises :class:`NonFiniteMeasurement` (after storing it, so the
        evidence is kept) if a measured value is NaN or infinite: the step must fail rather than record
        garbage as a result. Targets (``kind`` ``target_*``) may hold NaN, which there means "no target
        for this cell". ``finite=False`` is for raw data in which a non-finite value is itself an
        observation (a calibration's reads of a broken cell): stored as measured, the step judges how
        much of it is usable. ``on_array``: a further array of the run the values were measured on (default the
        main one).
        """
        with self.db.session() as session:
            records.add_measurement(session, self.run, step, name, kind, unit, array,
                                    crossbar_array=on_array or self.array, meta=meta or None)
        values = np.asarray(array)
        if finite and values.dtype.kind in "fc":
            bad = np.isinf(values) if kind.startswith("target") else ~np.isfinite(values)
            if bad.any():
                raise NonFiniteMeasurement(f"{int(bad.sum())} of {values.size} values of {name!r} ({kind}, {unit}) "
                                           f"are not finite (NaN or infinite), first at index "
                                           f"{tuple(int(i) for i in np.argwhere(bad)[0])}: the measurement is "
                                           f"unusable (stored with the step for inspection)")
