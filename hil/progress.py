"""How a run says where it is: one reporter that every step reports its progress to.

On a terminal it draws rich progress bars, with the run's events (a step starting or ending, an
epoch of training) printed above them. Anywhere else (a log file, ``nohup``, CI) a bar would come
out as blank lines or escape codes, so it writes plain timestamped lines instead, with the progress
of a long task among them at most every few seconds and at each tenth of it. ``--log FILE`` writes
the same plain lines to a file while the terminal keeps its bars.

The lines go through the standard ``logging`` module (logger ``hil.progress``). The run's current
step and a small JSON of its progress also go to the run's database row, at most every couple of
seconds, so that another process can follow the run without it hammering the database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import SQLAlchemyError

from db import Database, runs
from db.models import COMPLETED
from db.timestamps import utcnow

LOGGER = logging.getLogger("hil.progress")
LOGGER.setLevel(logging.INFO)
# The reporter's own handlers are where the lines go; a handler on the root logger would print each twice.
LOGGER.propagate = False

PLAIN_FORMAT = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")

LINE_INTERVAL_S = 5.0       # off a terminal, a task's progress line at most this often ...
LINE_MIN_GAP_S = 2.0        # ... or at each tenth of it, but never two within this
DB_INTERVAL_S = 2.0         # the database row at most this often


def log_file_handler(path: str | Path) -> logging.FileHandler:
    """A handler appending the plain, timestamped lines to ``path``; raises OSError if it cannot be opened
    (so that a bad path is refused before a run starts)."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(PLAIN_FORMAT)
    return handler


def duration(seconds: float) -> str:
    """``seconds`` as a person reads it: 4.2 s, 9 min 36 s, 1 h 05 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _not_a_tick(record: logging.LogRecord) -> bool:
    # On a terminal the bar already shows what a tick line says.
    return not getattr(record, "tick", False)


def _number(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.2f}"


_NAME_COLUMNS = (TextColumn("{task.fields[step]}", style="bold", markup=False),
                 TextColumn("{task.fields[label]}", markup=False))


@dataclass
class _Step:
    index: int
    name: str
    kind: str
    started: float

    def label(self, steps: int) -> str:
        return f"step {self.index + 1}/{steps} {self.name} ({self.kind})"


class Task:
    """The progress of one piece of a step (``done`` of ``total`` ``unit``): a bar on a terminal,
    rate-limited lines elsewhere, and the run's progress in the database."""

    def __init__(self, reporter: RunProgress, label: str, total: float, unit: str, note: str = ""):
        self.reporter, self.label, self.total, self.unit, self.note = reporter, label, total, unit, note
        self.done: float = 0
        self.started = reporter.clock()
        self._last_line = self.started
        self._last_tenth = 0
        self._bar: Progress | None = None
        self._bar_task = None

    def update(self, done: float | None = None, *, advance: float = 0, note: str | None = None,
               label: str | None = None) -> None:
        """Set how much is ``done`` (or ``advance`` it), and optionally the ``note`` shown beside it
        (cells in tolerance) or the task's ``label``."""
        if done is not None:
            self.done = done
        self.done += advance
        if note is not None:
            self.note = note
        if label is not None:
            self.label = label
        if self._bar is not None:
            self._bar.update(self._bar_task, completed=self.done, label=self.label, note=self.note)
        now = self.reporter.clock()
        tenth = int(10 * self.done / self.total) if self.total else 0
        since = now - self._last_line
        # The last unit's line is the one finished() writes.
        due = since >= LINE_INTERVAL_S or (tenth > self._last_tenth and since >= LINE_MIN_GAP_S)
        if due and self.done < self.total:
            self._last_line, self._last_tenth = now, tenth
            self.reporter.tick(f"{self.describe()} ({duration(now - self.started)})")
        self.reporter.record(self)

    def describe(self) -> str:
        text = f"{self.label}: {_number(self.done)}/{_number(self.total)} {self.unit}".rstrip()
        return f"{text}, {self.note}" if self.note else text

    def where(self) -> str:
        """What this task was doing, for the message of an interrupted run."""
        return f"{self.label} at {_number(self.done)}/{_number(self.total)} {self.unit}".rstrip()

    def state(self) -> dict[str, Any]:
        return {"stage": self.label, "done": self.done, "total": self.total, "unit": self.unit}

    def finished(self) -> None:
        self.reporter.tick(f"{self.describe()}, {duration(self.reporter.clock() - self.started)}")

    def _columns(self) -> tuple:
        # markup=False: step names, labels and notes are shown as written, brackets included.
        return (*_NAME_COLUMNS, BarColumn(), MofNCompleteColumn(),
                TextColumn(f"{self.unit} {{task.fields[note]}}", markup=False), TimeElapsedColumn())


