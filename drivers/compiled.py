"""Compiled kernels in two builds: one thread for small work, all cores for large.

A batch of 256 through a stack of MVMs is millions of element operations, which the cores share
well; a single sample is a few hundred, for which waking a second thread costs more than it saves.
A kernel is written once with ``numba.prange`` over independent iterations and compiled both ways
(``prange`` is ``range`` in the serial build); the caller picks by the size of the work.
"""

from __future__ import annotations

import types
from typing import Callable

from numba import njit

# Elements of work from which the parallel build is used. On 2 cores a parallel region costs a couple of
# microseconds with its threads awake; the pre-distortion kernel takes 30 us on one thread and 18 us on two
# at 32k elements, 4 us either way at 4k.
PARALLEL_MIN = 1 << 15


def serial_and_parallel(**options) -> Callable[[Callable], tuple[Callable, Callable]]:
    """``serial, parallel = serial_and_parallel(fastmath=True)(fn)``: ``fn`` compiled as ``njit(**options)``
    and as ``njit(parallel=True, **options)``. The parallel build compiles a copy of ``fn`` under its own
    name, so that the two builds keep separate entries in numba's on-disk cache."""
    def build(fn: Callable) -> tuple[Callable, Callable]:
        twin = types.FunctionType(fn.__code__, fn.__globals__, f"{fn.__name__}_parallel", fn.__defaults__,
                                  fn.__closure__)
        twin.__qualname__ = f"{fn.__qualname__}_parallel"
        twin.__module__ = fn.__module__
        settings = dict(cache=True, nogil=True, error_model="numpy", **options)
        return njit(**settings)(fn), njit(parallel=True, **settings)(twin)
    return build


def pick(builds: tuple[Callable, Callable], elements: int) -> Callable:
    """The build for ``elements`` of work."""
    return builds[elements >= PARALLEL_MIN]
