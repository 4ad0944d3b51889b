"""A model spread over two arrays of one run: tiles on both, each array's measurements filed under it,
their clocks kept together."""

from sqlalchemy import select

from db import Database
from db.models import CrossbarArray, DeploymentTile, Inference, Measurement, Run

from test_loop_protocols import CALIBRATE, run_text

PROTOCOL = f"""name: two_small_arrays
array: {{rows: 40, cols: 40, name: chip-A}}
arrays:
  - {{name: chip-B, rows: 40, cols: 40}}
steps:
{CALIBRATE}  - kind: train
    name: model
    task: {{name: digits}}
    model: {{kind: mgrade, d_model: 8, n_layers: 1, max_delay: 4, taps: 2}}
    epochs: 1
    noise_draws: 0
  - kind: deploy
    name: deployed
    checkpoint: {{from_step: model}}
    noise_model: {{from_step: cal}}
    arrays: [chip-B]
  - kind: infer
    name: inferred
    deployment: deployed
    samples: 20
    times_s: [0, 3600]
"""


def test_a_model_larger_than_one_array_runs_over_two(tmp_path):
    url = run_text(tmp_path, PROTOCOL)
    with Database(url) as db, db.session() as session:
        run = session.scalars(select(Run)).one()
        assert run.status == "completed", run.error
        arrays = {a.id: a.array_id for a in session.scalars(select(CrossbarArray))}
        assert sorted(arrays.values()) == ["chip-A", "chip-B"]
        # 1,008 devices do not fit 40x40 = 1,600 cells once packed in groups: the tiles sit on both arrays
        assert {t.array for t in session.scalars(select(DeploymentTile))} == {"chip-A", "chip-B"}
        achieved = {arrays[m.array_fk]: m.name for m in session.scalars(select(Measurement))
                    if m.name.startswith("achieved")}
        assert achieved == {"chip-A": "achieved", "chip-B": "achieved_chip-B"}
        assert [i.time_s for i in session.scalars(select(Inference))] == [0, 3600, 3600]
        assert run.options["arrays"]["chip-B"]["seed"] != run.options["seed"]     # another simulated chip
