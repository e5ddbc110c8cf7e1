"""Checkpoint re-runs: a reentrant checkpoint's re-run brings the gradient its first, no_grad forward could not give."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monitor_fixtures import Checkpointed
from torch.utils.checkpoint import checkpoint

from act_diagnostics.core import ActivationMonitor


def test_a_shared_block_checkpointed_twice_keeps_each_calls_gradient() -> None:
    """Reentrant checkpoints re-run in backward last first: each call's gradient goes to its own
    site (they were swapped), as without checkpointing."""

    class Net(nn.Module):
        def __init__(self, use_checkpoint: bool) -> None:
            super().__init__()
            self.fc, self.act, self.head = nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 1)
            self.use_checkpoint = use_checkpoint

        def block(self, h):
            return self.act(self.fc(h))

        def forward(self, x):
            h = x
            for _ in range(2):
                h = checkpoint(self.block, h, use_reentrant=True) if self.use_checkpoint else self.block(h)
            return self.head(h * torch.arange(1.0, 7.0))  # unequal weights: the two calls' gradients differ

    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)
        model = Net(use_checkpoint)
        x = torch.randn(5, 6, requires_grad=True)
        mon = ActivationMonitor(model).attach()
        mon.begin_step()
        model(x).pow(2).sum().backward()
        mon.end_step()
        snap = mon.snapshot()
        mon.detach()
        grads.append([snap.stats[n].grad_rms for n in ("act", "act#1")])
    plain, checkpointed = grads
    assert plain[0] != pytest.approx(plain[1], rel=0.1)
    assert checkpointed == pytest.approx(plain, rel=1e-6)


def test_calls_repeated_inside_one_checkpointed_region_keep_their_gradients() -> None:
    """A reentrant checkpoint re-runs the calls of one region in forward order (regions last first):
    a ResNet block's shared ReLU, or F.silu called twice, gets each call's gradient back at its call."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.act = nn.Linear(6, 6), nn.Linear(6, 6), nn.ReLU()

        def forward(self, h):
            h = F.silu(self.act(self.fc1(h)))
            return F.silu(self.act(self.fc2(h)) * torch.arange(1.0, 7.0))  # unequal: the calls' gradients differ

    class Net(nn.Module):
        def __init__(self, use_checkpoint: bool) -> None:
            super().__init__()
            self.blocks, self.head = nn.ModuleList([Block(), Block()]), nn.Linear(6, 1)
            self.use_checkpoint = use_checkpoint

        def forward(self, x):
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=True) if self.use_checkpoint else block(x)
            return self.head(x)

    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)
        model = Net(use_checkpoint)
        mon = ActivationMonitor(model).attach()
        mon.begin_step()
        model(torch.randn(5, 6, requires_grad=True)).pow(2).sum().backward()
        mon.end_step()
        snap = mon.snapshot()
        mon.detach()
        grads.append({name: st.grad_rms for name, st in snap.stats.items()})
    plain, checkpointed = grads
    assert sorted(plain) == sorted(checkpointed) and {"blocks.0.act#1", "blocks.1:silu#1"} <= set(plain)
    assert plain["blocks.0.act"] != pytest.approx(plain["blocks.0.act#1"], rel=0.1)
    assert checkpointed == pytest.approx(plain, rel=1e-6)


def _checkpointed_snapshot(reentrant: bool | None, train_step) -> Any:
    torch.manual_seed(0)
    model = Checkpointed(reentrant)
    mon = ActivationMonitor(model).attach()
    x = torch.randn(3, 4, requires_grad=bool(reentrant))  # a reentrant region needs an input with grad
    for _ in range(2):
        train_step(mon, model, x)
    snap = mon.snapshot()
    mon.detach()
    return snap


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_does_not_double_count(reentrant: bool, train_step) -> None:
    """The re-run in backward is not measured again. A reentrant region's first forward runs under
    no_grad: the module's and the functional call's gradients come from their re-run instead."""
    plain = _checkpointed_snapshot(None, train_step)
    snap = _checkpointed_snapshot(reentrant, train_step)
    assert list(snap.sites) == ["inner.block.1", "inner:relu"]
    assert all(st.calls == 2 and st.elements == 2 * 12 for st in snap.stats.values())
    for name, st in snap.stats.items():
        assert st.grad_rms is not None and st.grad_rms > 0, name
        assert st.grad_rms == pytest.approx(plain.stats[name].grad_rms, rel=1e-6), name
