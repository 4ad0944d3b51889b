"""Loading protocol files: every kind of bad file gives one ProtocolError naming file, line and field."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from hil.protocol import FilePattern, LevelsPattern, ProgramStep, ReadStep
from hil.protocol_loader import (MAX_DEPTH, MAX_EXPANDED_NODES, MAX_FILE_BYTES, LoadedProtocol,
                                 ProtocolError, load_protocol)

DATA = Path(__file__).parent / "data" / "protocols"

VALID = """\
name: demo
array:
  rows: 4
  cols: 4
steps:
  - kind: program
    pattern:
      kind: levels
      levels: 4
      g_low_s: 5e-6
      g_high_s: 80e-6
  - kind: read
"""


@pytest.fixture
def protocols() -> Path:
    """The directory of example protocol files shipped with the tests."""
    return DATA


def write(tmp_path: Path, text: str | bytes, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def edited(old: str, new: str) -> str:
    assert old in VALID
    return VALID.replace(old, new, 1)


def fails(path: Path) -> ProtocolError:
    with pytest.raises(ProtocolError) as exc:
        load_protocol(path)
    error = exc.value
    text = str(error)
    assert "\n" not in text
    assert text.startswith(f"{path}:" if error.line is None else f"{path}:{error.line}: ")
    return error


def assert_error(error: ProtocolError, line: int | None, field: str | None, *fragments: str) -> None:
    assert (error.line, error.field) == (line, field), str(error)
    for fragment in fragments:
        assert fragment in error.message, str(error)
    expected_prefix = f"{error.path}" + (f":{line}" if line is not None else "") + (f": {field}" if field else "")
    assert str(error).startswith(expected_prefix + ": ")


# --------------------------------------------------------------------------- valid files

def test_example_protocol_loads_with_defaults(protocols):
    loaded = load_protocol(protocols / "levels_64x64.yaml")
    p = loaded.protocol
    assert (p.name, p.array.rows, p.array.cols, p.mock.seed) == ("levels-64x64", 64, 64, 7)
    program, read = p.steps
    assert isinstance(program, ProgramStep) and isinstance(read, ReadStep)
    assert (program.name, read.name) == ("program_0", "read_1")
    assert (program.tolerance, program.max_iterations, program.pulse_width_s) == (0.02, 20, 1e-6)
    assert (read.read_voltage_v, read.repeats) == (0.2, 1)
    assert isinstance(program.pattern, LevelsPattern) and program.pattern.layout == "random"
    targets = program.pattern.targets(p.array.rows, p.array.cols, np.random.default_rng(p.mock.seed),
                                      loaded.base_dir)
    assert targets.shape == (64, 64)
    np.testing.assert_allclose(np.unique(targets), np.linspace(5e-6, 80e-6, 8))


def test_loaded_protocol_keeps_exact_text_and_hash(protocols):
    path = protocols / "levels_64x64.yaml"
    loaded = load_protocol(str(path))
    assert isinstance(loaded, LoadedProtocol)
    assert loaded.text == path.read_text(encoding="utf-8")
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.path == path.resolve() and loaded.path.is_absolute()


def test_file_pattern_relative_to_protocol_directory(protocols, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    loaded = load_protocol(protocols / "from_csv.yaml")
    pattern = loaded.protocol.steps[0].pattern
    assert isinstance(pattern, FilePattern)
    g = pattern.targets(2, 3, np.random.default_rng(), loaded.base_dir)
    np.testing.assert_allclose(g, [[5e-6, 10e-6, 20e-6], [40e-6, 60e-6, 80e-6]])


def test_yaml_core_schema_scalars(tmp_path):
    text = edited("name: demo", "name: no\ndescription: 2024-01-01") + "    repeats: 0x10\n"
    p = load_protocol(write(tmp_path, text)).protocol
    assert p.name == "no" and p.description == "2024-01-01"  # strings, not False and a date
    assert p.steps[0].pattern.g_low_s == 5e-6  # a float, although YAML 1.1 reads 5e-6 as text
    assert p.steps[1].repeats == 16


def test_crlf_and_bom_are_accepted(tmp_path):
    data = b"\xef\xbb\xbf" + VALID.replace("\n", "\r\n").encode()
    loaded = load_protocol(write(tmp_path, data))
    assert loaded.protocol.name == "demo"
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- the file itself

def test_missing_file(tmp_path):
    path = tmp_path / "p.yaml"
    error = fails(path)
    assert str(error) == f"{path}: file not found"
    assert_error(fails(tmp_path / "not_a_dir" / "p.yaml"), None, None, "file not found")


def test_missing_file_keeps_the_path_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProtocolError) as exc:
        load_protocol("p.yaml")
    assert str(exc.value) == "p.yaml: file not found"
    assert (exc.value.path, exc.value.line, exc.value.field) == ("p.yaml", None, None)


def test_directory_instead_of_file(tmp_path):
    (tmp_path / "d.yaml").mkdir()
    assert_error(fails(tmp_path / "d.yaml"), None, None, "is a directory")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_file_by_permissions(tmp_path):
    path = write(tmp_path, VALID)
    path.chmod(0)
    try:
        assert_error(fails(path), None, None, "permission denied")
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("method", ["read_bytes", "open"])
def test_unreadable_file(tmp_path, monkeypatch, method):
    path = write(tmp_path, VALID)

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, method, refuse)
    assert_error(fails(path), None, None, "permission denied")


def test_other_read_failure(tmp_path, monkeypatch):
    path = write(tmp_path, VALID)
    monkeypatch.setattr(Path, "read_bytes", lambda self: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    assert_error(fails(path), None, None, "cannot read file", "Input/output error")


def test_not_a_regular_file(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(tmp_path / "fifo.yaml")
    assert_error(fails(tmp_path / "fifo.yaml"), None, None, "not a regular file")


def test_oversized_file_is_rejected_before_reading(tmp_path, monkeypatch):
    path = write(tmp_path, VALID + "#" * MAX_FILE_BYTES)

    def must_not_read(self):
        raise AssertionError("the file was read")

    monkeypatch.setattr(Path, "read_bytes", must_not_read)
    assert_error(fails(path), None, None, "larger than the 1 MiB limit", str(path.stat().st_size))


def test_file_of_exactly_the_limit_is_read(tmp_path):
    path = write(tmp_path, VALID + "#" * (MAX_FILE_BYTES - len(VALID)))
    assert load_protocol(path).protocol.name == "demo"


def test_not_utf8(tmp_path):
    data = edited("name: demo", "name: demo\ndescription: caf\xe9 au lait").encode("latin-1")
    assert_error(fails(write(tmp_path, data)), 2, None, "not valid UTF-8", "0xe9", "column 17")


def test_control_character(tmp_path):
    path = write(tmp_path, edited("name: demo", 'name: demo\n\ndescription: "a\x07b"'))
    assert_error(fails(path), 3, None, "unacceptable character #x0007")


# --------------------------------------------------------------------------- YAML structure

@pytest.mark.parametrize("old, new, line, fragment", [
    ("  cols: 4", "  cols: [4", 5, "YAML syntax error"),
    ("  rows: 4", "  rows: 4\n bad: 1", 4, "YAML syntax error"),
    ("      levels: 4", "\tlevels: 4", 9, "YAML syntax error"),
    ("      levels: 4", "      levels: *nowhere", 9, "undefined alias"),
])
def test_yaml_syntax_errors(tmp_path, old, new, line, fragment):
    assert_error(fails(write(tmp_path, edited(old, new))), line, None, fragment)


@pytest.mark.parametrize("tagged, line, shown", [
    ("  - !!python/object/apply:os.system ['echo hi']", 12, "!!python/object/apply:os.system"),
    ("  - !!python/name:os.system", 12, "!!python/name:os.system"),
    ("  - !!python/object:hil.protocol.ReadStep {kind: read}", 12, "!!python/object:hil.protocol.ReadStep"),
    ("  - !foo {kind: read}", 12, "!foo"),
    ("  - !!set {a, b}", 12, "!!set"),
    ("  - !!binary aGVsbG8=", 12, "!!binary"),
    ("  - !!timestamp 2024-01-01", 12, "!!timestamp"),
    ("  - !<tag:example.com,2024:step> {kind: read}", 12, "tag:example.com,2024:step"),
])
def test_yaml_tags_are_rejected(tmp_path, tagged, line, shown):
    error = fails(write(tmp_path, edited("  - kind: read", tagged)))
    assert_error(error, line, None, "YAML tags are not allowed", shown)


def test_tag_on_a_key_and_redefined_handle(tmp_path):
    error = fails(write(tmp_path, edited("  cols: 4", "  !!python/name:os.system cols: 4")))
    assert_error(error, 4, None, "YAML tags are not allowed")
    # Rebinding "!!" must not smuggle a foreign tag in under a core-looking name.
    error = fails(write(tmp_path, "%TAG !! tag:example.com,2024:\n---\n" + edited("name: demo", "name: !!str demo")))
    assert_error(error, 3, None, "YAML tags are not allowed", "tag:example.com,2024:str")


def test_core_tags_are_allowed_where_they_fit(tmp_path):
    text = edited("name: demo", "name: !!str demo").replace("rows: 4", "rows: !!int 4")
    text = text.replace("levels: 4", "levels: !!int '4'").replace("g_low_s: 5e-6", "g_low_s: !!float 5e-6")
    assert load_protocol(write(tmp_path, text)).protocol.steps[0].pattern.levels == 4
    error = fails(write(tmp_path, edited("array:", "array: !!str")))
    assert_error(error, 2, None, "!!str cannot be applied to a mapping")
    error = fails(write(tmp_path, edited("  rows: 4", "  rows: !!int four")))
    assert_error(error, 3, None, "cannot read 'four' as !!int")


def test_tags_never_construct_python_objects(tmp_path):
    """The payload works under an unsafe loader; under ours it must leave the sentinel alone."""
    payload = "  - !!python/object/apply:os.mkdir [{target!r}]\n"
    proof = tmp_path / "proof"
    yaml.unsafe_load(payload.format(target=str(proof)).strip()[2:])
    assert proof.is_dir()

    sentinel = tmp_path / "sentinel"
    text = VALID + payload.format(target=str(sentinel))
    assert_error(fails(write(tmp_path, text)), 13, None, "YAML tags are not allowed")
    assert not sentinel.exists()


def test_yaml_constructors_are_never_used(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a YAML constructor ran")

    monkeypatch.setattr(yaml.constructor.BaseConstructor, "construct_document", forbidden)
    monkeypatch.setattr(yaml.constructor.BaseConstructor, "construct_object", forbidden)
    assert load_protocol(write(tmp_path, VALID)).protocol.name == "demo"


def billion_laughs(levels: int = 9) -> str:
    lines = ['lol0: &lol0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_quickly(tmp_path):
    import time

    start = time.perf_counter()
    error = fails(write(tmp_path, billion_laughs()))
    assert time.perf_counter() - start < 2
    assert_error(error, 7, None, f"more than {MAX_EXPANDED_NODES} nodes", "aliases")


def test_alias_nesting_depth_is_bounded(tmp_path):
    inner = "[" * 40 + "1" + "]" * 40
    outer = "[" * 40 + "*deep" + "]" * 40
    error = fails(write(tmp_path, f"a: &deep {inner}\nb: {outer}\n"))
    assert_error(error, 2, None, f"deeper than {MAX_DEPTH} levels")


def test_textual_nesting_depth_is_bounded(tmp_path):
    # Deep enough to exhaust the interpreter's stack in a recursive composer.
    error = fails(write(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n"))
    assert_error(error, 1, None, f"deeper than {MAX_DEPTH} levels")


def test_recursive_aliases_are_refused(tmp_path):
    assert_error(fails(write(tmp_path, "a: &a\n  - 1\n  - *a\n")), 3, None, "alias *a", "contains it")
    assert_error(fails(write(tmp_path, "a: &a\n  <<: *a\n")), 2, None, "merge")


def test_small_anchor_and_alias_use_loads(tmp_path):
    text = """\
