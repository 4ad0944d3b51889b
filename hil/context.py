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

from .protocol import Protocol


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
    report_dir: Path = Path("reports")
    last_program: ProgrammedPattern | None = None
    noise_models: dict[str, int] = field(default_factory=dict)    # calibrate step name -> noise model id
    checkpoints: dict[str, int] = field(default_factory=dict)     # train step name -> checkpoint id
    deployments: dict[str, Any] = field(default_factory=dict)     # deploy step name -> hil.steps.deploy.Deployed

    def save(self, step: RunStep, name: str, kind: str, unit: str, array: np.ndarray, **meta) -> None:
        """Store one measured array of ``step`` in its own committed transaction."""
        with self.db.session() as session:
            records.add_measurement(session, self.run, step, name, kind, unit, array,
                                    crossbar_array=self.array, meta=meta or None)
