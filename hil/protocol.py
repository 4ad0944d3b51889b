"""Schema of an experiment protocol: the array, its safety envelope and the steps run on it.

A protocol is plain data, usually read from YAML by :func:`hil.protocol_loader.load_protocol`.
All quantities are SI and carry their unit in the field name (``_v``, ``_s`` for seconds or
siemens as the field says, ``_a``). Every model forbids unknown keys, so a misspelt option is
an error rather than a silently ignored setting, and every voltage and pulse width of every
step is checked against the protocol's :class:`~drivers.limits.SafetyLimits` before anything
runs. Numbers are validated strictly (``"0.1"`` is not a number, ``64.0`` is not an integer):
a protocol that only works because of a coercion is a protocol nobody has really checked.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from calibration.options import CalibrationOptions, WriteVerifyOptions
from hil.nn.zoo import ModelConfig
from drivers.device_model import DeviceConfig
from drivers.families import AnyDeviceConfig
from drivers.limits import ABSOLUTE_MIN_VOLTAGE_V, SafetyLimits

__all__ = [
    "AnalogTraining", "ArraySpec", "CalibrateStep", "CheckpointRef", "DeployStep", "FinetuneStep", "InferStep",
    "MaintainStep", "MeasurementSource", "NoiseModelRef", "SourceFile", "TaskSpec", "TrainStep", "CheckerboardPattern", "FilePattern", "LevelsPattern", "MockSpec", "Pattern",
    "ProgramStep", "Protocol", "RandomPattern", "ReadStep", "Step", "MAX_ARRAY_DIM",
]

MAX_ARRAY_DIM = 4096
# Seeds and ids are stored in 64-bit signed database columns; a larger one could be run but never recorded.
MAX_SEED = 2**63 - 1
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"

# Protocol and step names end up in file names, database keys and log lines, so they are kept
# to characters that need no quoting anywhere.
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=NAME_PATTERN)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
# An array name is typed on command lines and appears in file names; instrument ids also use ':'.
ARRAY_NAME_PATTERN = r"^[A-Za-z0-9_.:+-]+$"
ArrayName = Annotated[str, Field(min_length=1, max_length=100, pattern=ARRAY_NAME_PATTERN)]
# Free text on one line (a wafer id, a person's name).
Label = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]
# A step's voltages are also bounded above by the protocol's limits; this floor keeps a unit slip (1e-300)
# from passing as a tiny but valid setting (write-verify widths: calibration.options.WriteVerifyOptions).
Volts = Annotated[float, Field(ge=ABSOLUTE_MIN_VOLTAGE_V)]


class _Model(BaseModel):
    # inf passes every "> 0" check and nan slips through every "value > limit" test, so
    # neither may stand for a voltage, a width or a conductance.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _raise_at(title: str, problems: list[tuple[tuple, str, str, object]]) -> None:
    """Raise one ValidationError carrying every problem at its own field.

    A plain ValueError from a model validator would be reported at the model as a whole;
    building the ValidationError here keeps each problem at the field the user has to edit
    (pydantic prefixes the location of the enclosing model).
    """
    if problems:
        raise ValidationError.from_exception_data(title, [
            {"type": PydanticCustomError(kind, message), "loc": loc, "input": value}
            for loc, kind, message, value in problems
        ])


# --------------------------------------------------------------------------- patterns

class _WindowPattern(_Model):
    g_low_s: float = Field(gt=0, le=1, description="lowest target conductance (S)")
    g_high_s: float = Field(gt=0, le=1, description="highest target conductance (S)")

    @model_validator(mode="after")
    def _ordered_window(self):
        if self.g_low_s >= self.g_high_s:
            _raise_at(type(self).__name__, [(("g_high_s",), "window_order",
                                             f"must exceed g_low_s ({self.g_low_s})", self.g_high_s)])
        return self


class LevelsPattern(_WindowPattern):
    """``levels`` conductances evenly spaced over [g_low_s, g_high_s], laid out on the array.

    Layouts: ``random`` gives each cell a level, every level used equally often (to within one
    cell); ``rows`` and ``columns`` are staircases, index i of n carrying level
    ``i * levels // n``; ``blocks`` tiles the array with a grid of contiguous rectangles, one
    level each.
    """

    kind: Literal["levels"] = "levels"
    levels: int = Field(ge=2, le=256)
    layout: Literal["random", "rows", "columns", "blocks"] = "random"

    def values(self) -> np.ndarray:
        return np.linspace(self.g_low_s, self.g_high_s, self.levels)

    def level_indices(self, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
        """The (rows, cols) integer level index of every cell."""
        n = self.levels
        if self.layout == "random":
            # A shuffled repeating sequence rather than independent draws, so the counts per level
            # are equal to within one cell even on a small array.
            return rng.permutation(np.arange(rows * cols) % n).reshape(rows, cols)
        r = np.arange(rows)[:, None]
        c = np.arange(cols)[None, :]
        if self.layout == "rows":
            return np.broadcast_to(r * n // rows, (rows, cols)).copy()
        if self.layout == "columns":
            return np.broadcast_to(c * n // cols, (rows, cols)).copy()
        # An exact factorisation keeps every block the same size; the larger factor goes along
        # the longer side so the blocks stay roughly square.
        small = max(d for d in range(1, int(np.sqrt(n)) + 1) if n % d == 0)
        large = n // small
        block_rows, block_cols = (small, large) if cols >= rows else (large, small)
        return (r * block_rows // rows) * block_cols + (c * block_cols // cols)

    def targets(self, rows: int, cols: int, rng: np.random.Generator, base_dir: Path) -> np.ndarray:
        return self.values()[self.level_indices(rows, cols, rng)]


class CheckerboardPattern(_WindowPattern):
    """g_low_s where (row + column) is even, g_high_s where it is odd."""

    kind: Literal["checkerboard"] = "checkerboard"

    def targets(self, rows: int, cols: int, rng: np.random.Generator, base_dir: Path) -> np.ndarray:
        parity = (np.arange(rows)[:, None] + np.arange(cols)[None, :]) % 2
        return np.where(parity == 0, self.g_low_s, self.g_high_s).astype(np.float64)


class RandomPattern(_WindowPattern):
    """Every cell drawn uniformly from [g_low_s, g_high_s]."""

    kind: Literal["random"] = "random"

    def targets(self, rows: int, cols: int, rng: np.random.Generator, base_dir: Path) -> np.ndarray:
        return rng.uniform(self.g_low_s, self.g_high_s, size=(rows, cols))


# A CSV cell rarely needs more than this many characters; the bound keeps a wrong path (a log,
# a data dump) from being parsed in full before the shape check can reject it.
_CSV_BYTES_PER_VALUE = 64
_FILE_SLACK_BYTES = 1 << 20


class _TooLarge(Exception):
    pass


class _NotAFile(Exception):
    pass


class _Refused(Exception):
    """A pattern file refused for a reason stated in full (not a parse error)."""


def _check_npy_header(handle, size: int, shape: tuple[int, int]) -> None:
    """Check a .npy file's header before its data are read: a 128-byte file may claim a shape of
    100000x100000, and reading it would allocate what the header claims. Leaves ``handle`` at the
    start, for :func:`numpy.lib.format.read_array`."""
    fmt = np.lib.format
    version = fmt.read_magic(handle)
    read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
    if read_header is None:
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    claimed, _, dtype = read_header(handle, max_header_size=10_000)
    if dtype.hasobject:
        raise ValueError("holds Python objects, which only unpickling could read")
    if dtype.kind not in "iuf":
        raise _Refused(f"holds {dtype} values, expected real numbers")
    if tuple(claimed) != shape:
        raise _Refused(f"has shape {tuple(claimed)}, expected {shape} to match the array (from its header; "
                       f"the data were not read)")
    if handle.tell() + shape[0] * shape[1] * dtype.itemsize > size:
        raise _Refused(f"is truncated: its header claims {shape[0]}x{shape[1]} {dtype} values but the file holds "
                       f"only {size} bytes")
    handle.seek(0)


class FilePattern(_Model):
    """Targets read from a ``.npy`` or ``.csv`` file; the values times ``scale`` are siemens.

    A relative ``path`` is taken relative to the directory of the protocol file, so a protocol
    and its data can be moved together.
    """

    kind: Literal["file"] = "file"
    path: str = Field(min_length=1)
    scale: float = Field(1.0, gt=0, description="factor turning the file's values into siemens")

    @field_validator("path")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if Path(value).suffix.lower() not in (".npy", ".csv"):
            raise PydanticCustomError("file_format", "must name a .npy or .csv file")
        return value

    def resolve(self, base_dir: Path) -> Path:
        path = Path(self.path)
        return path if path.is_absolute() else Path(base_dir) / path

    @staticmethod
    def _read(path: Path, is_npy: bool, shape: tuple[int, int]) -> np.ndarray:
        cells = shape[0] * shape[1]
        size = path.stat().st_size
        if not path.is_file():
            raise _NotAFile()
        if size > cells * (16 if is_npy else _CSV_BYTES_PER_VALUE) + _FILE_SLACK_BYTES:
            raise _TooLarge(size)
        if is_npy:
            with path.open("rb") as handle:
                _check_npy_header(handle, size, shape)
                # read_array rather than np.load: np.load would also accept a .npz archive or a
                # pickle under a .npy name.
                return np.lib.format.read_array(handle, allow_pickle=False)
        with warnings.catch_warnings():
            # An empty file only warns; the shape check reports it properly.
            warnings.simplefilter("ignore")
            return np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2, encoding="utf-8")

    def targets(self, rows: int, cols: int, rng: np.random.Generator, base_dir: Path) -> np.ndarray:
        path = self.resolve(base_dir)

        def bad(what: str) -> ValueError:
            return ValueError(f"pattern file {path}: {what}")

        is_npy = path.suffix.lower() == ".npy"
        try:
            data = self._read(path, is_npy, (rows, cols))
        except _TooLarge as exc:
            raise bad(f"is {exc.args[0]} bytes, far too large for a {rows}x{cols} array") from None
        except _NotAFile:
            raise bad("is not a regular file") from None
        except _Refused as exc:
            raise bad(str(exc)) from None
        except FileNotFoundError:
            raise bad("file not found") from None
        except PermissionError:
            raise bad("permission denied") from None
        except IsADirectoryError:
            raise bad("is a directory") from None
        except OSError as exc:
            raise bad(f"cannot be read ({exc.strerror or exc})") from None
        except ValueError as exc:
            detail = " ".join(str(exc).split())
            raise bad(f"cannot be parsed as {'.npy' if is_npy else 'CSV'} ({detail})") from None

        if data.dtype.kind not in "iuf":
            raise bad(f"holds {data.dtype} values, expected real numbers")
        if data.shape != (rows, cols):
            raise bad(f"has shape {data.shape}, expected ({rows}, {cols}) to match the array")
        with np.errstate(over="ignore", invalid="ignore"):
            g = data.astype(np.float64) * self.scale
        not_finite = ~np.isfinite(g)
        if not_finite.any():
            r, c = np.argwhere(not_finite)[0]
            raise bad(f"{int(not_finite.sum())} value(s) are not finite after scaling, first at [{r}, {c}]")
        not_positive = g <= 0
        if not_positive.any():
            r, c = np.argwhere(not_positive)[0]
            raise bad(f"{int(not_positive.sum())} value(s) are not positive after scaling, "
                      f"first at [{r}, {c}] = {float(g[r, c])!r}")
        return g


Pattern = Annotated[Union[LevelsPattern, CheckerboardPattern, RandomPattern, FilePattern],
                    Field(discriminator="kind")]


# --------------------------------------------------------------------------- steps

class ProgramStep(_Model, WriteVerifyOptions):
    """Write-verify programming of a target pattern.

    A cell counts as programmed once its read-back conductance (read at ``read_voltage_v``) is
    within ``tolerance`` times the target span, max(target) - min(target), of its target. The
    write-verify settings (iterations, SET/RESET amplitudes, pulse width) are those of
    :class:`calibration.options.WriteVerifyOptions`.
    """

    kind: Literal["program"] = "program"
    name: Name | None = None
    pattern: Pattern
    tolerance: float = Field(0.02, gt=0, le=0.5, description="fraction of the target span")
    read_voltage_v: Volts = Field(0.2)


class ReadStep(_Model):
    """Read the whole array ``repeats`` times at ``read_voltage_v``."""

    kind: Literal["read"] = "read"
    name: Name | None = None
    read_voltage_v: Volts = Field(0.2)
    repeats: int = Field(1, ge=1, le=10000)


_SOURCE_SUFFIXES = (".h5", ".hdf5", ".csv", ".npy")
_NPY_KINDS = ("reads", "drift", "after_reset", "after_set")


class SourceFile(_Model):
    """One file of measurements taken elsewhere; a .npy file says nothing of what it holds, so its ``kind``
    is given here (a drift series with its ``times_s`` after programming)."""

    path: str = Field(min_length=1)
    kind: Literal["reads", "drift", "after_reset", "after_set"] | None = Field(
        None, description=".npy only: repeated reads (the default), a drift series, or window reads")
    times_s: list[Annotated[float, Field(gt=0)]] | None = Field(None, min_length=3, max_length=100_000,
                                                                description="a .npy drift series' times (s)")

    @field_validator("path")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if Path(value).suffix.lower() not in _SOURCE_SUFFIXES:
            raise PydanticCustomError("file_format", "must name an arc2control HDF5 file (.h5, .hdf5), a .csv or "
                                                     "a .npy file")
        return value

    @model_validator(mode="after")
    def _kind_fits(self):
        npy = Path(self.path).suffix.lower() == ".npy"
        if self.kind is not None and not npy:
            raise ValueError("kind is given to .npy files only: the other formats say what they hold")
        if (self.kind == "drift") != (self.times_s is not None):
            raise ValueError("a .npy drift series (kind: drift) needs times_s, and only it takes them")
        return self


class MeasurementSource(_Model):
    """Measurements taken elsewhere, instead of measuring the array: arc2control HDF5 data files, CSV or
    .npy files (README, "Measurements from files"). Relative paths are taken from the protocol's directory."""

    file: str | None = Field(None, min_length=1, description="one file")
    files: list[SourceFile] | None = Field(None, min_length=1, max_length=64,
                                           description="several files (a path, or {path, kind, times_s})")
    read_voltage_v: Volts | None = Field(None, description="recorded with conductances given without one")
    retention_start_s: float | None = Field(None, gt=0, le=1e9, description="time after programming of the first "
                                            "read of an arc2control retention run (default: one read interval)")

    @field_validator("files", mode="before")
    @classmethod
    def _paths(cls, value):
        # a plain path stands for {path: ...}
        return [{"path": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _one_way(self):
        _exactly_one_of(self, ("file", "files"))
        if self.file is not None:
            SourceFile(path=self.file)
        return self

    def entries(self) -> list[SourceFile]:
        return [SourceFile(path=self.file)] if self.file is not None else list(self.files)

    def read(self, base_dir: Path, shape: tuple[int, int] | None):
        """The measurements of the files (:func:`calibration.measurement_files.read_measurements`), for an
        array of ``shape``; MeasurementFileError (a ValueError) names the file and the place of a problem."""
        from calibration.measurement_files import read_measurements

        entries = self.entries()
        drift_times = [e.times_s for e in entries if e.times_s is not None]
        if len(drift_times) > 1:
            raise ValueError("only one .npy drift series can be given")
        files = [(p if p.is_absolute() else Path(base_dir) / p, e.kind) for e, p in
                 ((e, Path(e.path)) for e in entries)]
        return read_measurements(files, shape=shape, times_s=drift_times[0] if drift_times else None,
                                 read_voltage_v=self.read_voltage_v, retention_start_s=self.retention_start_s)


# What a calibrate step with a source does not take: it measures nothing.
_MEASURING = ("read_voltage_v", "window", "pulse_response", "programming", "read_noise", "drift", "periphery", "check")


class CalibrateStep(CalibrationOptions):
    """Calibrate the array and fit its noise model; each part (window, pulse_response, programming,
    read_noise, drift, periphery) takes its own options and is skipped when set to null. With ``source``
    the measurements come from files instead (nothing is measured) and go through the same fits."""

    kind: Literal["calibrate"] = "calibrate"
    name: Name | None = None
    fit: bool = Field(True, description="fit and store a noise model")
    report: bool = Field(True, description="write a Markdown report with figures")
    source: MeasurementSource | None = Field(None, description="take the measurements from files")

    @model_validator(mode="after")
    def _source_alone(self):
        if self.source is not None:
            given = [k for k in _MEASURING if k in self.model_fields_set]
            if given:
                _raise_at("CalibrateStep", [((given[0],), "source_given", "the measurements come from source: "
                                             "options of measuring do not apply (remove them)", getattr(self, given[0]))])
        return self


def _exactly_one_of(model, names: tuple[str, ...]):
    """``model`` if exactly one of the fields ``names`` is set, else a ValueError naming them."""
    given = [k for k in names if getattr(model, k) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(names)} (got {', '.join(given) or 'none'})")
    return model


class NoiseModelRef(_Model):
    """Which stored noise model: by ``id``, the newest for an array (``latest_for``), or the one a
    ``calibrate`` step earlier in this protocol fits (``from_step``)."""

    id: int | None = Field(None, ge=1)
    latest_for: str | None = Field(None, min_length=1)
    from_step: Name | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        return _exactly_one_of(self, ("id", "latest_for", "from_step"))


class AnalogTraining(_Model):
    """Noise- and quantisation-aware training for the crossbar."""

    weights: Literal["float", "kbit", "ternary"] = "float"
    bits: int = Field(8, ge=2, le=16)
    recurrent_weights: Literal["float", "kbit"] = "float"
    recurrent_bits: int = Field(8, ge=2, le=16)
    noise_model: NoiseModelRef | None = None
    noise_scale: float = Field(1.0, ge=0, le=10)
    drift_time_s: float | None = Field(None, ge=0)
    dac_bits: int | None = Field(None, ge=2, le=24)
    adc_bits: int | None = Field(None, ge=2, le=24)


class TaskSpec(_Model):
    name: Literal["digits", "digits_permuted", "mnist1d", "period", "cue"]
    seed: Seed = 0


class CheckpointRef(_Model):
    """Which stored model: by ``id``, the newest stored under a ``name``, or the one a ``train`` step
    earlier in this protocol stores (``from_step``)."""

    id: int | None = Field(None, ge=1)
    name: str | None = Field(None, min_length=1)
    from_step: Name | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        return _exactly_one_of(self, ("id", "name", "from_step"))


class TrainStep(_Model):
    """Train a sequence model on a task, optionally aware of an array's calibrated noise, and store a checkpoint."""

    kind: Literal["train"] = "train"
    name: Name | None = None
    task: TaskSpec
    model: ModelConfig
    epochs: int = Field(30, ge=1, le=10000)
    lr: float = Field(1e-2, gt=0, le=1)
    batch_size: int = Field(64, ge=1, le=65536)
    weight_decay: float = Field(0.01, ge=0, le=1)
    seed: Seed = 0
    analog: AnalogTraining | None = None
    evaluate_under: NoiseModelRef | None = Field(None, description="noise model for the evaluation; default: the "
                                                                   "training one")
    noise_draws: int = Field(5, ge=0, le=1000, description="simulated chips in the noisy evaluation")
    checkpoint: Name | None = Field(None, description="name the checkpoint is stored under; default protocol.step")
    init: CheckpointRef | None = Field(None, description="start from this checkpoint's weights (same model and "
                                                           "task), e.g. noise-aware retraining of a plain model")
    warmup_epochs: int = Field(1, ge=0, le=10000, description="epochs of linear learning-rate warm-up")
    threads: int = Field(1, ge=1, le=256, description="CPU threads for training: the same seed gives the same "
                         "weights only at the same thread count (threads add partial sums in another order)")


class DeployStep(_Model, WriteVerifyOptions):
    """Map a trained model onto the array and program it with write-verify.

    Every weight matrix becomes differential conductance pairs in the noise model's weight window,
    tiled and placed around the array's stuck devices (from its latest calibration). Cells count as
    programmed within ``tolerance_s`` (default: the tolerance the noise model was measured with), with the
    write-verify settings of :class:`calibration.options.WriteVerifyOptions`.
    """

    kind: Literal["deploy"] = "deploy"
    name: Name | None = None
    checkpoint: CheckpointRef
    noise_model: NoiseModelRef | None = Field(None, description="default: the one the checkpoint was trained against")
    tolerance_s: float | None = Field(None, gt=0, le=1e-3)
    tiles_per_mvm: int = Field(8, ge=1, le=4096)
    max_shared_rows: int = Field(24, ge=0, le=4096)
    read_voltage_v: Volts = Field(0.2, description="verify reads of write-verify")
    mvm_voltage_v: Volts = Field(0.2, description="input amplitude of the deployed model's MVMs: the largest input "
                                 "drives its row at this voltage (at most the backend's read limit)")
    arrays: list[ArrayName] = Field(default_factory=list, description="further arrays (the protocol's arrays, by "
                                    "name) the model may be spread over, after the main one")


class InferStep(_Model):
    """Run a deployed model's validation or test split on the array (every weight product a crossbar MVM)
    next to its digital evaluation on the same samples; optionally again after waiting, with and without
    drift compensation."""

    kind: Literal["infer"] = "infer"
    name: Name | None = None
    deployment: Name = Field(description="a deploy step earlier in this protocol")
    split: Literal["val", "test"] = Field("val", description="the task split streamed: val while choosing settings "
                                          "by what the array does, test once to report")
    samples: int | None = Field(None, ge=1, description="the first N samples of the split; default all")
    batch_size: int = Field(512, ge=1, le=65536)
    times_s: list[float] = Field(default_factory=lambda: [0.0], min_length=1,
                                 description="evaluate at these times after programming (the instrument's clock)")
    drift_compensation: bool = Field(True, description="also evaluate with drift compensation at t > 0")
    programmings: int = Field(1, ge=1, le=100, description="evaluate the deployment as programmed, then erase and "
                              "program it again this many times in all, each evaluated at every time: the spread "
                              "of the gap from one programming to the next")

    @model_validator(mode="before")
    @classmethod
    def _voltage_moved(cls, data):
        # The drive amplitude belongs to the deployment (its executor's ADC ranges are set for it), not to
        # each evaluation; a protocol written before says where it went instead of "extra input".
        if isinstance(data, dict) and "read_voltage_v" in data:
            _raise_at("InferStep", [(("read_voltage_v",), "moved", "the MVM input amplitude is the deploy step's "
                                     "mvm_voltage_v; remove it here", data["read_voltage_v"])])
        return data

    @model_validator(mode="after")
    def _times_increasing(self):
        if any(t < 0 for t in self.times_s) or any(b <= a for a, b in zip(self.times_s, self.times_s[1:])):
            _raise_at("InferStep", [(("times_s",), "time_order", "must be non-negative and increasing",
                                     self.times_s)])
        return self


class FinetuneCurve(_Model):
    """Where to measure a fine-tuning's learning curve: the accuracy of ``split`` (or its first ``samples``)
    on the array before training and when the training passes reach each share of the training split in
    ``at`` (0.05: as many sequence passes as 5 % of the training split). Measuring passes are not counted
    as training passes; with ``split: test`` the curve is a report, never a basis for choosing settings."""

    split: Literal["val", "test"] = "val"
    at: list[Annotated[float, Field(gt=0, le=1000)]] = Field(min_length=1)
    samples: int | None = Field(None, ge=1)
    batch_size: int = Field(512, ge=1, le=65536)


class FinetuneStep(_Model):
    """Fine-tune a deployed model on the array's own forward passes (:mod:`hil.finetune`): training
    sequences streamed with every weight product on the array, the loss on the measured outputs, the
    gradient through the digital model, only digital parameters moved (no cell is rewritten). After each
    epoch the validation split (or its first ``val_samples``) runs on the array, and the best epoch's
    parameters are kept. Later infer steps on the deployment run the fine-tuned model."""

    kind: Literal["finetune"] = "finetune"
    name: Name | None = None
    deployment: Name = Field(description="a deploy step earlier in this protocol")
    groups: list[Literal["bias", "norm", "columns", "readout"]] = Field(
        default_factory=lambda: ["bias", "norm", "columns"], min_length=1,
        description="what moves: biases, LayerNorms, a gain and offset per crossbar output, and the readout "
                    "layer (taken off the array and computed digitally)")
    target: Literal["labels", "digital"] = Field("labels", description="cross-entropy against the task's labels, or "
                                                 "the distance from the digital model's logits (no labels used)")
    train_fraction: float = Field(0.1, gt=0, le=1, description="the share of the training split used (drawn with "
                                  "the seed): one array pass per sequence and epoch")
    epochs: int = Field(5, ge=1, le=1000)
    lr: float = Field(0.01, gt=0, le=10)
    batch_size: int = Field(32, ge=1, le=65536)
    val_samples: int | None = Field(None, ge=1, description="validation sequences streamed after each epoch; "
                                    "default all")
    seed: Seed = 0
    checkpoint: Name | None = Field(None, description="name of the fine-tuned checkpoint; default "
                                    "<protocol>.<step>")
    select: Literal["best_val", "last"] = Field(
        "best_val", description="keep the epoch best on validation (streamed on the array after each epoch), or "
                                "the last one (no validation passes: every array pass trains)")
    curve: FinetuneCurve | None = Field(None, description="accuracy on a split, on the array, as the training "
                                        "passes reach given shares of the training split")
    progressive: bool = Field(False, description="program the layers one at a time: train everything after each "
                              "layer on its measured outputs, then write the next layer's cells with its new "
                              "weights (rewrites every layer but the first; `groups`, `target` and `select` do "
                              "not apply, `epochs` is per layer)")

    @model_validator(mode="after")
    def _progressive_alone(self):
        if self.progressive and (self.curve is not None or self.target != "labels"):
            raise ValueError("a progressive fine-tuning takes neither a curve nor the digital target: run a "
                             "plain finetune step after it for those")
        return self

    @model_validator(mode="after")
    def _curve_within_training(self):
        if self.curve is not None and max(self.curve.at) > self.train_fraction * self.epochs + 1e-9:
            raise ValueError(f"curve.at goes to {max(self.curve.at):g} of the training split, but train_fraction x "
                             f"epochs gives only {self.train_fraction * self.epochs:g}")
        return self


class MaintainEvaluation(_Model):
    """Accuracy on the array during maintenance: a split (or its first ``samples``) every ``every_s``."""

    split: Literal["val", "test"] = "val"
    samples: int | None = Field(None, ge=1)
    every_s: float = Field(7 * 86400.0, gt=0, description="default weekly (and always at the end)")
    batch_size: int = Field(512, ge=1, le=65536)


class MaintainStep(_Model):
    """Keep a deployment accurate over time (:mod:`hil.maintenance`): every ``every_s`` for ``days`` (the
    instrument's clock: virtual on the mock, real on a bench) probe each MVM group with random inputs
    against what it should compute; where a group's relative error has grown by more than ``bound`` since it
    was last written, re-compensate drift, then write its cells again if that was not enough. Every action is
    recorded with its cost."""

    kind: Literal["maintain"] = "maintain"
    name: Name | None = None
    deployment: Name = Field(description="a deploy step earlier in this protocol")
    days: float = Field(30.0, gt=0, le=3650)
    every_s: float = Field(86400.0, gt=0, description="time between checks")
    bound: float = Field(0.05, gt=0, le=10, description="how far a group's relative rms error may grow beyond its "
                         "error when it was last written before it calls for action")
    probes: int = Field(16, ge=1, le=4096, description="random input vectors per check and layer")
    actions: list[Literal["compensate", "rewrite"]] = Field(default_factory=lambda: ["compensate", "rewrite"],
                                                            min_length=1, description="tried in this order")
    evaluate: MaintainEvaluation | None = Field(default_factory=MaintainEvaluation)
    seed: Seed = 0


Step = Annotated[Union[ProgramStep, ReadStep, CalibrateStep, TrainStep, DeployStep, InferStep, FinetuneStep,
                       MaintainStep],
                 Field(discriminator="kind")]


# --------------------------------------------------------------------------- protocol

class ArraySpec(_Model):
    """The array: its size, and what to file its history under.

    Without a ``name`` the array is filed under the id the instrument reports (the mock's is derived
    from its chip seed); a name given here or with ``--array`` is what ``hil.history --array`` takes.
    """

    rows: int = Field(ge=1, le=MAX_ARRAY_DIM)
    cols: int = Field(ge=1, le=MAX_ARRAY_DIM)
    name: ArrayName | None = Field(None, description="the array's name in the history, e.g. chip-A")
    wafer: Label | None = Field(None, description="wafer the die was cut from")
    die: Label | None = Field(None, description="die on the wafer, e.g. D3 or x12y07")


class MockSpec(_Model):
    """Settings that only the software crossbar reads; a real instrument ignores them."""

    seed: Seed | None = Field(None, description="which simulated chip: its hidden device parameters and id")
    device: AnyDeviceConfig = Field(default_factory=DeviceConfig,
                                    description="the device family and its parameters; no family: rram")


class ExtraArraySpec(_Model):
    """Another array of the same run, for models larger than one array (a deploy step's ``arrays``). It is
    reached through ``backend`` (default: the run's) at ``resource``; on the mock, ``mock`` says which chip.
    Its devices are taken to be of the same kind as the main array's: deploy maps with one noise model."""

    name: ArrayName = Field(description="its name in the history and in a deploy step's arrays")
    rows: int = Field(ge=1, le=MAX_ARRAY_DIM)
    cols: int = Field(ge=1, le=MAX_ARRAY_DIM)
    backend: str | None = Field(None, min_length=1, description="default: the run's backend")
    resource: str | None = Field(None, min_length=1, description="where its instrument is (bench backends)")
    mock: MockSpec | None = Field(None, description="default: the run's mock section, chip seed + its position")


class BenchSpec(_Model):
    """How to reach a bench instrument; the mock ignores it. ``--resource`` overrides ``resource``."""

    resource: str | None = Field(None, min_length=1, description="port, URL or VISA resource string")
    timeout_s: float = Field(2.0, gt=0, le=600, description="how long to wait for one reply")
    retries: int = Field(4, ge=0, le=20, description="resends of a command whose reply is late, lost or garbled")


class Protocol(_Model):
    """A complete experiment: where it runs, within which limits, and what it does."""

    name: Name
    description: str = ""
    operator: Label | None = Field(None, description="who runs it (--operator overrides)")
    notes: str | None = Field(None, max_length=10_000, description="anything worth keeping with the run")
    array: ArraySpec
    limits: SafetyLimits = Field(default_factory=SafetyLimits)
    mock: MockSpec = Field(default_factory=MockSpec)
    bench: BenchSpec = Field(default_factory=BenchSpec)
    backend_options: dict[str, Any] = Field(default_factory=dict, description="passed as they are to the backend's "
                                            "factory, which validates them (a plug-in's own settings)")
    arrays: list[ExtraArraySpec] = Field(default_factory=list, description="further arrays of this run, by name")
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _named_and_within_limits(self):
        for index, step in enumerate(self.steps):
            if step.name is None:
                # The list itself is mutable even though the models are frozen; a copy keeps
                # each step immutable.
                self.steps[index] = step.model_copy(update={"name": f"{step.kind}_{index}"})

        problems: list[tuple[tuple, str, str, object]] = []
        first_use: dict[str, int] = {}
        for index, step in enumerate(self.steps):
            if step.name in first_use:
                problems.append((("steps", index, "name"), "duplicate_name",
                                 f"step name is already used by steps[{first_use[step.name]}]", step.name))
            else:
                first_use[step.name] = index
            problems.extend((("steps", index, *(field if isinstance(field, tuple) else (field,))), kind, message, value)
                            for field, kind, message, value in limit_violations(step, self.limits))
            for where, ref, accepts, message in _step_references(step):
                source = next((s for s in self.steps[:index] if s.name == ref), None)
                if source is None or not accepts(source):
                    problems.append((("steps", index, *where), "step_reference", message, ref))
        names = [a.name for a in self.arrays]
        for index, name in enumerate(names):
            if name in names[:index] or name == self.array.name:
                problems.append((("arrays", index, "name"), "duplicate_name", "array name is used twice", name))
        for index, step in enumerate(self.steps):
            if isinstance(step, DeployStep):
                for k, name in enumerate(step.arrays):
                    if name not in names:
                        problems.append((("steps", index, "arrays", k), "array_reference",
                                         f"names no array of the protocol's arrays ({', '.join(names) or 'none'})",
                                         name))
        # What a finetune step learnt belongs to the cells as programmed: reprogramming would undo it.
        finetuned: set[str] = set()
        for index, step in enumerate(self.steps):
            if isinstance(step, FinetuneStep):
                finetuned.add(step.deployment)
            elif isinstance(step, InferStep) and step.deployment in finetuned and step.programmings > 1:
                problems.append((("steps", index, "programmings"), "finetuned",
                                 f"{step.deployment} is fine-tuned on its cells as programmed by an earlier finetune "
                                 "step; programming it again would undo that: use 1", step.programmings))
        _raise_at("Protocol", problems)
        return self


_FITS_NOISE_MODEL = (lambda s: isinstance(s, CalibrateStep) and s.fit,
                     "must name an earlier calibrate step that fits a noise model")


def _step_references(step):
    """(field path, referenced step name, test the referenced step must pass, message) for every
    reference ``step`` makes to an earlier step of the protocol."""
    noise_refs = []
    if isinstance(step, TrainStep):
        noise_refs = [(("analog", "noise_model"), step.analog.noise_model if step.analog else None),
                      (("evaluate_under",), step.evaluate_under)]
        if step.init is not None and step.init.from_step is not None:
            yield (("init", "from_step"), step.init.from_step, lambda s: isinstance(s, TrainStep),
                   "must name an earlier train step")
    elif isinstance(step, DeployStep):
        noise_refs = [(("noise_model",), step.noise_model)]
        if step.checkpoint.from_step is not None:
            yield (("checkpoint", "from_step"), step.checkpoint.from_step, lambda s: isinstance(s, TrainStep),
                   "must name an earlier train step")
    elif isinstance(step, (InferStep, FinetuneStep, MaintainStep)):
        yield (("deployment",), step.deployment, lambda s: isinstance(s, DeployStep), "must name an earlier deploy step")
    for where, ref in noise_refs:
        if ref is not None and ref.from_step is not None:
            yield ((*where, "from_step"), ref.from_step, *_FITS_NOISE_MODEL)


def limit_violations(step, limits: SafetyLimits, whose: str = "the safety limit limits."):
    """(field, error type, message, value) for every setting of ``step`` outside ``limits``; ``whose``
    names the limits in the message (the protocol's own, or a backend's)."""
    if isinstance(step, TrainStep) or (isinstance(step, CalibrateStep) and step.source is not None):
        return      # touches no instrument (a calibration from files measures nothing)
    for field in ("read_voltage_v", "mvm_voltage_v"):
        value = getattr(step, field, None)
        if value is not None and value > limits.max_read_voltage_v:
            yield (field, "safety_limit", f"exceeds {whose}max_read_voltage_v = {limits.max_read_voltage_v} V", value)
    if isinstance(step, CalibrateStep):
        for loc, value in step.write_voltages():
            if value > limits.max_write_voltage_v:
                yield (loc, "safety_limit",
                       f"exceeds {whose}max_write_voltage_v = {limits.max_write_voltage_v} V", value)
        for loc, value in step.pulse_widths():
            if not limits.min_pulse_width_s <= value <= limits.max_pulse_width_s:
                yield (loc, "safety_limit", f"outside {whose}min_pulse_width_s..max_pulse_width_s "
                                            f"[{limits.min_pulse_width_s}, {limits.max_pulse_width_s}] s", value)
        return
    if not isinstance(step, (ProgramStep, DeployStep)):
        return
    for field in ("start_set_voltage_v", "max_set_voltage_v", "start_reset_voltage_v", "max_reset_voltage_v"):
        value = getattr(step, field)
        if value > limits.max_write_voltage_v:
            yield (field, "safety_limit",
                   f"exceeds {whose}max_write_voltage_v = {limits.max_write_voltage_v} V",
                   value)
    if step.pulse_width_s < limits.min_pulse_width_s:
        yield ("pulse_width_s", "safety_limit",
               f"is below {whose}min_pulse_width_s = {limits.min_pulse_width_s} s",
               step.pulse_width_s)
    elif step.pulse_width_s > limits.max_pulse_width_s:
        yield ("pulse_width_s", "safety_limit",
               f"exceeds {whose}max_pulse_width_s = {limits.max_pulse_width_s} s",
               step.pulse_width_s)
