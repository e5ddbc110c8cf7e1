"""Functional sites read at the pre-hook of the module their output goes into (no tracer on
measured steps after discovery): the same statistics as the tracer's, and a changed flow sends
them back to the tracer."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from act_diagnostics.core import ActivationMonitor


class Encoder(nn.Module):
    """torch's encoder layer: F.gelu's output goes straight into a dedicated Dropout."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


def _consumer_hooks(model: nn.Module) -> int:
    """Modules other than the model with a forward pre-hook and no forward hook: the consumers'
    (the structure hooks come in pairs, activation modules carry a forward hook)."""
    return sum(1 for m in model.modules() if m is not model and m._forward_pre_hooks and not m._forward_hooks)


def _train(model: nn.Module, mon: ActivationMonitor, steps: int, detail_every: int = 4) -> list:
    torch.manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    snaps, modes = [], []
    for step in range(steps):
        mon.begin_step(detail=step % detail_every == 0)
        modes.append((mon.tracing, _consumer_hooks(model)))
        loss = F.cross_entropy(model(torch.randn(8, 5, 16)), torch.randint(0, 3, (8,)))
        mon.stop_tracing()
        loss.backward()
        opt.step()
        opt.zero_grad()
        mon.end_step()
        snaps.append(mon.snapshot(step=step))
    mon.detach()
    return snaps, modes


def test_consumer_reads_equal_the_tracer_reads() -> None:
    torch.manual_seed(0)
    model = Encoder()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fast, fast_modes = _train(model, ActivationMonitor(model).attach(), 9)
    model.load_state_dict(state)
    traced_mon = ActivationMonitor(model).attach()
    traced_mon._eligible_consumers = lambda: None  # the tracer on every measured step
    traced, traced_modes = _train(model, traced_mon, 9)
    # After the two discovery steps, steps that are not detail steps run without the tracer.
    assert fast_modes[5] == (False, 2) and fast_modes[4] == (True, 0) and traced_modes[5] == (True, 0)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())  # detached
    for a, b in zip(fast, traced):
        assert sorted(a.stats) == sorted(b.stats) == [
            "encoder.layers.0.self_attn:attention", "encoder.layers.0:gelu",
            "encoder.layers.1.self_attn:attention", "encoder.layers.1:gelu",
        ]
        for name in a.stats:
            got, want = asdict(a.stats[name]), asdict(b.stats[name])
            for key, value in want.items():
                if value is None or isinstance(value, bool):
                    assert got[key] == value, (a.step, name, key)
                else:
                    assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-12), (a.step, name, key)


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(4, 8), nn.Dropout(0.0), nn.Linear(8, 2)
        self.scale = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc1(x))
        if self.scale:  # a flow the first steps never saw: the Dropout gets h * 2, not the GELU output
            h = h * 2
        return self.fc2(self.drop(h))


def test_a_changed_flow_sends_functional_sites_back_to_the_tracer() -> None:
    torch.manual_seed(0)
    model, x = Branchy(), torch.randn(16, 4)
    mon = ActivationMonitor(model).attach()
    maxima = []
    for step in range(6):
        model.scale = step == 3
        with torch.no_grad():
            expected = F.gelu(model.fc1(x)).abs().max().item()
        mon.begin_step()
        model(x).sum().backward()
        mon.end_step()
        if step >= 2:
            assert mon.reads_functional_at_consumers == (step < 3)  # the mismatch at step 3 turns the consumer reads off
        snap = mon.snapshot(step=step)
        maxima.append((snap.stats[":gelu"].calls, snap.stats[":gelu"].max_abs, expected))
    mon.detach()
    assert [calls for calls, _, _ in maxima] == [1, 1, 1, 0, 1, 1]  # h * 2 is never read as the GELU
    assert all(m == pytest.approx(e) for calls, m, e in maxima if calls)


class LateBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(4, 8), nn.Dropout(0.0), nn.Linear(8, 2)
        self.late = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.gelu(self.fc1(x)))
        return self.fc2(F.silu(h) if self.late else h)  # a functional call first made late


def test_a_functional_call_first_made_late_is_measured_on_every_later_step() -> None:
    torch.manual_seed(0)
    model, x = LateBranch(), torch.randn(16, 4)
    mon = ActivationMonitor(model).attach()
    for step in range(8):
        model.late = step >= 3
        mon.begin_step(detail=step == 4)  # found by the tracer on the next detail step
        model(x).sum().backward()
        mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    assert not mon.reads_functional_at_consumers
    assert snap.stats[":silu"].calls == 4 and snap.stats[":gelu"].calls == 8  # steps 4-7; every step


class Chain(nn.Module):
    """F.gelu after each of ``depth`` Linear layers; each call's output goes into the next layer."""

    def __init__(self) -> None:
        super().__init__()
        self.lins = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.head = nn.Linear(4, 1)
        self.depth = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.depth):
            x = F.gelu(self.lins[i](x) + 3 * i)  # call i has a mean near 3 * i
        return self.head(x)


def test_a_forward_under_no_grad_is_read_at_the_consumer() -> None:
    model = Chain()
    mon = ActivationMonitor(model).attach()
    for _ in range(3):  # discovery, then the consumer reads
        mon.begin_step()
        model(torch.randn(5, 4)).sum().backward()
        mon.end_step()
    mon.snapshot()
    assert mon.reads_functional_at_consumers
    mon.begin_step()
    with torch.no_grad():
        model(torch.randn(5, 4))
    mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    assert {name: st.calls for name, st in snap.stats.items()} == {":gelu": 1, ":gelu#1": 1, ":gelu#2": 1}
    assert mon.reads_functional_at_consumers


def test_a_loop_that_gets_shorter_sends_functional_sites_back_to_the_tracer() -> None:
    torch.manual_seed(0)
    model = Chain()
    mon = ActivationMonitor(model).attach()
    for step in range(10):
        model.depth = 3 if step < 2 else 2
        mon.begin_step()
        model(torch.randn(5, 4)).sum().backward()
        mon.end_step()
        if step == 2:  # the first shorter pass: one call may be read at its neighbour's module
            assert not mon.reads_functional_at_consumers
    snap = mon.snapshot()
    mon.detach()
    calls = {name: st.calls for name, st in snap.stats.items()}
    assert calls[":gelu"] == 10 and calls[":gelu#1"] >= 9 and calls[":gelu#2"] <= 3
    assert calls[":gelu#1"] + calls[":gelu#2"] == 12
