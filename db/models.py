"""The run database schema as typed SQLAlchemy ORM classes.

Every measurement is traceable to the run that produced it (protocol text and hash,
backend, code version, timestamps) and, where it concerns one, to the crossbar array
and the instrument that holds it. Bulk data are compressed blobs (``db.arrays``) with
summary columns beside them; per-device results are rows, so history can be queried
per array, per device and over time.

Changing anything here needs a new migration in ``db/migrations/versions``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, CheckConstraint, Float, ForeignKey, Index, Integer,
                        LargeBinary, MetaData, String, Text, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.timestamps import UTCDateTime, utcnow

RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
INTERRUPTED = "interrupted"
STATUSES = (RUNNING, COMPLETED, FAILED, INTERRUPTED)
FINAL_STATUSES = (COMPLETED, FAILED, INTERRUPTED)

# Explicit constraint names let later migrations drop or alter a constraint by name,
# which SQLite's batch mode needs, and keep names identical across backends.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_STATUS_CHECK = "status IN ({})".format(", ".join(f"'{s}'" for s in STATUSES))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Instrument(Base):
    """A bench instrument (or the mock) as identified by its backend."""

    __tablename__ = "instruments"
    __table_args__ = (UniqueConstraint("backend", "instrument_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    backend: Mapped[str] = mapped_column(String(64))
    instrument_id: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(255))
    firmware: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    arrays: Mapped[list[CrossbarArray]] = relationship(back_populates="instrument")

    def __repr__(self) -> str:
        return f"Instrument(id={self.id}, backend={self.backend!r}, instrument_id={self.instrument_id!r})"


class CrossbarArray(Base):
    """One physical (or simulated) crossbar array, ``rows`` x ``cols`` devices."""

    __tablename__ = "arrays"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    array_id: Mapped[str] = mapped_column(String(255), unique=True)
    instrument_fk: Mapped[int] = mapped_column(ForeignKey("instruments.id", ondelete="RESTRICT"), index=True)
    rows: Mapped[int] = mapped_column(Integer)
    cols: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Where the die came from, as the protocol or the command line named it (None: not said).
    wafer: Mapped[str | None] = mapped_column(String(255))
    die: Mapped[str | None] = mapped_column(String(255))

    instrument: Mapped[Instrument] = relationship(back_populates="arrays")

    def __repr__(self) -> str:
        return f"CrossbarArray(id={self.id}, array_id={self.array_id!r}, shape=({self.rows}, {self.cols}))"


class Run(Base):
    """One execution of a protocol, with what is needed to reproduce it."""

    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(_STATUS_CHECK, name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    protocol_name: Mapped[str] = mapped_column(String(255))
    protocol_path: Mapped[str | None] = mapped_column(String(1024))
    protocol_text: Mapped[str] = mapped_column(Text)
    protocol_hash: Mapped[str] = mapped_column(String(64), index=True)  # sha256 hex of protocol_text
    backend: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    code_version: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    array_fk: Mapped[int | None] = mapped_column(ForeignKey("arrays.id", ondelete="SET NULL"), index=True)
    # Settings that shape the result (resolved seed, backend options); never where the
    # result was written, which says nothing about the experiment and may hold secrets.
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # The process running it, so that a run a killed process left "running" is recognised later.
    owner_host: Mapped[str | None] = mapped_column(String(255))
    owner_pid: Mapped[int | None] = mapped_column(Integer)
    # One entry per resume: when, by which process, and the status and error the run had before.
    resumes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    # Where the run is, for another process to follow it: the step running now (0-based index and
    # name) and that step's progress {stage, done, total, unit, epoch, epochs, updated_at}. A failed or
    # interrupted run keeps where it stopped; a completed one has them cleared.
    current_step_index: Mapped[int | None] = mapped_column(Integer)
    current_step: Mapped[str | None] = mapped_column(String(255))
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # Who ran it and why, as the protocol or the command line said.
    operator: Mapped[str | None] = mapped_column(String(255))
    notes: Mapped[str | None] = mapped_column(Text)

    crossbar_array: Mapped[CrossbarArray | None] = relationship()
    # The database deletes the children (ON DELETE CASCADE); passive_deletes spares
    # loading thousands of rows just to delete them.
    steps: Mapped[list[RunStep]] = relationship(
        back_populates="run", order_by=lambda: (RunStep.index, RunStep.attempt), cascade="all, delete-orphan",
        passive_deletes=True)
    measurements: Mapped[list[Measurement]] = relationship(
        back_populates="run", order_by="Measurement.id", cascade="all, delete-orphan", passive_deletes=True)

    def __repr__(self) -> str:
        return f"Run(id={self.id}, protocol_name={self.protocol_name!r}, status={self.status!r})"


class RunStep(Base):
    """One step of a run, at position ``index`` in its protocol."""

    __tablename__ = "run_steps"
    __table_args__ = (UniqueConstraint("run_fk", "index", "attempt"), CheckConstraint(_STATUS_CHECK, name="status"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_fk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # A resumed run runs a step again as a new attempt; earlier attempts keep their rows and data.
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    run: Mapped[Run] = relationship(back_populates="steps")
    measurements: Mapped[list[Measurement]] = relationship(
        back_populates="step", order_by="Measurement.id", cascade="all, delete-orphan", passive_deletes=True)

    def __repr__(self) -> str:
        return f"RunStep(id={self.id}, run_fk={self.run_fk}, index={self.index}, name={self.name!r})"


class Measurement(Base):
    """A measured array (blob from ``db.arrays``) with its summary statistics."""

    __tablename__ = "measurements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_fk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step_fk: Mapped[int | None] = mapped_column(ForeignKey("run_steps.id", ondelete="CASCADE"), index=True)
    array_fk: Mapped[int | None] = mapped_column(ForeignKey("arrays.id", ondelete="SET NULL"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(64))
    unit: Mapped[str] = mapped_column(String(32))
    shape: Mapped[list[int]] = mapped_column(JSON)
    dtype: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    # Over finite values only; see db.arrays.summarize.
    n: Mapped[int | None] = mapped_column(Integer)
    mean: Mapped[float | None] = mapped_column(Float)
    std: Mapped[float | None] = mapped_column(Float)
    min: Mapped[float | None] = mapped_column(Float)
    max: Mapped[float | None] = mapped_column(Float)
    nan_count: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    run: Mapped[Run] = relationship(back_populates="measurements")
    step: Mapped[RunStep | None] = relationship(back_populates="measurements")
    crossbar_array: Mapped[CrossbarArray | None] = relationship()

    def __repr__(self) -> str:
        return f"Measurement(id={self.id}, name={self.name!r}, kind={self.kind!r}, shape={self.shape})"


class DeviceResult(Base):
    """The outcome of programming one device (cell ``row``, ``col``) of an array, in siemens."""

    __tablename__ = "device_results"
    __table_args__ = (Index(None, "array_fk", "row", "col"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_fk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step_fk: Mapped[int] = mapped_column(ForeignKey("run_steps.id", ondelete="CASCADE"), index=True)
    array_fk: Mapped[int] = mapped_column(ForeignKey("arrays.id", ondelete="RESTRICT"))
    row: Mapped[int] = mapped_column(Integer)
    col: Mapped[int] = mapped_column(Integer)
    # NULL where there was no target (cell not programmed) or no valid reading.
    target_s: Mapped[float | None] = mapped_column(Float)
    achieved_s: Mapped[float | None] = mapped_column(Float)
    error_s: Mapped[float | None] = mapped_column(Float)
    iterations: Mapped[int] = mapped_column(Integer)
    success: Mapped[bool] = mapped_column(Boolean)

    def __repr__(self) -> str:
        return f"DeviceResult(id={self.id}, array_fk={self.array_fk}, row={self.row}, col={self.col})"


class DeviceStat(Base):
    """One statistic of one device (cell ``row``, ``col``) from one run, e.g. its g_max in siemens.

    ``quantity`` names the statistic and carries its unit in its name ("g_min_s",
    "drift_nu"); flags such as "stuck" are 0.0 / 1.0. NULL where it could not be estimated.
    """

    __tablename__ = "device_stats"
    # (array, quantity, row, col) serves the per-device and per-quantity histories; the
    # run and step indexes keep the cascading deletes of a run from scanning the table.
    __table_args__ = (Index(None, "array_fk", "quantity", "row", "col"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_fk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step_fk: Mapped[int | None] = mapped_column(ForeignKey("run_steps.id", ondelete="CASCADE"), index=True)
    array_fk: Mapped[int] = mapped_column(ForeignKey("arrays.id", ondelete="RESTRICT"))
    row: Mapped[int] = mapped_column(Integer)
    col: Mapped[int] = mapped_column(Integer)
    quantity: Mapped[str] = mapped_column(String(128))
    value: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return (f"DeviceStat(id={self.id}, array_fk={self.array_fk}, row={self.row}, col={self.col}, "
                f"quantity={self.quantity!r}, value={self.value})")


class ArrayStat(Base):
    """One statistic of a whole array from one run, e.g. its yield, with its unit."""

    __tablename__ = "array_stats"
    __table_args__ = (Index(None, "array_fk", "quantity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_fk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step_fk: Mapped[int | None] = mapped_column(ForeignKey("run_steps.id", ondelete="CASCADE"))
    array_fk: Mapped[int] = mapped_column(ForeignKey("arrays.id", ondelete="RESTRICT"))
    quantity: Mapped[str] = mapped_column(String(128))
    value: Mapped[float | None] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(32))  # "" where none was given
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"ArrayStat(id={self.id}, array_fk={self.array_fk}, quantity={self.quantity!r}, value={self.value})"


class NoiseModelRecord(Base):
    """A fitted noise model of an array: its parameters as JSON, and the runs it was fitted from.

    A model outlives the run that fitted it: deleting that run only clears ``run_fk``
    and ``step_fk``, while ``source_runs`` keeps the ids as they were.
    """

    __tablename__ = "noise_models"
    __table_args__ = (Index(None, "array_fk", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    array_fk: Mapped[int] = mapped_column(ForeignKey("arrays.id", ondelete="RESTRICT"))
    run_fk: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    step_fk: Mapped[int | None] = mapped_column(ForeignKey("run_steps.id", ondelete="SET NULL"))
    # The version of the params layout, so that a reader can refuse what it does not understand.
    schema_version: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    source_runs: Mapped[list[int]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    crossbar_array: Mapped[CrossbarArray] = relationship()

    def __repr__(self) -> str:
        return (f"NoiseModelRecord(id={self.id}, array_fk={self.array_fk}, "
                f"schema_version={self.schema_version})")


class Checkpoint(Base):
    """A trained model: its weights (an opaque blob written by the training code), its configuration,
    its metrics, and the noise model it was trained against. It outlives the run that made it."""

    __tablename__ = "checkpoints"
    __table_args__ = (Index(None, "name", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_fk: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    step_fk: Mapped[int | None] = mapped_column(ForeignKey("run_steps.id", ondelete="SET NULL"), index=True)
    noise_model_fk: Mapped[int | None] = mapped_column(ForeignKey("noise_models.id", ondelete="SET NULL"),
                                                       index=True)
    name: Mapped[str] = mapped_column(String(128))
    model_kind: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    code_version: Mapped[str] = mapped_column(String(128))
    state: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"Checkpoint(id={self.id}, name={self.name!r}, model_kind={self.model_kind!r})"


class Deployment(Base):
    """A model programmed onto an array: the mapping (a blob written by ``hil.mapping``), the checkpoint
    and noise model it came from, and a summary of the programming."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_fk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step_fk: Mapped[int | None] = mapped_column(ForeignKey("run_steps.id", ondelete="CASCADE"), index=True)
    array_fk: Mapped[int] = mapped_column(ForeignKey("arrays.id", ondelete="RESTRICT"), index=True)
    checkpoint_fk: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="SET NULL"), index=True)
    noise_model_fk: Mapped[int | None] = mapped_column(ForeignKey("noise_models.id", ondelete="SET NULL"),
                                                       index=True)
    mapping: Mapped[bytes] = mapped_column(LargeBinary)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"Deployment(id={self.id}, checkpoint_fk={self.checkpoint_fk}, array_fk={self.array_fk})"


