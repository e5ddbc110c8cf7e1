"""A plain training loop with the monitor and a rule engine, for end-to-end rule tests (a plain
module, as snapshot_builders is)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn as nn

from act_diagnostics.core import ActivationMonitor
from act_diagnostics.rules import Finding, RuleEngine


def judged_training(
    model: nn.Module, loss_of: Callable, x: torch.Tensor, y: torch.Tensor, engine: RuleEngine, steps: int, lr: float
) -> list[Finding]:
    """``steps`` SGD steps on one batch, every step measured in detail (the tracer stopped before
    backward, as the callback does) and judged as its own window, the first as the pre-flight:
    every finding the engine reported."""
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    mon = ActivationMonitor(model).attach()
    found: list[Finding] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for step in range(steps):
                mon.begin_step(detail=True)
                loss = loss_of(model(x), y)
                mon.stop_tracing()
                loss.backward()
                opt.step()
                opt.zero_grad()
                mon.end_step()
                found += engine.evaluate(mon.snapshot(step=step), preflight=step == 0)
    finally:
        mon.detach()
    return found
