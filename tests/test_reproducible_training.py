"""A training step gives the same weights from the same seed whatever thread count the process had."""

import torch
from sqlalchemy import select

import hil.run
from db import Database
from db.models import Checkpoint

PROTOCOL = """name: reproducible
array: {rows: 8, cols: 8}
steps:
  - kind: train
    name: plain
    task: {name: period}
    model: {kind: mgrade, d_model: 16, n_layers: 1, max_delay: 4, taps: 2}
    epochs: 1
    seed: 3
"""


def _trained_state(tmp_path, name: str, process_threads: int) -> tuple[bytes, dict]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(PROTOCOL, encoding="utf-8")
    url = f"sqlite:///{tmp_path / name}.db"
    before = torch.get_num_threads()
    torch.set_num_threads(process_threads)
    try:
        assert hil.run.main([str(path), "--db", url]) == 0
        assert torch.get_num_threads() == process_threads          # the step gives the process its count back
    finally:
        torch.set_num_threads(before)
    with Database.open(url) as db, db.session() as s:
        checkpoint = s.scalars(select(Checkpoint)).one()
        return checkpoint.state, checkpoint.metrics


def test_same_seed_same_weights_at_any_process_thread_count(tmp_path):
    one, metrics = _trained_state(tmp_path, "one", 1)
    two, _ = _trained_state(tmp_path, "two", 2)
    assert one == two
    assert metrics["reproducible_with"]["threads"] == 1
    assert metrics["reproducible_with"]["torch"] == torch.__version__
