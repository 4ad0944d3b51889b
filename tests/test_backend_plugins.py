"""Backends as plug-ins: a bench in a package of its own, installed with pip, found by name through the
entry-point group memristor_hil.backends, given the protocol's backend_options, and held to the protocol's
limits like the bundled ones."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

import hil.backends
import hil.run
from db import Database
from db.models import Measurement, Run
from db.records import load_measurement_array

PLUGIN = Path(__file__).resolve().parent / "data" / "lab_bench"

PROTOCOL = """name: on_the_lab_bench
array: {rows: 8, cols: 8}
limits: {max_write_voltage_v: 1.5}
backend_options: {g_min_s: 2.0e-6, g_max_s: 5.0e-5, threshold_v: 0.6}
steps:
  - kind: program
    pattern: {kind: checkerboard, g_low_s: 1.0e-5, g_high_s: 4.0e-5}
    tolerance: 0.05
    max_set_voltage_v: 1.5
    max_reset_voltage_v: 1.5
  - kind: read
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The plug-in package installed by pip into a directory of its own (no index, no build isolation:
    nothing is downloaded), put on sys.path as a site directory would be."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "lab_bench"
    shutil.copytree(PLUGIN, source)     # the build writes beside the sources; not into this repository
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--disable-pip-version-check", "--target", str(target), str(source)],
                   check=True, capture_output=True, timeout=300)
    sys.path.insert(0, str(target))
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        sys.modules.pop("lab_bench", None)


def test_an_installed_plugin_is_found_by_name_and_runs_a_protocol(installed, tmp_path):
    assert "labbench" in hil.backends.names() and "mock" in hil.backends.names()
    path = tmp_path / "p.yaml"
    path.write_text(PROTOCOL, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert hil.run.main([str(path), "--backend", "labbench", "--db", url]) == 0
    with Database(url) as db, db.session() as s:
        run = s.scalars(select(Run)).one()
        assert run.status == "completed" and run.backend == "labbench"
        assert run.crossbar_array.array_id == "lab-die-7"
        # what shaped the instrument is recorded: its options and its own settings()
        assert run.options["g_max_s"] == 5.0e-5 and run.options["threshold_v"] == 0.6
        read = s.scalars(select(Measurement).where(Measurement.name == "conductance")).one()
        g = load_measurement_array(read)[0]
    parity = (np.arange(8)[:, None] + np.arange(8)[None, :]) % 2
    targets = np.where(parity == 0, 1e-5, 4e-5)
    assert np.mean(np.abs(g - targets) <= 0.05 * 3e-5 + 1e-12) > 0.9


def test_the_plugin_is_held_to_the_protocols_limits(installed):
    from hil.protocol import Protocol
    import yaml
    protocol = Protocol.model_validate(yaml.safe_load(PROTOCOL))
    xbar, _ = hil.backends.make_backend("labbench", protocol, seed=0)
    assert xbar.limits.max_write_voltage_v == 1.5            # the plug-in offered 3 V; the protocol says 1.5
    from drivers import LimitViolation
    with xbar, pytest.raises(LimitViolation):
        xbar.pulse([0], [0], 2.0, 1e-6)
    assert xbar.largest_pulse_v == 0.0


def test_bad_options_and_unknown_names_are_refused_in_one_line(installed, tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(PROTOCOL.replace("threshold_v: 0.6", "threshold: 0.6"), encoding="utf-8")
    db_file = tmp_path / "x.db"
    assert hil.run.main([str(path), "--backend", "labbench", "--db", f"sqlite:///{db_file}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the labbench backend: unknown backend_options ['threshold']" in err
    assert hil.run.main([str(path), "--backend", "labbnech", "--db", f"sqlite:///{db_file}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "backend 'labbnech' is not available; choose one of:" in err and "labbench" in err
    assert not db_file.exists()


def test_a_factory_that_returns_no_crossbar_is_refused(monkeypatch):
    from hil.protocol import Protocol
    protocol = Protocol.model_validate({"name": "p", "array": {"rows": 2, "cols": 2}, "steps": [{"kind": "read"}]})
    monkeypatch.setitem(hil.backends.BUNDLED, "mock", (lambda **_: object(), lambda p: {}))
    with pytest.raises(hil.backends.BackendError, match="returned a object, not a drivers.interface.Crossbar"):
        hil.backends.make_backend("mock", protocol, seed=0)
