"""Run a validated protocol on an opened-on-demand crossbar, recording everything in the database.

The run row is committed before the instrument is opened and every step commits
its own data, so a fault or an interrupt leaves the database consistent: the
run and its steps carry their status and error, and what was measured before stays.

A failed or interrupted run can be resumed: its completed steps are not run again
(their outputs, a noise model or a checkpoint, are taken from the database), except
those that put something on the array a remaining step needs (a ``program`` step
before a ``read``, a ``deploy`` step an ``infer`` names). What an array holds after
an interruption cannot be taken on trust (it drifted, or a simulated array is gone
with its process), so those run again as new attempts; on an array that kept its
state, write-verify then finds little or nothing to do.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from db import Database
from db import records, resume, runs
from drivers import Crossbar

from .context import RunContext, StepReport
from .progress import RunProgress
from .protocol_loader import LoadedProtocol, check_within
from .steps import EXECUTORS, RESTORERS
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
    attempt: int = 1
    restored: bool = False        # completed in an earlier attempt of a resumed run, not run now


@dataclass
class RunOutcome:
    run_id: int
    status: str
    error: str | None
    seconds: float
    steps: list[StepOutcome] = field(default_factory=list)
    protocol_name: str = ""


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def execute(loaded: LoadedProtocol, xbar: Crossbar, db: Database, *, backend: str, seed: int | None,
            options: dict | None = None, console: Console | None = None,
            report_dir: Path = Path("reports"), resume_run_id: int | None = None,
            log_handler: logging.Handler | None = None,
            extra_crossbars: dict[str, Crossbar] | None = None) -> RunOutcome:
    """Run every step of ``loaded`` on ``xbar``; returns the outcome, never raises for a run failure.
    ``resume_run_id``: continue that failed or interrupted run (``loaded`` must be its protocol) instead
    of starting a new one; raises :class:`db.resume.ResumeRefused` if it cannot be resumed.
    Progress goes to ``console`` (bars on a terminal, plain lines elsewhere), to ``log_handler`` if given
    (see :func:`hil.progress.log_file_handler`) and to the run's row in ``db``."""
    console = console or Console(stderr=True)
    protocol = loaded.protocol
    t_start = time.perf_counter()
    previous: dict[int, tuple[str, int, dict]] = {}     # step index -> (status, attempt, summary)
    with db.session() as session:
        if resume_run_id is None:
            run = runs.start_run(session, protocol_name=protocol.name, protocol_path=str(loaded.path),
                                 protocol_text=loaded.text, backend=backend, seed=seed,
                                 code_version=code_version(), options=options,
                                 operator=(options or {}).get("operator") or protocol.operator,
                                 notes=(options or {}).get("notes") or protocol.notes)
            expected_array = None
        else:
            run = resume.resume_run(session, resume_run_id, options)
            previous = {i: (row.status, row.attempt, row.summary or {})
                        for i, row in runs.latest_attempts(session, run).items()}
            expected_array = runs.array_id_of(session, run)
    # A resumed run draws fresh random patterns, reproducibly: from its seed and the number of resumes.
    rng = np.random.default_rng(seed if resume_run_id is None else [seed or 0, len(run.resumes or [])])
    outcome = RunOutcome(run_id=run.id, status="running", error=None, seconds=0.0, protocol_name=protocol.name)
    with RunProgress(console, steps=len(protocol.steps), db=db, run_id=run.id, log_handler=log_handler) as progress:
        progress.run_started(protocol.name, resumed=resume_run_id is not None)
        status, error = _run_steps(loaded, xbar, db, run, rng, console, Path(report_dir), previous,
                                   expected_array, progress, outcome, extra_crossbars or {})
        with db.session() as session:
            runs.finish_run(session, run, status, error)
        outcome.status, outcome.error = status, error
        outcome.seconds = time.perf_counter() - t_start
        progress.run_finished(status, outcome.seconds, error)
    return outcome


