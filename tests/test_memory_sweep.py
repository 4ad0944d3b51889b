"""scripts/memory_sweep.py: its memory counts against the tensors a model really holds, and its Pareto front."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from hil.nn.zoo import build_model

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "memory_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("memory_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is being built
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def carried_bytes(model, d_input: int) -> int:
    """Bytes of the state tensors one step of the model returns, for one sequence."""
    state = model.step(torch.randn(1, d_input), model.init_state(1, dtype=torch.float32))
    tensors = [t for block in state.blocks for t in block.values()] + [state.mean]
    return sum(t.numel() * t.element_size() for t in tensors)


def test_memory_counts_match_the_tensors(sweep):
    d_input, classes = 1, 10
    for family, budget in ((f, b) for f in sweep.FAMILIES for b in sweep.BUDGETS):   # run or not
        torch.manual_seed(0)
        model = build_model(sweep.config(family, budget), d_input, classes)
        counted = sweep.memory(model)
        assert counted["state_bytes"] == carried_bytes(model, d_input), (family, budget.name)
        assert counted["weight_bytes"] == sum(p.numel() * p.element_size() for p in model.parameters())
        assert counted["total_bytes"] == counted["state_bytes"] + counted["weight_bytes"]


def test_families_share_each_budget(sweep):
    for budget in sweep.BUDGETS:
        sizes = {family: sweep.state_bytes(build_model(sweep.config(family, budget), 1, 10))
                 for family in sweep.FAMILIES}
        assert set(sizes.values()) == {4 * budget.state_numbers()}, (budget.name, sizes)


def test_pareto_front_on_a_hand_made_example(sweep):
    points = [(100, 0.50),    # 0: cheapest: on the front
              (200, 0.70),    # 1: on the front
              (200, 0.60),    # 2: same memory as 1, less accurate: dominated
              (300, 0.70),    # 3: more memory than 1, same accuracy: dominated
              (400, 0.90),    # 4: on the front
              (500, 0.80),    # 5: dominated by 4
              (400, 0.90)]    # 6: equal to 4: neither dominates the other
    assert sweep.pareto_front(points) == [0, 1, 4, 6]
    assert sweep.pareto_front([]) == []
    assert sweep.pareto_front([(1, 0.1)]) == [0]


def test_interpolation_and_intervals(sweep):
    curve = [(100, [0.5, 0.5]), (400, [0.9, 0.9])]
    terms = sweep.at_memory(curve, 200)          # halfway in log memory
    assert [w for w, _ in terms] == pytest.approx([0.5, 0.5])
    assert sweep.at_memory(curve, 50) is None and sweep.at_memory(curve, 800) is None
    a, b = [0.90, 0.92, 0.94], [0.80, 0.82, 0.84]
    est, half = sweep.combination_interval([(1.0, a), (-1.0, b)])
    assert est == pytest.approx(0.10)
    # equal variances and sizes: Welch has 4 degrees of freedom, t = 2.776, SE = sqrt(2 * 0.0004 / 3)
    assert half == pytest.approx(2.7764 * math.sqrt(2 * 0.0004 / 3), rel=1e-3)
    mean, half = sweep.interval(a)
    assert mean == pytest.approx(0.92) and half == pytest.approx(4.3027 * 0.02 / math.sqrt(3), rel=1e-3)
