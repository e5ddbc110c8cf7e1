"""Memory: no activation tensor outlives its step; state and Python objects do not grow over a soak."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from act_diagnostics.core.monitor import ActivationMonitor


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))


def _step(mon: ActivationMonitor, model: nn.Module, opt: torch.optim.Optimizer, x, y, detail: bool) -> None:
    mon.begin_step(detail=detail)
    loss = F.cross_entropy(F.softmax(model(x), -1).log(), y) + F.gelu(x).mean() * 0
    mon.stop_tracing()
    loss.backward()
    mon.measure_param_grads()
    opt.step()
    opt.zero_grad(set_to_none=True)
    mon.end_step()


def test_no_activation_tensor_kept_between_steps():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    refs: list[weakref.ref] = []
    for m in (model[1], model[3]):
        m.register_forward_hook(lambda mod, args, out: refs.append(weakref.ref(out)))
    mon = ActivationMonitor(model).attach()
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    for detail in (True, False, True):  # structure steps, then a plain and a detail step
        _step(mon, model, opt, x, y, detail)
    gc.collect()
    assert refs and all(r() is None for r in refs)
    # histogram samples are small copies, never views of an activation
    for st in mon.states.values():
        for t in (st.out_sample, st.grad_sample):
            assert t is None or (t.numel() <= mon.config.histogram_samples and t._base is None)
    mon.detach()


def _state_size(mon: ActivationMonitor) -> tuple:
    tensors = sum(t.numel() for st in mon.states.values() for t in (st.sums, st.unit_active) if t is not None)
    return (len(mon.states), tensors, *sorted(mon.bookkeeping().items()))


@pytest.mark.slow  # hundreds of steps
def test_soak_state_and_object_counts_do_not_grow():
    """A few thousand tiny monitored steps with a snapshot every 50: constant state, no object growth."""
    torch.manual_seed(0)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = ActivationMonitor(model).attach()
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))

    def run(steps: int) -> None:
        for i in range(steps):
            _step(mon, model, opt, x, y, detail=(i + 1) % 50 == 0)
            if (i + 1) % 50 == 0:
                mon.snapshot(step=i)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread only adds contention on a shared machine
    try:
        run(200)  # warm-up: sites created, caches filled
        gc.collect()
        size0, objects0 = _state_size(mon), len(gc.get_objects())
        run(2000)
        gc.collect()
        size1, objects1 = _state_size(mon), len(gc.get_objects())
    finally:
        torch.set_num_threads(threads)
    assert size1 == size0
    assert objects1 - objects0 < 100, f"{objects1 - objects0} Python objects more after 2000 steps"
    assert mon.steps == 2200 and mon.window_steps == 0
    mon.detach()