name: shared
array: {rows: 4, cols: 4}
steps:
  - &write
    kind: program
    tolerance: 0.05
    pattern: &window {kind: checkerboard, g_low_s: 5e-6, g_high_s: 80e-6}
  - *write
  - <<: *write
    name: again
    pattern: {<<: *window, kind: random}
  - {kind: read, name: last}
"""
    steps = load_protocol(write(tmp_path, text)).protocol.steps
    assert [s.name for s in steps] == ["program_0", "program_1", "again", "last"]
    assert steps[1].tolerance == steps[2].tolerance == 0.05
    assert steps[2].pattern.kind == "random" and steps[2].pattern.g_high_s == 80e-6


def test_errors_inside_aliases_point_at_the_anchored_text(tmp_path):
    text = edited("  - kind: read", "  - &r {kind: read, repeats: 0}\n  - *r")
    error = fails(write(tmp_path, text))
    assert_error(error, 12, "steps[1].repeats", "greater than or equal to 1", "(got 0)")
    assert [(p.line, p.field) for p in error.problems] == [(12, "steps[1].repeats"), (12, "steps[2].repeats")]


@pytest.mark.parametrize("old, new, line, key", [
    ("name: demo", "name: demo\nname: other", 2, "'name'"),
    ("  cols: 4", "  cols: 4\n  rows: 8", 5, "'rows'"),
    ("      g_high_s: 80e-6", "      g_high_s: 80e-6\n      levels: 8", 12, "'levels'"),
])
def test_duplicate_keys(tmp_path, old, new, line, key):
    error = fails(write(tmp_path, edited(old, new)))
    assert_error(error, line, None, f"duplicate key {key}", "first at line")


def test_duplicate_merge_key_and_complex_key(tmp_path):
    error = fails(write(tmp_path, "a: &a {x: 1}\nb:\n  <<: *a\n  <<: *a\n"))
    assert_error(error, 4, None, "duplicate key '<<'")
    error = fails(write(tmp_path, "name: demo\n? [a, b]\n: 1\n"))
    assert_error(error, 2, None, "keys must be plain values")


@pytest.mark.parametrize("key, shown", [("1", "1"), ("true", "True"), ("~", "None")])
def test_keys_must_be_text(tmp_path, key, shown):
    error = fails(write(tmp_path, edited("  cols: 4", f"  cols: 4\n  {key}: 3")))
    assert_error(error, 5, None, f"keys must be text, found {shown}")


def test_duplicate_anchor(tmp_path):
    error = fails(write(tmp_path, "a: &x 1\nb: &x 2\n"))
    assert_error(error, 2, None, "duplicate anchor &x", "first at line 1")


@pytest.mark.parametrize("text, line, fragment", [
    ("- name: demo\n- name: other\n", 1, "found a list"),
    ("just text\n", 1, "found a single value ('just text')"),
    ("---\n", 2, "found an empty document"),
    ("~\n", 1, "found an empty document"),
])
def test_top_level_must_be_a_mapping(tmp_path, text, line, fragment):
    assert_error(fails(write(tmp_path, text)), line, None, "top level must be a mapping", fragment)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(tmp_path, text):
    assert_error(fails(write(tmp_path, text)), None, None, "file is empty")


def test_multiple_documents(tmp_path):
    assert_error(fails(write(tmp_path, VALID + "---\nname: second\n")), 13, None, "more than one YAML document")
    assert load_protocol(write(tmp_path, "---\n" + VALID + "...\n")).protocol.name == "demo"


# --------------------------------------------------------------------------- schema errors

@pytest.mark.parametrize("old, new, line, field, fragments", [
    ("  rows: 4", "  rows: many", 3, "array.rows", ["Input should be a valid integer", "(got 'many')"]),
    ("  rows: 4", "  rows: 4.5", 3, "array.rows", ["valid integer", "(got 4.5)"]),
    ("  rows: 4", "  rows: '4'", 3, "array.rows", ["valid integer", "(got '4')"]),
    ("array:", "array: 4\nnot_array:", 2, "array", ["valid dictionary"]),
    ("  - kind: read", "  - kind: read\n    tolerence: 0.1", 13, "steps[1].tolerence", ["unknown key 'tolerence'"]),
    ("  - kind: program", "  - kind: program\n    tolerence: 0.1", 7, "steps[0].tolerence",
     ["unknown key 'tolerence'", "did you mean 'tolerance'?"]),
    ("name: demo", "name: demo\nsteeps: []", 2, "steeps", ["unknown key 'steeps'", "'steps'"]),
    ("  rows: 4\n", "", 3, "array.rows", ["required field is missing"]),
    ("      levels: 4\n", "", 8, "steps[0].pattern.levels", ["required field is missing"]),
    ("  - kind: program", "  - kind: program\n    tolerance: 3", 7, "steps[0].tolerance",
     ["Input should be less than or equal to 0.5 (got 3)"]),
    ("      levels: 4", "      levels: 1", 9, "steps[0].pattern.levels", ["greater than or equal to 2", "(got 1)"]),
    ("      g_high_s: 80e-6", "      g_high_s: 2e-6", 11, "steps[0].pattern.g_high_s",
     ["must exceed g_low_s", "(got 2e-06)"]),
    ("  - kind: read", "  - kind: raed", 12, "steps[1].kind", ["unknown kind 'raed'", "'program', 'read'"]),
    ("      kind: levels", "      kind: stripes", 8, "steps[0].pattern.kind", ["unknown kind 'stripes'", "'file'"]),
    ("  - kind: read", "  - repeats: 2", 12, "steps[1]", ["missing key 'kind'", "'program', 'read'"]),
    ("name: demo", "name: my protocol", 1, "name", ["should match pattern", "(got 'my protocol')"]),
    ("  - kind: read", "  - kind: read\n    name: program_0", 13, "steps[1].name", ["already used by steps[0]"]),
    ("  - kind: program", "  - kind: program\n    max_iterations: .inf", 7, "steps[0].max_iterations",
     ["valid integer"]),
])
def test_schema_errors_have_line_and_field(tmp_path, old, new, line, field, fragments):
    assert_error(fails(write(tmp_path, edited(old, new))), line, field, *fragments)


def test_missing_top_level_field(tmp_path):
    text = VALID.split("steps:")[0]
    assert_error(fails(write(tmp_path, text)), 1, "steps", "required field is missing")


def test_several_problems_are_all_kept_first_in_file_order(tmp_path):
    text = edited("      levels: 4", "      levels: 1").replace("  rows: 4", "  rows: -1")
    error = fails(write(tmp_path, text))
    assert_error(error, 3, "array.rows", "(got -1)", "(and 1 more problem)")
    assert [(p.line, p.field) for p in error.problems] == [(3, "array.rows"), (9, "steps[0].pattern.levels")]
    assert all("\n" not in str(p) and "more problem" not in str(p) for p in error.problems)


# --------------------------------------------------------------------------- safety limits

@pytest.mark.parametrize("old, new, line, field, limit", [
    ("  - kind: program", "  - kind: program\n    max_set_voltage_v: 5.0", 7, "steps[0].max_set_voltage_v",
     "limits.max_write_voltage_v = 2.5 V"),
    ("  - kind: read", "  - kind: read\n    read_voltage_v: 1.0", 13, "steps[1].read_voltage_v",
     "limits.max_read_voltage_v = 0.3 V"),
    ("  - kind: program", "  - kind: program\n    pulse_width_s: 1e-9", 7, "steps[0].pulse_width_s",
     "limits.min_pulse_width_s"),
])
def test_values_beyond_the_safety_limits(tmp_path, old, new, line, field, limit):
    error = fails(write(tmp_path, edited(old, new)))
    assert_error(error, line, field, "exceeds" if "max" in limit else "below", limit, "(got ")


def test_protocol_limits_are_honoured_and_reported_together(tmp_path):
    text = edited("array:", "limits:\n  max_write_voltage_v: 1.5\narray:")
    error = fails(write(tmp_path, text))
    # The defaults break the tighter limit; with no such key in the file, the step's line is given.
    assert_error(error, 8, "steps[0].max_set_voltage_v", "limits.max_write_voltage_v = 1.5 V", "(got 2.0)")
    assert [p.field for p in error.problems] == ["steps[0].max_set_voltage_v", "steps[0].max_reset_voltage_v"]


def test_invalid_limits_block(tmp_path):
    text = edited("array:", "limits:\n  max_write_voltage_v: 50\narray:")
    assert_error(fails(write(tmp_path, text)), 3, "limits.max_write_voltage_v", "less than or equal to 10")


# --------------------------------------------------------------------------- file patterns

FILE_STEP = """\
  - kind: program
    pattern:
      kind: file
      path: {path}
      scale: 1.0e-6