class Training(Task):
    """The epochs of a training: a line for each (loss, validation accuracy, time per epoch, ETA)."""

    def __init__(self, reporter: RunProgress, label: str, epochs: int):
        super().__init__(reporter, label, epochs, "epochs")
        self.epoch_seconds: list[float] = []
        self.batches: tuple[int, int] | None = None

    @property
    def current_epoch(self) -> int:
        """The epoch under way, from 1; the last one once all are done."""
        return min(len(self.epoch_seconds) + 1, int(self.total))

    def batch(self, done: int, of: int) -> None:
        """``done`` of ``of`` batches of the current epoch are through."""
        self.batches = (done, of)
        self.update(len(self.epoch_seconds) + done / max(of, 1))

    def describe(self) -> str:
        text = f"{self.label}: epoch {self.current_epoch}/{int(self.total)}"
        if self.batches:
            text += f", batch {self.batches[0]}/{self.batches[1]}"
        return f"{text}, {self.note}" if self.note else text

    def epoch_done(self, epoch: int, *, train_loss: float, val_accuracy: float, seconds: float) -> None:
        """Epoch ``epoch`` (from 0) ended after ``seconds`` with that training loss and validation accuracy."""
        self.epoch_seconds.append(seconds)
        epochs = int(self.total)
        remaining = epochs - (epoch + 1)
        mean = sum(self.epoch_seconds) / len(self.epoch_seconds)
        self.note = f"last val {100 * val_accuracy:.1f}%"
        self.batches = None
        # The epoch's line stands for a progress line: the next one is due an interval later.
        self._last_line, self._last_tenth = self.reporter.clock(), int(10 * (epoch + 1) / epochs)
        self.reporter.event(f"{self.reporter.step_label()} epoch {epoch + 1}/{epochs}: train loss {train_loss:.4f}, "
                            f"val accuracy {100 * val_accuracy:.2f}%, {seconds:.1f} s/epoch, "
                            f"ETA {duration(mean * remaining)}")
        self.update(epoch + 1)

    def where(self) -> str:
        epochs = int(self.total)
        if len(self.epoch_seconds) >= epochs:
            return f"after epoch {epochs}/{epochs} of {self.label}"
        return f"epoch {self.current_epoch}/{epochs} of {self.label}"

    def state(self) -> dict[str, Any]:
        return {**super().state(), "done": len(self.epoch_seconds), "epoch": self.current_epoch,
                "epochs": int(self.total)}

    def finished(self) -> None:
        pass            # every epoch had its line

    def _columns(self) -> tuple:
        return (*_NAME_COLUMNS, BarColumn(),
                TextColumn("epoch {task.completed:.1f}/{task.total:.0f} {task.fields[note]}", markup=False),
                TimeElapsedColumn())


