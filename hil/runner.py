"""Run a validated protocol on an opened-on-demand crossbar, recording everything in the database.

The run row is committed before the instrument is opened and every step commits
its own data, so a fault or an interrupt leaves the database consistent: the
run and its steps carry their status and error, and what was measured before stays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from db import Database
from db import records
from drivers import Crossbar

from .context import RunContext, StepReport
from .protocol_loader import LoadedProtocol
from .steps import EXECUTORS
from .version import code_version


@dataclass
class StepOutcome:
    index: int
    name: str
    kind: str
    status: str
    seconds: float
    transactions: int
    report: StepReport | None = None
    error: str | None = None


@dataclass
class RunOutcome:
    run_id: int
    status: str
    error: str | None
    seconds: float
    steps: list[StepOutcome] = field(default_factory=list)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def execute(loaded: LoadedProtocol, xbar: Crossbar, db: Database, *, backend: str, seed: int | None,
            options: dict | None = None, console: Console | None = None,
            report_dir: Path = Path("reports")) -> RunOutcome:
    """Run every step of ``loaded`` on ``xbar``; returns the outcome, never raises for a run failure."""
    console = console or Console(stderr=True)
    protocol = loaded.protocol
    t_start = time.perf_counter()
    with db.session() as session:
        run = records.start_run(session, protocol_name=protocol.name, protocol_path=str(loaded.path),
                                protocol_text=loaded.text, backend=backend, seed=seed,
                                code_version=code_version(), options=options)
    outcome = RunOutcome(run_id=run.id, status="running", error=None, seconds=0.0)
    try:
        with xbar:
            ident = xbar.identity
            with db.session() as session:
                instrument = records.get_or_create_instrument(session, ident.backend, ident.instrument_id,
                                                              ident.model, ident.firmware)
                array = records.get_or_create_array(session, instrument, ident.array_id, ident.rows, ident.cols)
                session.add(run)
                run.array_fk = array.id
            ctx = RunContext(db=db, run=run, array=array, xbar=xbar, protocol=protocol,
                             base_dir=Path(loaded.path).resolve().parent,
                             rng=np.random.default_rng(seed), console=console, report_dir=Path(report_dir))
            for index, step in enumerate(protocol.steps):
                outcome.steps.append(_run_step(ctx, index, step))
        status, error = "completed", None
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user (KeyboardInterrupt)"
    except Exception as exc:   # the run's failure is data: recorded, reported, not re-raised
        status, error = "failed", describe(exc)
    with db.session() as session:
        records.finish_run(session, run, status, error)
    outcome.status, outcome.error = status, error
    outcome.seconds = time.perf_counter() - t_start
    return outcome


def _run_step(ctx: RunContext, index: int, step) -> StepOutcome:
    with ctx.db.session() as session:
        row = records.start_step(session, ctx.run, index, step.name, step.kind)
    calls_before = ctx.xbar.total_transactions
    t0 = time.perf_counter()
    try:
        report = EXECUTORS[step.kind](ctx, step, row)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        with ctx.db.session() as session:
            records.finish_step(session, row, status, error=describe(exc))
        raise
    seconds = time.perf_counter() - t0
    calls = ctx.xbar.total_transactions - calls_before
    report.summary.update(seconds=seconds, instrument_calls=calls)
    with ctx.db.session() as session:
        records.finish_step(session, row, "completed", summary=report.summary)
    return StepOutcome(index, step.name, step.kind, "completed", seconds, calls, report)