"""


def file_protocol(tmp_path: Path, path: str) -> Path:
    return write(tmp_path, edited("  - kind: read\n", "  - kind: read\n" + FILE_STEP.format(path=path)))


def test_file_pattern_loads(tmp_path):
    np.save(tmp_path / "g.npy", np.full((4, 4), 20.0))
    loaded = load_protocol(file_protocol(tmp_path, "g.npy"))
    assert loaded.protocol.steps[2].name == "program_2"


@pytest.mark.parametrize("setup, fragment", [
    (lambda d: None, "file not found"),
    (lambda d: np.save(d / "g.npy", np.ones((4, 5))), "has shape (4, 5), expected (4, 4)"),
    (lambda d: np.save(d / "g.npy", -np.ones((4, 4))), "not positive"),
    (lambda d: (d / "g.npy").write_bytes(b"\x93NUMPY garbage"), "cannot be parsed as .npy"),
    (lambda d: (d / "g.npy").mkdir(), "not a regular file"),
])
def test_bad_pattern_file_is_reported_at_the_path_line(tmp_path, setup, fragment):
    setup(tmp_path)
    error = fails(file_protocol(tmp_path, "g.npy"))
    assert_error(error, 16, "steps[2].pattern.path", str(tmp_path / "g.npy"), fragment)


def test_unreadable_pattern_file(tmp_path, monkeypatch):
    np.save(tmp_path / "g.npy", np.ones((4, 4)))
    real_open = Path.open

    def guarded_open(self, *args, **kwargs):
        if self.name == "g.npy":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", guarded_open)
    assert_error(fails(file_protocol(tmp_path, "g.npy")), 16, "steps[2].pattern.path", "permission denied")


def test_wrong_pattern_file_extension(tmp_path):
    error = fails(file_protocol(tmp_path, "g.txt"))
    assert_error(error, 16, "steps[2].pattern.path", "must name a .npy or .csv file")


# --------------------------------------------------------------------------- the error type

def test_protocol_error_format():
    assert str(ProtocolError("p.yaml", 3, "steps[1].name", "bad")) == "p.yaml:3: steps[1].name: bad"
    assert str(ProtocolError("p.yaml", None, None, "file not found")) == "p.yaml: file not found"
    assert str(ProtocolError(Path("a/p.yaml"), 2, None, "x\ny")) == "a/p.yaml:2: x y"
    assert isinstance(ProtocolError("p", None, None, "m"), Exception)


def test_mutated_protocols_only_ever_raise_protocol_error(tmp_path):
    """Random edits of a valid file: each either loads or fails with a one-line ProtocolError."""
    chars = list(":-[]{}&*!|>'\"#%@` \n\t0123456789abc.,<?")
    generator = random.Random(1234)
    path = tmp_path / "p.yaml"
    for _ in range(300):
        text = list(VALID)
        for _ in range(generator.randint(1, 4)):
            at = generator.randrange(len(text))
            action = generator.random()
            if action < 0.4:
                text[at] = generator.choice(chars)
            elif action < 0.7:
                text.insert(at, generator.choice(chars))
            else:
                del text[at]
        path.write_text("".join(text), encoding="utf-8")
        try:
            load_protocol(path)
        except ProtocolError as error:
            assert "\n" not in str(error) and not error.message.startswith("unexpected")
