"""No out-of-limit request reaches the backend: the interface raises first and nothing changes."""

import numpy as np
import pytest

from drivers import (InstrumentTimeout, LimitViolation, NotConnected, SafetyLimits, SoftwareCrossbar)


@pytest.fixture
def xbar():
    with SoftwareCrossbar(8, 8, seed=0, limits=SafetyLimits(max_write_voltage_v=2.0)) as x:
        yield x


BAD_REQUESTS = [
    ("pulse", lambda x: x.pulse([0, 1], [0, 1], [1.0, 2.5], 1e-6), "amplitude"),
    ("pulse", lambda x: x.pulse([0], [0], -2.01, 1e-6), "amplitude"),
    ("pulse", lambda x: x.pulse([0], [0], 1.0, 5e-3), "pulse width"),
    ("pulse", lambda x: x.pulse([0], [0], 1.0, 1e-9), "pulse width"),
    ("pulse", lambda x: x.pulse([0], [0], float("nan"), 1e-6), "not finite"),
    ("pulse", lambda x: x.pulse([0], [0], 1.0, 1e-6, compliance_a=5e-3), "compliance"),
    ("pulse", lambda x: x.pulse([0, 0], [3, 3], 1.0, 1e-6), "more than once"),
    ("pulse", lambda x: x.pulse([8], [0], 1.0, 1e-6), "rows index"),
    ("pulse", lambda x: x.pulse([0, 1], [0], 1.0, 1e-6), "differ in length"),
    ("read", lambda x: x.read(voltage_v=0.5), "read voltage"),
    ("read", lambda x: x.read(voltage_v=-0.1), "read voltage"),
    ("read", lambda x: x.read([0, 9], voltage_v=0.2), "rows index"),
    ("mvm", lambda x: x.mvm(np.full(8, 0.3)), "max_read_voltage_v"),
    ("mvm", lambda x: x.mvm(np.r_[np.zeros(7), -0.26]), "max_read_voltage_v"),
    ("mvm", lambda x: x.mvm(np.r_[np.zeros(7), np.nan]), "not finite"),
    ("mvm", lambda x: x.mvm(np.zeros((2, 7))), "shape"),
]


@pytest.mark.parametrize("command, request_, words", BAD_REQUESTS)
def test_out_of_limit_requests_raise_before_any_io(xbar, mocker, command, request_, words):
    backend = mocker.spy(xbar, f"_{command}")
    state = xbar.true_conductance()
    clock = xbar.now()
    with pytest.raises(LimitViolation) as info:
        request_(xbar)
    assert words in str(info.value)
    assert xbar.identity.instrument_id in str(info.value) and command in str(info.value)
    assert backend.call_count == 0
    assert xbar.total_transactions == 0
    assert np.array_equal(xbar.true_conductance(), state) and xbar.now() == clock


def test_within_limits_reaches_backend(xbar, mocker):
    backend = mocker.spy(xbar, "_pulse")
    xbar.pulse([0], [0], 2.0, 1e-6)
    assert backend.call_count == 1 and xbar.transactions["pulse"] == 1


def test_mock_read_limit_never_exceeds_its_dac_range():
    x = SoftwareCrossbar(4, 4, limits=SafetyLimits(max_read_voltage_v=1.0))
    assert x.limits.max_read_voltage_v == x.config.dac_range_v


def test_protocol_limits_only_tighten(xbar):
    xbar.restrict_limits(SafetyLimits(max_write_voltage_v=1.2, max_read_voltage_v=0.3))
    assert xbar.limits.max_write_voltage_v == 1.2
    assert xbar.limits.max_read_voltage_v == 0.25      # the DAC's, stricter than 0.3
    with pytest.raises(LimitViolation):
        xbar.pulse([0], [0], 1.5, 1e-6)


def test_closed_instrument_refuses_commands():
    x = SoftwareCrossbar(4, 4)
    with pytest.raises(NotConnected):
        x.read(voltage_v=0.2)
    with x:
        x.read(voltage_v=0.2)
    with pytest.raises(NotConnected):
        x.mvm(np.zeros(4))


def test_injected_fault_names_instrument_and_command():
    with SoftwareCrossbar(4, 4, fail_on_transaction=2) as x:
        x.read(voltage_v=0.2)
        with pytest.raises(InstrumentTimeout) as info:
            x.pulse([0], [0], 1.0, 1e-6)
    msg = str(info.value)
    assert "software-crossbar" in msg and "'pulse'" in msg and "no reply" in msg
