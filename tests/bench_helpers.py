"""Shared by the bench-driver tests: emulators started on demand and stopped after the test, the
small calibration run on the in-process mock and through a bench backend (its emulator over the
same chip), and the statistical agreement of the two fits."""

from contextlib import contextmanager

import pytest
from sqlalchemy import select

import hil.run
from db import Database
from db.models import Run
from drivers import SoftwareCrossbar
from hil.noise_models import load_noise_model
from tests.test_calibrate_step import SMALL_CALIBRATION


@contextmanager
def emulators(tmp_path, serve):
    """``start(rows, cols, seed, faults, limits) -> (server, log)``: a new emulated instrument over its own
    software crossbar, served by ``serve(xbar, log, faults)``, logging to a file of its own; all are
    stopped when the block ends."""
    servers = []

    def start(rows=16, cols=16, seed=3, faults=None, limits=None):
        xbar = SoftwareCrossbar(rows, cols, seed=seed, limits=limits)
        log = tmp_path / f"emulator{len(servers)}.jsonl"
        server = serve(xbar, log, faults).start()
        servers.append(server)
        return server, log

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def calibrate_on_mock_and_bench(tmp_path, backend: str, resource: str):
    """The noise models fitted by SMALL_CALIBRATION on the mock and on ``backend`` at ``resource``."""
    protocol = tmp_path / "cal.yaml"
    protocol.write_text(SMALL_CALIBRATION, encoding="utf-8")
    models = {}
    for name, extra in (("mock", []), (backend, ["--resource", resource])):
        url = f"sqlite:///{tmp_path / name}.db"
        assert hil.run.main([str(protocol), "--db", url, "--backend", name, "--report-dir",
                             str(tmp_path / name), *extra]) == 0
        with Database.open(url) as db:
            with db.session() as s:
                run = s.scalars(select(Run)).one()
                assert run.status == "completed" and run.backend == name
                model_id = run.steps[0].summary["noise_model_id"]
            models[name] = load_noise_model(db, model_id=model_id)
    return models["mock"], models[backend]


def assert_same_device(mock, bench, array_suffix: str) -> None:
    """The two fits describe the same chip within the spread of one small calibration."""
    assert bench.array_id.endswith(array_suffix)
    assert bench.window.g_min_s == pytest.approx(mock.window.g_min_s, rel=0.05)
    assert bench.window.g_max_s == pytest.approx(mock.window.g_max_s, rel=0.05)
    assert bench.read.relative == pytest.approx(mock.read.relative, rel=0.2)
    assert bench.drift.nu_mean == pytest.approx(mock.drift.nu_mean, rel=0.2)
    assert bench.defects.stuck_on_rate + bench.defects.stuck_off_rate == pytest.approx(
        mock.defects.stuck_on_rate + mock.defects.stuck_off_rate, abs=0.01)
    assert bench.periphery.iv_cubic_per_v2 == pytest.approx(mock.periphery.iv_cubic_per_v2, abs=0.05)