def _run_steps(loaded: LoadedProtocol, xbar: Crossbar, db: Database, run, rng, console: Console, report_dir: Path,
               previous: dict[int, tuple[str, int, dict]], expected_array: str | None, progress: RunProgress,
               outcome: RunOutcome, extra_crossbars: dict[str, Crossbar]) -> tuple[str, str | None]:
    """Open the instruments and run (or restore) every step into ``outcome``; the run's (status, error)."""
    protocol = loaded.protocol
    try:
        with xbar, ExitStack() as others:
            for extra in extra_crossbars.values():
                others.enter_context(extra)
                check_within(loaded, extra.limits, f"the {extra.identity.backend} backend's")
            ident = xbar.identity
            # A bench reports its own hard limits only once open; check every step against them now, before
            # the first step runs, rather than half-way through the run.
            check_within(loaded, xbar.limits, f"the {ident.backend} backend's")
            # The array is filed under the name the protocol or the command line gave it (kept in the run's
            # options), else under the id the instrument reports.
            array_id = (run.options or {}).get("array") or protocol.array.name or ident.array_id
            if expected_array is not None and array_id != expected_array:
                raise RuntimeError(f"run {run.id} measured array {expected_array!r}, but the instrument holds "
                                   f"{array_id!r}: connect that array to resume it")
            with db.session() as session:
                instrument = records.get_or_create_instrument(session, ident.backend, ident.instrument_id,
                                                              ident.model, ident.firmware)
                array = records.get_or_create_array(session, instrument, array_id, ident.rows, ident.cols,
                                                    wafer=protocol.array.wafer, die=protocol.array.die)
                session.add(run)
                run.array_fk = array.id
                extras = {}
                for name, extra in extra_crossbars.items():
                    ident_x = extra.identity
                    instrument_x = records.get_or_create_instrument(session, ident_x.backend, ident_x.instrument_id,
                                                                    ident_x.model, ident_x.firmware)
                    extras[name] = (extra, records.get_or_create_array(session, instrument_x, name, ident_x.rows,
                                                                       ident_x.cols))
            ctx = RunContext(db=db, run=run, array=array, xbar=xbar, protocol=protocol,
                             base_dir=Path(loaded.path).resolve().parent,
                             rng=rng, console=console, progress=progress, report_dir=report_dir, extra_arrays=extras)
            rerun = _to_run_again(protocol.steps, previous)
            for index, step in enumerate(protocol.steps):
                status, attempt, summary = previous.get(index, (None, 0, {}))
                if status == "completed" and index not in rerun:
                    RESTORERS.get(step.kind, lambda *_: None)(ctx, step, summary)
                    progress.step_restored(index, step.name, step.kind, attempt)
                    outcome.steps.append(StepOutcome(index, step.name, step.kind, "completed", 0.0, 0,
                                                     StepReport(detail=f"completed in attempt {attempt}"),
                                                     attempt=attempt, restored=True))
                else:
                    outcome.steps.append(_run_step(ctx, index, step, attempt + 1))
        return "completed", None
    except KeyboardInterrupt:
        # Which step and epoch it stopped in tells what a resume will redo.
        where = progress.where()
        return "interrupted", "interrupted by the user (KeyboardInterrupt)" + (f" {where}" if where else "")
    except Exception as exc:   # the run's failure is data: recorded, reported, not re-raised
        return "failed", describe(exc)


def _to_run_again(steps, previous: dict[int, tuple[str, int, dict]]) -> set[int]:
    """Indices of completed steps whose effect on the array a remaining step relies on."""
    remaining = [i for i in range(len(steps)) if previous.get(i, ("",))[0] != "completed"]
    if not previous or not remaining:
        return set()
    first = remaining[0]
    later = steps[first:]
    again = set()
    wanted = {s.deployment for s in later if s.kind in ("infer", "finetune", "maintain")}
    # a deployment a later step uses is programmed again, and what was fine-tuned on its cells is
    # fine-tuned again on the new ones (corrections learnt on one programming do not fit the next)
    again |= {i for i in range(first) if steps[i].kind == "deploy" and steps[i].name in wanted}
    again |= {i for i in range(first) if steps[i].kind == "finetune" and steps[i].deployment in wanted}
    if any(s.kind == "read" for s in later):
        programs = [i for i in range(first) if steps[i].kind == "program"]
        again |= set(programs[-1:])
    return again


def _run_step(ctx: RunContext, index: int, step, attempt: int = 1) -> StepOutcome:
    with ctx.db.session() as session:
        row = runs.start_step(session, ctx.run, index, step.name, step.kind, attempt)
    calls_before = ctx.xbar.total_transactions
    ctx.progress.step_started(index, step.name, step.kind)
    try:
        report = EXECUTORS[step.kind](ctx, step, row)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        error = describe(exc)
        if status == "interrupted":
            error = f"interrupted by the user (KeyboardInterrupt) {ctx.progress.where()}"
        ctx.progress.step_stopped(status, error)
        with ctx.db.session() as session:
            runs.finish_step(session, row, status, error=error)
        raise
    seconds = ctx.progress.step_finished()
    calls = ctx.xbar.total_transactions - calls_before
    report.summary.update(seconds=seconds, instrument_calls=calls)
    with ctx.db.session() as session:
        runs.finish_step(session, row, "completed", summary=report.summary)
    return StepOutcome(index, step.name, step.kind, "completed", seconds, calls, report, attempt=attempt)