class RunProgress:
    """The one place a run reports its progress: steps call :meth:`task` or :meth:`training`, the runner
    the ``step_*`` and ``run_*`` methods. Use as a context manager (it attaches its logging handlers)."""

    def __init__(self, console: Console, *, steps: int, db: Database | None = None, run_id: int | None = None,
                 log_handler: logging.Handler | None = None, clock: Callable[[], float] = time.monotonic):
        self.console, self.steps, self.db, self.run_id, self.clock = console, steps, db, run_id, clock
        self.interactive = console.is_terminal
        if self.interactive:
            screen: logging.Handler = RichHandler(console=console, show_level=False, show_path=False, markup=False,
                                                  log_time_format="[%H:%M:%S]")
            screen.addFilter(_not_a_tick)
        else:
            screen = logging.StreamHandler(console.file)
            screen.setFormatter(PLAIN_FORMAT)
        self.handlers = [screen] + ([log_handler] if log_handler is not None else [])
        self.step: _Step | None = None
        self.last_step: _Step | None = None      # the last step that ended
        self.stopped_step: _Step | None = None   # ... if an exception ended it
        self.task_now: Task | None = None
        self.stopped_in: Task | None = None    # the task an exception left, for where()
        self._last_db = float("-inf")
        self._db_warned = False

    def __enter__(self) -> RunProgress:
        for handler in self.handlers:
            LOGGER.addHandler(handler)
        return self

    def __exit__(self, *exc) -> None:
        for handler in self.handlers:
            LOGGER.removeHandler(handler)
            handler.flush()

    # -- lines ------------------------------------------------------------------------------------------
    def event(self, message: str) -> None:
        """A line everywhere: terminal, plain output, log file."""
        LOGGER.info(message)

    def tick(self, message: str) -> None:
        """A progress line where no bar shows it (off a terminal, the log file)."""
        LOGGER.info(message, extra={"tick": True})

    # -- the run and its steps --------------------------------------------------------------------------
    def run_started(self, protocol_name: str, *, resumed: bool) -> None:
        self.event(f"run {self.run_id} {'resumed' if resumed else 'started'}: {protocol_name}, {self.steps} steps")
        self._write(force=True)

    def step_label(self) -> str:
        step = self.step or self.last_step
        return step.label(self.steps) if step else ""

    def step_restored(self, index: int, name: str, kind: str, attempt: int) -> None:
        label = _Step(index, name, kind, 0.0).label(self.steps)
        self.event(f"{label}: completed in attempt {attempt}, not run again")

    def step_started(self, index: int, name: str, kind: str) -> None:
        self.step = _Step(index, name, kind, self.clock())
        self.task_now = self.stopped_in = self.stopped_step = None
        self.event(self.step.label(self.steps))
        self._write(force=True)

    def step_finished(self) -> float:
        """The current step completed; returns its seconds."""
        step, self.step, self.last_step = self.step, None, self.step
        seconds = self.clock() - step.started
        self.event(f"{step.label(self.steps)} done in {duration(seconds)}")
        return seconds

    def step_stopped(self, status: str, error: str) -> None:
        """The current step ended by an exception (``status`` "failed" or "interrupted")."""
        step, self.step, self.last_step, self.stopped_step = self.step, None, self.step, self.step
        seconds = self.clock() - step.started
        where = self.stopped_in.where() if self.stopped_in else ""
        self.event(f"{step.label(self.steps)} {status} after {duration(seconds)}"
                   + (f" ({where})" if where else "") + ("" if status == "interrupted" else f": {error}"))

    def where(self) -> str:
        """Where the run is or stopped: "in step 3/7 noisy (train), epoch 4/30 of training"."""
        step = self.step or self.stopped_step
        if step is None:
            return f"after {self.last_step.label(self.steps)}" if self.last_step else ""
        task = self.task_now or self.stopped_in
        return f"in {step.label(self.steps)}" + (f", {task.where()}" if task else "")

    def run_finished(self, status: str, seconds: float, error: str | None) -> None:
        """Log the end and leave the run's row final: cleared if completed, else where it stopped."""
        self.event(f"run {self.run_id} {status} in {duration(seconds)}" + (f": {error}" if error else ""))
        if status == COMPLETED:
            self._store(None, None, None)
        else:
            self._write(force=True)

    # -- tasks within a step ----------------------------------------------------------------------------
    @contextmanager
    def task(self, label: str, total: float, unit: str = "", note: str = "") -> Iterator[Task]:
        """A piece of the current step with ``total`` ``unit`` of work, updated through the yielded task."""
        with self._running(Task(self, label, total, unit, note)) as task:
            yield task

    @contextmanager
    def training(self, epochs: int, label: str = "training") -> Iterator[Training]:
        """A training of ``epochs`` epochs: call ``batch`` and ``epoch_done`` of the yielded object."""
        with self._running(Training(self, label, epochs)) as task:
            yield task

    @contextmanager
    def _running(self, task: Task) -> Iterator[Task]:
        self.task_now, self.stopped_in = task, None
        try:
            if self.interactive:
                with Progress(*task._columns(), console=self.console, transient=True) as bar:
                    step = self.step.name if self.step else ""
                    task._bar, task._bar_task = bar, bar.add_task(task.label, total=task.total, label=task.label,
                                                                  note=task.note, step=step)
                    yield task
            else:
                yield task
        except BaseException:
            self.stopped_in = task
            raise
        finally:
            task._bar = None
            self.task_now = None
        task.finished()

    # -- the database -----------------------------------------------------------------------------------
    def record(self, task: Task) -> None:
        """The task's progress in the run's row, if the last write is old enough."""
        self._write(task)

    def _write(self, task: Task | None = None, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_db < DB_INTERVAL_S:
            return
        self._last_db = now
        step = self.step or self.last_step
        task = task or self.task_now or self.stopped_in
        state = task.state() if task else {"stage": None}
        state.update(steps=self.steps, updated_at=utcnow().isoformat())
        self._store(step.index if step else None, step.name if step else None, state)

    def _store(self, index: int | None, name: str | None, state: dict | None) -> None:
        if self.db is None or self.run_id is None:
            return
        try:
            with self.db.session() as session:
                runs.set_run_progress(session, self.run_id, step_index=index, step_name=name, progress=state)
        except SQLAlchemyError as exc:
            # Progress is for people watching; a busy or unreachable database must not fail the measurement,
            # whose own writes will report the problem if it persists.
            if not self._db_warned:
                self._db_warned = True
                self.event(f"progress not recorded in the database: {type(exc).__name__}: {exc}")
