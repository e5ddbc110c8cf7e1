"""Fact: the rows of the model's input on detail steps and their spread (core/facts.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from act_diagnostics.core import ActivationMonitor


def _snap(model: nn.Module, x: torch.Tensor, detail: bool = True):
    mon = ActivationMonitor(model).attach()
    mon.begin_step(detail=detail)
    model(x).sum().backward()
    mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    return snap


@pytest.mark.parametrize(
    "x,rows,spread",
    [
        (torch.zeros(1, 4), 1, 0.0),  # one all-zeros row
        (torch.ones(5, 4) * 3.0, 5, 0.0),  # identical rows
        (torch.tensor([[0.0, 1.0], [0.5, -1.0]]), 2, 2.0),  # largest |row - first row|
    ],
)
def test_rows_and_spread_of_the_input(x, rows, spread):
    model = nn.Sequential(nn.Linear(x.shape[1], 3), nn.ReLU())
    snap = _snap(model, x)
    assert snap.batch_rows == rows and snap.batch_spread == pytest.approx(spread)


def test_not_recorded_outside_detail_steps_and_reset_by_each_snapshot():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    snap = _snap(model, torch.randn(8, 4), detail=False)
    assert snap.batch_rows is None and snap.batch_spread is None
    mon = ActivationMonitor(model).attach()
    mon.begin_step(detail=True)
    model(torch.randn(8, 4)).sum().backward()
    mon.end_step()
    assert mon.snapshot().batch_rows == 8
    mon.begin_step(detail=False)
    model(torch.randn(8, 4)).sum().backward()
    mon.end_step()
    assert mon.snapshot().batch_rows is None
    mon.detach()


def test_integer_token_inputs():
    model = nn.Sequential(nn.Embedding(10, 4), nn.ReLU())
    snap = _snap(model, torch.tensor([[1, 2, 3], [1, 2, 4]]))
    assert snap.batch_rows == 2 and snap.batch_spread == 1.0
