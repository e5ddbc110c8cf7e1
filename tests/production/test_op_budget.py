"""Torch ops the monitor dispatches per site and measured step: a budget, not a timing.

Inside a training step each dispatched op costs several microseconds whatever its size (the
dispatcher's code and data come back into the cache; on a GPU, a kernel launch), so the count of
ops per site is the monitor's fixed cost per step (docs/performance.md, "Ops per site"). The
profiler counts them exactly; these budgets are the current counts. A change that adds an op to
every measured step must raise the budget here, on purpose.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

from act_diagnostics.core import ActivationMonitor

# Ops per site and measured step, after a window's first steps (whose results are added call by
# call; later ones are folded once per window): forward statistics and the output-gradient hook.
BUDGET = {nn.ReLU: 9, nn.GELU: 11, nn.Tanh: 15}
DEPTH = 8


def _top_level_ops(run) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return sum(
        1
        for e in prof.events()
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    )


@pytest.mark.parametrize("act", list(BUDGET), ids=lambda a: a.__name__)
def test_ops_per_site_and_measured_step_within_budget(act) -> None:
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
    steps(3, True)  # into the new window: results are deferred from here
    assert all(st.deferred for st in mon.states.values())
    n = 10
    monitored = _top_level_ops(lambda: steps(n, True))
    mon.pause()
    bare = _top_level_ops(lambda: steps(n, False))
    mon.detach()
    per_site = (monitored - bare) / (n * DEPTH)
    assert per_site <= BUDGET[act], f"{act.__name__}: {per_site:.2f} ops per site and step (budget {BUDGET[act]})"
    assert per_site > BUDGET[act] - 3  # the count still sees the monitor's ops
