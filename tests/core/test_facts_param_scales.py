"""Fact: each parameter's largest |value| at attach, biases left out (core/facts.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from act_diagnostics.core import ActivationMonitor
from act_diagnostics.core.facts import parameter_scales


class ScaledBlock(nn.Module):
    """A residual block whose branch is scaled by a LayerScale-style gamma (1e-6), with a ReZero
    alpha (0) and a zero-initialised last BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4)
        self.gamma = nn.Parameter(torch.full((4,), 1e-6))
        self.alpha = nn.Parameter(torch.zeros(()))
        self.bn = nn.BatchNorm1d(4)
        nn.init.zeros_(self.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * self.bn(self.gamma * self.fc2(self.act(self.fc1(x))))


def test_scales_match_the_parameters_and_leave_biases_out():
    torch.manual_seed(0)
    block = ScaledBlock()
    scales = parameter_scales(block)
    assert set(scales) == {"fc1.weight", "fc2.weight", "gamma", "alpha", "bn.weight"}
    assert scales["gamma"] == pytest.approx(1e-6) and scales["alpha"] == 0.0 and scales["bn.weight"] == 0.0
    assert scales["fc1.weight"] == pytest.approx(block.fc1.weight.abs().max().item())


def test_lazy_parameters_are_left_out_and_the_snapshot_carries_the_scales():
    model = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    assert set(parameter_scales(model)) == {"2.weight"}
    block = ScaledBlock()
    mon = ActivationMonitor(block).attach()
    mon.begin_step(detail=True)
    block(torch.randn(8, 4)).sum().backward()
    mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    assert snap.param_scales["gamma"] == pytest.approx(1e-6)


def test_scales_are_the_largest_absolute_values_computed_by_hand():
    # Negative extremes, half precision, complex values (|3+4j| = 5), NaN and infinity each give the
    # largest |value|, as an abs() copy and its max would.
    model = nn.Module()
    model.neg = nn.Parameter(torch.tensor([[1.0, -3.0], [2.0, 0.5]]))
    model.low = nn.Parameter(torch.tensor([-0.5, 0.25], dtype=torch.bfloat16))
    model.cplx = nn.Parameter(torch.tensor([3 + 4j, 1j]))
    model.nan = nn.Parameter(torch.tensor([float("nan"), 1.0]))
    model.inf = nn.Parameter(torch.tensor([float("-inf"), 1.0]))
    model.zero = nn.Parameter(torch.zeros(3))
    scales = parameter_scales(model)
    assert scales["neg"] == 3.0 and scales["low"] == 0.5 and scales["cplx"] == 5.0 and scales["zero"] == 0.0
    assert math.isnan(scales["nan"]) and scales["inf"] == math.inf
    assert list(scales) == ["neg", "low", "cplx", "nan", "inf", "zero"]  # in the model's order
