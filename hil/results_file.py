"""Results files of the long experiment scripts (scripts/*.py): a JSON file of finished runs that an
interrupted sweep, or several sweeps in parallel processes, add to; and the generated sections of
docs/results.md, which a script rewrites between its own markers.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any


def load(path: Path, empty: Any = None) -> Any:
    """The file's content, or ``empty`` (a fresh dict by default) when there is no file yet."""
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return {} if empty is None else empty


def save(path: Path, content: Any) -> None:
    """Write through a temporary file and a rename, so a run killed mid-write leaves the old file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def store(path: Path, key: str, result: Any) -> dict:
    """Add one run under ``key``, holding a lock: another process may be adding its own meanwhile.
    Returns the file's content after the addition."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = load(path)
        stored[key] = result
        save(path, stored)
    return stored


def splice(document: Path, marker: str, text: str) -> None:
    """Replace what stands between ``<!-- marker: start -->`` and ``<!-- marker: end -->`` in ``document``
    (a ValueError naming the marker if either is missing, so nothing is appended in the wrong place)."""
    start, end = f"<!-- {marker}: start -->", f"<!-- {marker}: end -->"
    content = document.read_text(encoding="utf-8")
    i, j = content.find(start), content.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{document}: no '{start}' ... '{end}' section to replace")
    document.write_text(content[:i + len(start)] + "\n" + text.strip("\n") + "\n" + content[j:], encoding="utf-8")


def publish(lines: list[str], out: Path, document: Path, marker: str, *, splice_it: bool = True) -> None:
    """A script's section: ``lines`` (a title, a blank line, then the section) written to ``out``, the
    section spliced into ``document`` between its markers (unless ``splice_it`` is false), and all printed."""
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if splice_it:
        splice(document, marker, "\n".join(lines[2:]))
    print("\n".join(lines))


__all__ = ["load", "publish", "save", "splice", "store"]
