"""Call measurement: module and functional calls under no_grad, inference mode, autocast, checkpoints; no host sync; our ops stay out of other modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monitor_fixtures import Checkpointed, CountTransfers, Functional
from torch.overrides import TorchFunctionMode

from act_diagnostics.core import ActivationMonitor


# ---------------------------------------------------------------- host syncs
@pytest.mark.parametrize("depth, act", [(2, nn.GELU), (2, nn.Sigmoid), (100, nn.Tanh)])
def test_no_host_sync_during_steps_and_constant_per_snapshot(depth: int, act, monkeypatch, make_mlp) -> None:
    model = make_mlp(16, depth, act=act)
    x = torch.randn(4, 16)
    mon = ActivationMonitor(model, structure_steps=1).attach()
    counter = CountTransfers(monkeypatch)
    for i in range(3):
        mon.begin_step(detail=(i == 1))
        loss = F.softmax(model(x), dim=-1).square().mean()
        loss.backward()
        mon.measure_param_grads()
        mon.end_step()
    during_steps = counter.count
    mon.snapshot()
    per_snapshot = counter.count - during_steps
    monkeypatch.undo()
    mon.detach()
    assert during_steps == 0
    assert 1 <= per_snapshot <= 2
    assert len(mon.sites) == depth + 1


class GeluMLP(nn.Module):
    """A functional activation: measured by the tracer (detail steps) or at its consumer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


@pytest.mark.parametrize("functional", [False, True], ids=["modules", "functional"])
@pytest.mark.parametrize("detail", [False, True], ids=["plain_step", "detail_step"])
def test_statistic_ops_stay_out_of_other_torch_function_modes(make_mlp, train_step, functional, detail) -> None:
    """A user's TorchFunctionMode (a FLOP counter) sees the model's ops only, whether the
    monitor's tracer is on (detail steps, functional sites) or off."""

    class Counting(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.calls += 1
            return func(*args, **(kwargs or {}))

    model, x = (GeluMLP() if functional else make_mlp()), torch.randn(4, 8)
    with Counting() as bare:
        model(x)
    mon = ActivationMonitor(model).attach()
    for _ in range(4):  # past discovery
        train_step(mon, model, x)
    mon.begin_step(detail=detail)
    with Counting() as seen:
        model(x)
    mon.end_step()
    mon.detach()
    assert seen.calls == bare.calls


def test_integer_outputs_are_not_sites(train_step) -> None:
    """torch.relu / clamp-like calls on integer tensors (positions, indices) are not activations:
    no site, no false dead-unit finding, and the real call keeps the name ':relu'."""

    class Positions(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.act = nn.Linear(4, 4), nn.ReLU()

        def forward(self, x):
            offsets = torch.relu(torch.arange(x.shape[1]) - 100)  # int64, all zeros
            return torch.relu(self.fc(x)) + self.act(offsets) + offsets

    model = Positions()
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(3, 4))
    snap = mon.snapshot()
    mon.detach()
    assert list(mon.sites) == [":relu"]
    assert snap.stats[":relu"].calls == 1 and snap.stats[":relu"].unit_firing is not None


def test_functional_false_ignores_functional_calls() -> None:
    model = nn.Sequential(Functional())
    with ActivationMonitor(model, functional=False) as mon:
        model(torch.randn(3, 4))
    assert mon.sites == {}


def test_inplace_relu_with_gradients(train_step) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 1))
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(6, 4), detail=True)
    snap = mon.snapshot()
    mon.detach()
    assert list(snap.sites) == ["1", "3"]
    for st in snap.stats.values():
        assert st.grad_rms is not None and st.firing_rate is not None
        assert st.input_std is not None and st.input_std > 0  # read by the pre-hook, before the inplace op


def test_module_relu_is_not_counted_twice() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.GELU(), nn.Softmax(dim=-1))
    with ActivationMonitor(model) as mon:
        model(torch.randn(2, 4))
    assert list(mon.sites) == ["1", "2", "3"]
    assert all(st.counters[0] == 1 for st in mon.states.values())


def test_no_grad_forward_inside_a_step_is_measured_without_gradients(make_mlp) -> None:
    model = make_mlp(4, 1)
    mon = ActivationMonitor(model).attach()
    mon.begin_step()
    with torch.no_grad():
        model(torch.randn(2, 4))
    mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    assert snap.stats["1"].calls == 1 and snap.stats["1"].grad_rms is None


def test_empty_batch_does_not_crash(make_mlp, train_step) -> None:
    model = make_mlp(4, 1)
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(0, 4), detail=True)
    train_step(mon, model, torch.randn(2, 4), detail=True)
    snap = mon.snapshot()
    mon.detach()
    assert mon.failure is None
    assert snap.stats["1"].calls == 2 and snap.stats["1"].elements == 8


@pytest.mark.parametrize("context", ["checkpoint", "no_grad", "inference_mode"])
def test_first_smooth_saturation_inside_checkpoint_or_no_grad(context: str) -> None:
    # The GELU tail threshold is computed lazily on the first GELU call; that call may sit inside
    # an activation-checkpointed region (saved-tensor hooks), no_grad or inference_mode.
    from act_diagnostics.core.kinds import smooth_tail_threshold

    smooth_tail_threshold.cache_clear()
    model = Checkpointed(reentrant=False)
    mon = ActivationMonitor(model).attach()
    mon.begin_step(detail=True)  # the smooth tail is read on detail steps
    x = torch.randn(3, 4)
    if context == "checkpoint":
        model(x).sum().backward()
    elif context == "no_grad":
        with torch.no_grad():
            model.fc(model.inner(x))
    else:
        with torch.inference_mode():
            model.fc(model.inner(x))
    mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    assert mon.failure is None
    assert snap.stats["inner.block.1"].saturation is not None


def test_inference_mode_forward_inside_a_step_after_normal_steps(make_mlp, train_step) -> None:
    model = make_mlp(4, 1, act=nn.Tanh)
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(2, 4), detail=True)
    mon.begin_step(detail=True)
    with torch.inference_mode():
        model(torch.randn(2, 4))
    mon.end_step()
    train_step(mon, model, torch.randn(2, 4))
    snap = mon.snapshot()
    mon.detach()
    assert mon.failure is None and snap.stats["1"].calls == 3


def test_bf16_autocast_training_step(make_mlp, train_step) -> None:
    model = make_mlp(16, 2, act=nn.GELU)
    mon = ActivationMonitor(model).attach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = train_step(mon, model, torch.randn(8, 16), detail=True)
    snap = mon.snapshot()
    mon.detach()
    assert out.dtype == torch.bfloat16 and mon.failure is None
    st = snap.stats["1"]
    assert st.mean is not None and st.grad_rms is not None and st.saturation is not None and st.input_std is not None
