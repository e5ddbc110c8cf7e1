"""Torch ops the monitor dispatches per site and measured step: a budget, not a timing.

Inside a training step each dispatched op costs several microseconds whatever its size (the
dispatcher's code and data come back into the cache; on a GPU, a kernel launch), so the count of
ops per site is the monitor's fixed cost per step (docs/performance.md, "Ops per site"). The
profiler counts them exactly; these budgets are the current counts. A change that adds an op to
every measured step must raise the budget here, on purpose.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from act_diagnostics.callbacks.schedule import StepSchedule
from act_diagnostics.core import ActivationMonitor

# Ops per site and measured step, after a window's first steps: forward statistics and the
# output-gradient hook. On the CPU each call adds its results to the totals at once (as a window
# logged every step does); off the CPU (``deferred``) later results are folded once per window.
BUDGET = {nn.ReLU: 14, nn.GELU: 18, nn.Tanh: 23}
DEFERRED_BUDGET = {nn.ReLU: 9, nn.GELU: 11, nn.Tanh: 15}
DEPTH = 8


def _top_level_ops(run) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return sum(
        1
        for e in prof.events()
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    )


@pytest.mark.parametrize("deferred", [False, True], ids=["cpu", "deferred"])
@pytest.mark.parametrize("act", list(BUDGET), ids=lambda a: a.__name__)
def test_ops_per_site_and_measured_step_within_budget(act, deferred, monkeypatch) -> None:
    budget = (DEFERRED_BUDGET if deferred else BUDGET)[act]
    if deferred:  # sites defer as on an accelerator (core.windows.defers_on)
        monkeypatch.setattr("act_diagnostics.core.lifecycle.defers_on", lambda device, d: d)
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(DEPTH) for m in (nn.Linear(16, 16), act())])
    x = torch.randn(4, 16)
    mon = ActivationMonitor(model).attach()

    def steps(n: int, monitored: bool) -> None:
        for _ in range(n):
            if monitored:
                mon.begin_step()
            model(x).sum().backward()
            if monitored:
                mon.end_step()

    steps(4, True)  # discovery
    mon.snapshot()
    steps(3, True)  # into the new window: deferred from here, except on the CPU
    assert all(st.deferred == deferred for st in mon.states.values())
    n = 10
    monitored = _top_level_ops(lambda: steps(n, True))
    mon.pause()
    bare = _top_level_ops(lambda: steps(n, False))
    mon.detach()
    per_site = (monitored - bare) / (n * DEPTH)
    assert per_site <= budget, f"{act.__name__}: {per_site:.2f} ops per site and step (budget {budget})"
    assert per_site > budget - 3  # the count still sees the monitor's ops


class _OpCount(TorchDispatchMode):
    """Counts the aten ops dispatched while on the stack: forward, backward, optimizer, monitor."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def _ops_per_step(interval: int, measure_every: int | None, warmup: int, steps: int) -> float:
    """Mean ops per step of ``steps`` steps after ``warmup``, the monitor driven by the callback's
    schedule as benchmarks/overhead.py drives it (every step below is measured)."""
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(DEPTH) for m in (nn.Linear(16, 16), nn.ReLU())])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = ActivationMonitor(model).attach()
    schedule = StepSchedule(interval, measure_every)
    counter = _OpCount()
    for step in range(warmup + steps):
        plan = schedule.plan(step)
        assert plan.measure
        with counter if step >= warmup else nullcontext():
            mon.begin_step(detail=plan.detail)
            loss = model(torch.randn(8, 16)).pow(2).mean()
            mon.stop_tracing()
            loss.backward()
            if plan.detail:
                mon.measure_param_grads()
            opt.step()
            opt.zero_grad(set_to_none=True)
            mon.end_step()
            if plan.log:
                mon.snapshot(step=step)
    mon.detach()
    return counter.ops / steps


def test_the_first_window_dispatches_no_more_ops_per_step_than_logging_every_step() -> None:
    """The default schedule's first window (every step measured, logged every 50) and a window of
    50 measured steps cost no more ops per step than measuring and logging every step."""
    every_step = _ops_per_step(1, 1, warmup=3, steps=50)
    first_window = _ops_per_step(50, None, warmup=0, steps=50)
    measured_window = _ops_per_step(50, 1, warmup=50, steps=50)
    assert first_window <= every_step and measured_window <= every_step, (first_window, measured_window, every_step)
    assert measured_window < every_step - DEPTH  # the every-step count sees the snapshots