class DeploymentTile(Base):
    """One programmed tile: where it sits, what it holds, and how well it was programmed."""

    __tablename__ = "deployment_tiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_fk: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    tile: Mapped[int] = mapped_column(Integer)
    layer: Mapped[str] = mapped_column(String(255))
    mvm_group: Mapped[int] = mapped_column(Integer)
    row_min: Mapped[int] = mapped_column(Integer)
    row_max: Mapped[int] = mapped_column(Integer)
    col_min: Mapped[int] = mapped_column(Integer)
    col_max: Mapped[int] = mapped_column(Integer)
    inputs: Mapped[int] = mapped_column(Integer)
    outputs: Mapped[int] = mapped_column(Integer)
    stuck_devices: Mapped[int] = mapped_column(Integer)
    in_tolerance: Mapped[float] = mapped_column(Float)
    rms_error_s: Mapped[float] = mapped_column(Float)
    max_error_s: Mapped[float] = mapped_column(Float)
    weight_rms_error: Mapped[float] = mapped_column(Float)
    # last, as the migration that added it left it: the array the tile sits on (NULL: the deployment's)
    array: Mapped[str | None] = mapped_column(String(100))


class Finetune(Base):
    """A deployment fine-tuned on the array's own forward passes: which parameter groups moved, the
    history per epoch (array passes, MVMs, validation accuracy on the array), the fine-tuned checkpoint,
    and the per-column corrections it learnt (a torch state dict; they belong to the programmed cells)."""

    __tablename__ = "finetunes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_fk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step_fk: Mapped[int | None] = mapped_column(ForeignKey("run_steps.id", ondelete="CASCADE"), index=True)
    deployment_fk: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    base_checkpoint_fk: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="SET NULL"),
                                                           index=True)
    checkpoint_fk: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="SET NULL"), index=True)
    groups: Mapped[list[str]] = mapped_column(JSON)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    corrections: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Inference(Base):
    """A deployed model evaluated on the array at one time after programming."""

    __tablename__ = "inferences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_fk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step_fk: Mapped[int | None] = mapped_column(ForeignKey("run_steps.id", ondelete="CASCADE"), index=True)
    deployment_fk: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    time_s: Mapped[float] = mapped_column(Float)
    drift_compensation: Mapped[bool] = mapped_column(Boolean)
    samples: Mapped[int] = mapped_column(Integer)
    crossbar_accuracy: Mapped[float] = mapped_column(Float)
    digital_accuracy: Mapped[float] = mapped_column(Float)
    confusion: Mapped[list[list[int]]] = mapped_column(JSON)
    step_latency_s: Mapped[float] = mapped_column(Float)
    transactions_per_step: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # last, as the migrations that added them left them; rows from before it all streamed the test split
    split: Mapped[str] = mapped_column(String(8), server_default="test")    # "val" or "test"
    # the fine-tuning in effect (None: the deployment as programmed and trained offline)
    finetune_fk: Mapped[int | None] = mapped_column(ForeignKey("finetunes.id", ondelete="SET NULL"), index=True)
