"""Both builds of every compiled kernel (one thread, and all cores for large work) against the numpy
expression each stands for, at sizes where the parallel build is the one used."""

from __future__ import annotations

import numpy as np
import pytest

from drivers import kernels
from drivers.compiled import PARALLEL_MIN, pick
from hil import executor_kernels as ek

BUILDS = pytest.mark.parametrize("build", [0, 1], ids=["serial", "parallel"])
rng = np.random.default_rng(0)


def test_large_work_takes_the_parallel_build():
    assert pick(("s", "p"), PARALLEL_MIN - 1) == "s" and pick(("s", "p"), PARALLEL_MIN) == "p"


@BUILDS
def test_dac_drive_and_adc_conversion(build):
    v = rng.uniform(-1, 1, (64, 256, 24)).astype(np.float32)
    out = np.empty_like(v)
    kernels._DAC_DRIVE[build](v, np.float32(127.0), np.float32(2e-5), out)
    k = np.rint(v * np.float32(127.0))
    assert np.allclose(out, k * (1 + np.float32(2e-5) * k * k), rtol=1e-6, atol=0)
    x = rng.normal(0, 300, (16, 256, 32)).astype(np.float32)
    noise = rng.normal(0, 1, x.size).astype(np.float32)
    out = np.empty_like(x)
    kernels._ADC_CONVERT[build](x, noise, np.float32(511), np.float32(1e-7), out)
    want = np.clip(np.rint(x + noise.reshape(x.shape)), -511, 511) * np.float32(1e-7)
    assert np.allclose(out, want, rtol=1e-6, atol=0)
    gains = rng.uniform(1, 4, 16).astype(np.float32)
    out = np.empty_like(x)
    kernels._ADC_CONVERT_PARTS[build](x, noise, gains, np.float32(511), np.float32(1e-7), out)
    g = gains[:, None, None]
    want = np.clip(np.rint(g * x + g * noise.reshape(x.shape)), -511, 511) * (np.float32(1e-7) / g)
    assert np.allclose(out, want, rtol=1e-6, atol=0)


@BUILDS
@pytest.mark.parametrize("cols", [4, 32])
def test_stack_products(build, cols):
    a = rng.normal(size=(32, 256, 34)).astype(np.float32)
    a[:, :, 5] = 0.0                                    # rows at 0 V are skipped, not lost
    g = rng.normal(size=(32, 34, cols)).astype(np.float32)
    out = np.empty((32, 256, cols), np.float32)
    kernels._STACK_MATMUL[build](a, g, out)
    assert np.allclose(out, a @ g, rtol=1e-4, atol=1e-4)


@BUILDS
def test_row_voltages_scale_each_tile_to_full_scale(build):
    x = rng.normal(size=(256, 300)).astype(np.float32)
    inputs = rng.integers(0, 300, (64, 24))
    inv_gain = rng.uniform(0.5, 2, (64, 24))
    tile = np.repeat(np.arange(8), 3)
    volts, top = np.empty((64, 256, 24), np.float32), np.empty((64, 256, 8))
    x[3, inputs[0, :3]] = 0.0                           # an all-zero tile keeps a top of 1
    assert ek._ROW_VOLTAGES[build](x, inputs, inv_gain, tile, 8, 0.2, volts, top)
    u = x[:, inputs].transpose(1, 0, 2) * inv_gain[:, None, :]          # (group, sample, row)
    want_top = np.abs(u).reshape(64, 256, 8, 3).max(axis=3)
    want_top[want_top == 0] = 1.0
    assert np.array_equal(top, want_top)
    assert np.allclose(volts, u * (0.2 / np.repeat(want_top, 3, axis=2)), rtol=1e-6, atol=0)
    x[7, inputs[2, 4]] = np.nan
    assert not ek._ROW_VOLTAGES[build](x, inputs, inv_gain, tile, 8, 0.2, volts, top)


@BUILDS
def test_outputs_add_up_per_sample(build):
    n, batch, m = 16, 256, 8
    currents = rng.normal(size=(n, batch, 2 * m)).astype(np.float32)
    top = rng.uniform(0.5, 2, (n, batch, 2))
    tile = np.repeat(np.arange(2), m // 2)
    factor = rng.uniform(0.5, 2, (n, m))
    outputs = rng.integers(0, 20, (n, m))              # several groups add into the same outputs
    y = np.zeros((batch, 20))
    ek._ADD_OUTPUTS[build](currents, top, tile, factor, outputs, y)
    want = np.zeros((batch, 20))
    d = currents[:, :, :m].astype(np.float64) - currents[:, :, m:]
    for p in range(n):
        np.add.at(want.T, outputs[p], (d[p] * top[p][:, tile] * factor[p]).T)
    assert np.allclose(y, want, rtol=1e-12, atol=1e-12)


@BUILDS
def test_predistortion_solves_the_cubic(build):
    v = rng.uniform(-0.2, 0.2, (64, 256, 24))
    u = v.copy()
    kappa, ref = 0.5, 0.2
    ek._PREDISTORT[build](v, kappa, 1 + kappa * ref ** 2, 0.2)
    assert np.allclose(v * (1 + kappa * v * v), u * (1 + kappa * ref ** 2), rtol=1e-12, atol=1e-15)
