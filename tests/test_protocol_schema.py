"""Protocol schema: pattern targets and the validation rules, without YAML."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from drivers.limits import SafetyLimits
from hil.protocol import (CheckerboardPattern, FilePattern, LevelsPattern, ProgramStep, Protocol,
                          RandomPattern, ReadStep)

LOW, HIGH = 5e-6, 80e-6


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def levels(n: int = 8, layout: str = "random") -> LevelsPattern:
    return LevelsPattern(levels=n, g_low_s=LOW, g_high_s=HIGH, layout=layout)


def protocol(*steps: dict, **extra) -> dict:
    return {"name": "p", "array": {"rows": 4, "cols": 4}, "steps": list(steps), **extra}


def program(**fields) -> dict:
    return {"kind": "program", "pattern": {"kind": "random", "g_low_s": LOW, "g_high_s": HIGH}, **fields}


def error_locs(exc: pytest.ExceptionInfo) -> list[tuple]:
    return [tuple(e["loc"]) for e in exc.value.errors()]


# --------------------------------------------------------------------------- levels

@pytest.mark.parametrize("layout", ["random", "rows", "columns", "blocks"])
def test_levels_evenly_spaced_and_equally_used(layout):
    g = levels(8, layout).targets(64, 64, rng(), Path("."))
    assert g.shape == (64, 64) and g.dtype == np.float64
    values, counts = np.unique(g, return_counts=True)
    np.testing.assert_allclose(values, np.linspace(LOW, HIGH, 8))
    np.testing.assert_allclose(np.diff(values), (HIGH - LOW) / 7)
    assert set(counts) == {64 * 64 // 8}


def test_levels_random_counts_differ_by_at_most_one_on_uneven_arrays():
    g = levels(7, "random").targets(5, 9, rng(), Path("."))
    _, counts = np.unique(g, return_counts=True)
    assert len(counts) == 7 and counts.max() - counts.min() <= 1


def test_levels_random_layout_is_seeded():
    a = levels().targets(16, 16, rng(1), Path("."))
    assert np.array_equal(a, levels().targets(16, 16, rng(1), Path(".")))
    assert not np.array_equal(a, levels().targets(16, 16, rng(2), Path(".")))


def test_levels_rows_and_columns_are_staircases():
    index = levels(4, "rows").level_indices(8, 3, rng())
    assert index[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (index == index[:, :1]).all()
    index = levels(4, "columns").level_indices(3, 8, rng())
    assert index[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (index == index[:1, :]).all()


def test_levels_blocks_are_contiguous_rectangles():
    index = levels(8, "blocks").level_indices(64, 64, rng())
    for level in range(8):
        r, c = np.nonzero(index == level)
        box = (r.max() - r.min() + 1) * (c.max() - c.min() + 1)
        assert box == len(r) == 64 * 64 // 8


# --------------------------------------------------------------------------- checkerboard, random

def test_checkerboard_parity():
    g = CheckerboardPattern(g_low_s=LOW, g_high_s=HIGH).targets(5, 6, rng(), Path("."))
    r, c = np.indices((5, 6))
    assert np.array_equal(g, np.where((r + c) % 2 == 0, LOW, HIGH))


def test_random_within_bounds_and_seeded():
    pattern = RandomPattern(g_low_s=LOW, g_high_s=HIGH)
    g = pattern.targets(32, 16, rng(3), Path("."))
    assert g.shape == (32, 16)
    assert g.min() >= LOW and g.max() <= HIGH
    assert g.std() > (HIGH - LOW) / 5  # spread over the window, not a constant
    assert np.array_equal(g, pattern.targets(32, 16, rng(3), Path(".")))


@pytest.mark.parametrize("cls", [LevelsPattern, CheckerboardPattern, RandomPattern])
@pytest.mark.parametrize("low, high", [(HIGH, LOW), (LOW, LOW), (0.0, HIGH), (LOW, 2.0)])
def test_window_must_be_ordered_and_physical(cls, low, high):
    extra = {"levels": 4} if cls is LevelsPattern else {}
    with pytest.raises(ValidationError):
        cls(g_low_s=low, g_high_s=high, **extra)


def test_window_order_error_is_at_g_high_s():
    with pytest.raises(ValidationError) as exc:
        Protocol.model_validate(protocol(program(pattern={"kind": "checkerboard", "g_low_s": HIGH, "g_high_s": LOW})))
    assert error_locs(exc) == [("steps", 0, "program", "pattern", "checkerboard", "g_high_s")]


# --------------------------------------------------------------------------- file

def test_file_npy_round_trip_with_scale(tmp_path):
    data = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "t.npy", data)
    g = FilePattern(path="t.npy", scale=1e-6).targets(3, 4, rng(), tmp_path)
    assert g.dtype == np.float64
    np.testing.assert_allclose(g, data * 1e-6)


def test_file_csv_round_trip_with_scale_and_absolute_path(tmp_path):
    data = np.array([[1.5, 2.0, 3.0], [4.0, 5.0, 6.25]])
    np.savetxt(tmp_path / "t.csv", data, delimiter=",")
    pattern = FilePattern(path=str(tmp_path / "t.csv"), scale=2e-6)
    np.testing.assert_allclose(pattern.targets(2, 3, rng(), Path("/nonexistent")), data * 2e-6)


def test_file_integer_npy_is_accepted(tmp_path):
    np.save(tmp_path / "t.npy", np.full((2, 2), 7, dtype=np.int16))
    assert FilePattern(path="t.npy").targets(2, 2, rng(), tmp_path).tolist() == [[7.0, 7.0], [7.0, 7.0]]


@pytest.mark.parametrize("name", ["t.npy", "t.csv"])
def test_file_wrong_shape_names_file_and_shapes(tmp_path, name):
    data = np.ones((2, 3))
    if name.endswith(".npy"):
        np.save(tmp_path / name, data)
    else:
        np.savetxt(tmp_path / name, data, delimiter=",")
    with pytest.raises(ValueError) as exc:
        FilePattern(path=name).targets(3, 2, rng(), tmp_path)
    message = str(exc.value)
    assert str(tmp_path / name) in message
    assert "(2, 3)" in message and "(3, 2)" in message


@pytest.mark.parametrize("data, what", [
    (np.array([[1.0, np.nan], [1.0, 1.0]]), "not finite"),
    (np.array([[1.0, 1.0], [0.0, 1.0]]), "not positive"),
    (np.array([[1.0, 1.0], [1.0, -3.0]]), "first at [1, 1]"),
    (np.array([[1.0, 1.0], [1.0, 1e308]]), "not finite"),  # finite in the file, inf once scaled
])
def test_file_values_must_be_finite_and_positive(tmp_path, data, what):
    np.save(tmp_path / "t.npy", data)
    with pytest.raises(ValueError, match="not (finite|positive)") as exc:
        FilePattern(path="t.npy", scale=10.0).targets(2, 2, rng(), tmp_path)
    assert what in str(exc.value) and "t.npy" in str(exc.value)


def test_file_missing_and_unparsable(tmp_path):
    with pytest.raises(ValueError, match="nope.csv: file not found"):
        FilePattern(path="nope.csv").targets(2, 2, rng(), tmp_path)
    (tmp_path / "bad.csv").write_text("1,2\nthree,4\n")
    with pytest.raises(ValueError, match="bad.csv: cannot be parsed as CSV"):
        FilePattern(path="bad.csv").targets(2, 2, rng(), tmp_path)
    (tmp_path / "text.npy").write_text("1,2\n3,4\n")
    with pytest.raises(ValueError, match="text.npy: cannot be parsed as .npy"):
        FilePattern(path="text.npy").targets(2, 2, rng(), tmp_path)
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(ValueError, match="dir.npy: is not a regular file"):
        FilePattern(path="dir.npy").targets(2, 2, rng(), tmp_path)


def test_file_refuses_pickles_and_archives(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([[object(), 1], [2, 3]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy: cannot be parsed"):
        FilePattern(path="obj.npy").targets(2, 2, rng(), tmp_path)
    # np.load would open a zip archive whatever its name.
    np.savez(tmp_path / "archive.npz", np.ones((2, 2)))
    (tmp_path / "archive.npz").rename(tmp_path / "archive.npy")
    with pytest.raises(ValueError, match="archive.npy: cannot be parsed"):
        FilePattern(path="archive.npy").targets(2, 2, rng(), tmp_path)
    assert zipfile.is_zipfile(tmp_path / "archive.npy")


def test_file_path_must_be_npy_or_csv():
    with pytest.raises(ValidationError, match="must name a .npy or .csv file"):
        FilePattern(path="targets.txt")
    assert FilePattern(path="T.CSV").scale == 1.0


# --------------------------------------------------------------------------- steps and protocol

def test_defaults_and_step_names():
    p = Protocol.model_validate(protocol(program(), {"kind": "read", "name": "final"}, {"kind": "read"}))
    assert [s.name for s in p.steps] == ["program_0", "final", "read_2"]
    step = p.steps[0]
    assert (step.tolerance, step.max_iterations, step.read_voltage_v) == (0.02, 20, 0.2)
    assert (step.start_set_voltage_v, step.max_set_voltage_v) == (0.9, 2.0)
    assert (step.start_reset_voltage_v, step.max_reset_voltage_v) == (0.9, 2.0)
    assert (step.voltage_step_v, step.pulse_width_s) == (0.05, 1e-6)
    assert p.limits == SafetyLimits() and p.mock.seed is None and p.description == ""


def test_models_are_frozen_and_forbid_extras():
    p = Protocol.model_validate(protocol({"kind": "read"}))
    with pytest.raises(ValidationError):
        p.steps[0].repeats = 3
    with pytest.raises(ValidationError, match="Extra inputs"):
        ReadStep(repeats=2, repeat=3)


def test_step_names_must_be_unique():
    with pytest.raises(ValidationError) as exc:
        Protocol.model_validate(protocol({"kind": "read", "name": "read_1"}, {"kind": "read"}))
    assert error_locs(exc) == [("steps", 1, "name")]


@pytest.mark.parametrize("fields, loc", [
    ({"name": "has space"}, ("name",)),
    ({"name": "x" * 101}, ("name",)),
    ({"array": {"rows": 0, "cols": 4}}, ("array", "rows")),
    ({"array": {"rows": 4, "cols": 4097}}, ("array", "cols")),
    ({"array": {"rows": "4", "cols": 4}}, ("array", "rows")),  # no string-to-number coercion
    ({"mock": {"seed": -1}}, ("mock", "seed")),
    ({"steps": []}, ("steps",)),
])
def test_protocol_field_ranges(fields, loc):
    with pytest.raises(ValidationError) as exc:
        Protocol.model_validate({**protocol({"kind": "read"}), **fields})
    assert error_locs(exc) == [loc]


@pytest.mark.parametrize("fields, field", [
    ({"tolerance": 0}, "tolerance"),
    ({"tolerance": 0.6}, "tolerance"),
    ({"max_iterations": 0}, "max_iterations"),
    ({"max_iterations": 1001}, "max_iterations"),
    ({"voltage_step_v": 1.5}, "voltage_step_v"),
    ({"pulse_width_s": 0}, "pulse_width_s"),
    ({"start_set_voltage_v": -1}, "start_set_voltage_v"),
    ({"start_set_voltage_v": 1.5, "max_set_voltage_v": 1.2}, "start_set_voltage_v"),
    ({"start_reset_voltage_v": 1.5, "max_reset_voltage_v": 1.2}, "start_reset_voltage_v"),
    ({"tolerance": float("inf")}, "tolerance"),
])
def test_program_step_ranges(fields, field):
    with pytest.raises(ValidationError) as exc:
        Protocol.model_validate(protocol(program(**fields)))
    assert error_locs(exc) == [("steps", 0, "program", field)]


def test_read_step_ranges():
    for repeats in (0, 10001):
        with pytest.raises(ValidationError):
            ReadStep(repeats=repeats)
    assert ReadStep(repeats=10000).read_voltage_v == 0.2


# --------------------------------------------------------------------------- safety limits

@pytest.mark.parametrize("step, field", [
    (program(max_set_voltage_v=5.0), "max_set_voltage_v"),
    (program(start_set_voltage_v=2.6, max_set_voltage_v=3.0), "start_set_voltage_v"),
    (program(max_reset_voltage_v=2.51), "max_reset_voltage_v"),
    (program(read_voltage_v=0.5), "read_voltage_v"),
    (program(pulse_width_s=5e-9), "pulse_width_s"),
    (program(pulse_width_s=2e-3), "pulse_width_s"),
    ({"kind": "read", "read_voltage_v": 1.0}, "read_voltage_v"),
])
def test_safety_limit_errors_point_at_the_field(step, field):
    with pytest.raises(ValidationError) as exc:
        Protocol.model_validate(protocol({"kind": "read"}, step))
    errors = exc.value.errors()
    assert [tuple(e["loc"]) for e in errors][0] == ("steps", 1, field)
    assert errors[0]["type"] == "safety_limit" and "limits." in errors[0]["msg"]


def test_safety_limit_errors_are_reported_together():
    with pytest.raises(ValidationError) as exc:
        Protocol.model_validate(protocol(
            program(max_set_voltage_v=5.0, max_reset_voltage_v=4.0, start_reset_voltage_v=3.0),
            {"kind": "read", "read_voltage_v": 1.0}))
    assert error_locs(exc) == [("steps", 0, "max_set_voltage_v"), ("steps", 0, "start_reset_voltage_v"),
                               ("steps", 0, "max_reset_voltage_v"), ("steps", 1, "read_voltage_v")]


def test_protocol_limits_tighten_the_check():
    strict = {"max_read_voltage_v": 0.15, "max_write_voltage_v": 1.5,
              "min_pulse_width_s": 1e-5, "max_pulse_width_s": 1e-4}
    with pytest.raises(ValidationError) as exc:
        Protocol.model_validate(protocol(program(), limits=strict))
    assert sorted(error_locs(exc)) == sorted(("steps", 0, f) for f in (
        "read_voltage_v", "max_set_voltage_v", "max_reset_voltage_v", "pulse_width_s"))
    ok = program(read_voltage_v=0.1, max_set_voltage_v=1.5, max_reset_voltage_v=1.2, pulse_width_s=1e-5)
    assert Protocol.model_validate(protocol(ok, limits=strict)).limits.max_write_voltage_v == 1.5


def test_values_at_the_limit_are_allowed():
    step = program(read_voltage_v=0.3, start_set_voltage_v=2.5, max_set_voltage_v=2.5, pulse_width_s=1e-3)
    assert Protocol.model_validate(protocol(step)).steps[0].max_set_voltage_v == 2.5


def test_program_step_can_be_built_in_python():
    step = ProgramStep(pattern=levels())
    p = Protocol(name="py", array={"rows": 2, "cols": 2}, steps=[step])
    assert p.steps[0].name == "program_0" and step.name is None


def _deploy_and_infer(deploy: dict | None = None, infer: dict | None = None) -> dict:
    return protocol({"kind": "train", "name": "t", "task": {"name": "digits"},
                     "model": {"kind": "s4d", "d_model": 4, "d_state": 2, "n_layers": 1}},
                    {"kind": "deploy", "name": "d", "checkpoint": {"from_step": "t"},
                     "noise_model": {"latest_for": "a"}, **(deploy or {})},
                    {"kind": "infer", "deployment": "d", **(infer or {})})


def test_the_mvm_drive_voltage_is_the_deployments_and_within_the_read_limit():
    """Verify reads and MVM inputs are different voltages with different names: the deploy step takes
    both, both under the read limit; an infer step that still sets one is told where it went."""
    ok = Protocol.model_validate(_deploy_and_infer({"read_voltage_v": 0.2, "mvm_voltage_v": 0.1}))
    assert (ok.steps[1].read_voltage_v, ok.steps[1].mvm_voltage_v) == (0.2, 0.1)
    with pytest.raises(ValidationError) as exc:
        Protocol.model_validate(_deploy_and_infer({"mvm_voltage_v": 0.5}))
    assert error_locs(exc) == [("steps", 1, "mvm_voltage_v")] and exc.value.errors()[0]["type"] == "safety_limit"
    with pytest.raises(ValidationError) as exc:
        Protocol.model_validate(_deploy_and_infer(infer={"read_voltage_v": 0.1}))
    assert "mvm_voltage_v" in str(exc.value)
