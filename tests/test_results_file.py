"""The results file of the experiment scripts: parallel writers lose nothing, a killed write leaves the old
file, and a generated section replaces only its own span of docs/results.md."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from hil import results_file


def _writer(path: str, prefix: str, n: int) -> None:
    for i in range(n):
        results_file.store(Path(path), f"{prefix}/{i}", {"value": i})


def test_parallel_writers_keep_every_run(tmp_path: Path):
    path = tmp_path / "runs.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), p, 25)) for p in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    stored = results_file.load(path)
    assert sorted(stored) == sorted(f"{p}/{i}" for p in "abc" for i in range(25))


def test_load_of_a_missing_file_gives_the_empty_value(tmp_path: Path):
    assert results_file.load(tmp_path / "none.json") == {}
    assert results_file.load(tmp_path / "none.json", {"runs": {}}) == {"runs": {}}


def test_splice_replaces_only_its_section(tmp_path: Path):
    doc = tmp_path / "results.md"
    doc.write_text("# R\n\nhand text\n<!-- a: start -->\nold a\n<!-- a: end -->\nmiddle\n"
                   "<!-- b: start -->\nold b\n<!-- b: end -->\ntail\n", encoding="utf-8")
    results_file.splice(doc, "b", "new b\n\nsecond line\n")
    results_file.splice(doc, "b", "newer b")
    assert doc.read_text(encoding="utf-8") == ("# R\n\nhand text\n<!-- a: start -->\nold a\n<!-- a: end -->\nmiddle\n"
                                               "<!-- b: start -->\nnewer b\n<!-- b: end -->\ntail\n")


def test_splice_without_markers_names_them_and_changes_nothing(tmp_path: Path):
    doc = tmp_path / "results.md"
    doc.write_text("no markers here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="<!-- c: start -->"):
        results_file.splice(doc, "c", "text")
    assert doc.read_text(encoding="utf-8") == "no markers here\n"


def test_every_generated_section_of_the_results_has_its_markers():
    """The scripts that rewrite docs/results.md find their sections there."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "results.md").read_text(encoding="utf-8")
    for marker in ("train_tables", "memory_sweep", "families_loop", "families_loop_s4d", "finetune_recovery",
                   "maintenance_30days"):
        assert text.count(f"<!-- {marker}: start -->") == 1 and text.count(f"<!-- {marker}: end -->") == 1
