"""A result the documentation reports, recomputed: docs/truth_recovery.md's rows for the default (rram) family.

The document gives, per parameter, the mean truth and fit over its chip seeds and the worst seed's error.
The first of those seeds is recomputed here through the script's own code path (scripts/truth_recovery.py,
``one_chip``, same calibration options, array size and seed): its error must not exceed the worst error the
document reports. The numbers, the array size and the seeds are read from the document, so regenerating it
moves this test with it, while a change to calibration or to the simulator that makes recovery worse than
documented fails here.
"""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "truth_recovery.md"
FAMILY = "rram"


def load_script():
    spec = importlib.util.spec_from_file_location("truth_recovery", ROOT / "scripts" / "truth_recovery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_setup(text: str) -> tuple[int, list[int]]:
    """Array size and chip seeds from the document's opening line, e.g. '(64x64 arrays, chip seeds 0, 1, 2;'."""
    m = re.search(r"\((\d+)x\1 arrays, chip seeds ([\d, ]+);", text)
    assert m, "docs/truth_recovery.md no longer states its array size and seeds where this test reads them"
    return int(m.group(1)), [int(s) for s in m.group(2).split(",")]


def documented_rows(text: str, family: str) -> dict[str, tuple[float, str]]:
    """parameter -> (worst error, its unit: '%', 'points' or '/V²') for ``family``'s rows of the first table."""
    table = text.split("## ")[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] != family or not cells[5]:
            continue
        value, unit = cells[5].split(" ", 1)
        rows[cells[1]] = (float(value), unit)
    return rows


# Half a unit of the last printed digit (the script prints "%.1f %", "%.2f points", "%.3f /V²"), and a
# hair for floating-point differences between machines.
ROUNDING = {"%": 0.05, "points": 0.005, "/V²": 0.0005}
EPS = 1e-9


def test_truth_recovery_of_the_first_documented_chip_is_within_the_documented_worst_error():
    text = DOC.read_text(encoding="utf-8")
    size, seeds = documented_setup(text)
    documented = documented_rows(text, FAMILY)
    assert len(documented) >= 8, f"too few {FAMILY} rows parsed from {DOC.name}: {sorted(documented)}"
    script = load_script()
    rows, _ = script.one_chip(FAMILY, size, seeds[0], script.calibration_options())
    recomputed = {name: (truth, fitted, kind) for name, _, truth, fitted, kind in rows if kind != "info"}
    assert set(recomputed) == set(documented)
    for name, (worst, unit) in documented.items():
        truth, fitted, kind = recomputed[name]
        # the error as the script computes it for its "worst error" column
        if kind == "rel":
            assert unit == "%", name
            error = 100 * abs(fitted / truth - 1)
        else:
            assert unit == ("points" if kind == "abs" else "/V²"), name
            error = abs(fitted - truth)
        assert error <= worst + ROUNDING[unit] + EPS, (
            f"{FAMILY} {name}: seed {seeds[0]} recovers {fitted:.4g} against the truth {truth:.4g}, an error of "
            f"{error:.4g} {unit}; {DOC.name} reports at most {worst:g} {unit} over seeds {seeds}")


def test_documented_rows_are_parsed():
    """The parser reads the document's format: one known row, by value."""
    sample = ("| family | parameter | unit | truth | fitted | worst error | within 15 % (faults: 1 point) |\n"
              "|---|---|---|---:|---:|---:|---|\n"
              "| rram | drift nu mean | 1 | 0.005011 | 0.005008 | 0.5 % | yes |\n"
              "| rram | stuck devices (any value) | % | 1.05 | 1.05 | 0.00 points | yes |\n"
              "| vcm | relaxation law chosen: shift | | | | | |\n"
              "\n## Predictive check\n| rram | read_noise | 0.039 | 0.99 – 1.0 | 3/3 |\n")
    assert documented_rows(sample, "rram") == {"drift nu mean": (0.5, "%"),
                                               "stuck devices (any value)": (0.0, "points")}
    assert documented_rows(sample, "vcm") == {}
    assert documented_setup("`x` (64x64 arrays, chip seeds 0, 1, 2; see") == (64, [0, 1, 2])
    with pytest.raises(AssertionError):
        documented_setup("no setup here")
