"""Every protocol shipped in protocols/ is valid as it stands."""

from pathlib import Path

import pytest

from hil.protocol_loader import load_protocol

PROTOCOLS = sorted((Path(__file__).resolve().parent.parent / "protocols").glob("*.yaml"))


@pytest.mark.parametrize("path", PROTOCOLS, ids=[p.stem for p in PROTOCOLS])
def test_shipped_protocol_loads(path):
    loaded = load_protocol(path)
    assert loaded.protocol.name == path.stem
    assert loaded.protocol.steps


def test_the_shipped_set_is_complete():
    assert {p.stem for p in PROTOCOLS} >= {"quickstart", "calibrate", "train_digits", "train_mnist1d"}
