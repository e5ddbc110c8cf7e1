"""Tiny models and probes shared by the core tests."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class ModulesOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Dropout(0.0), nn.Linear(8, 2))

    def forward(self, x):
        return self.net(x)


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        outs = [
            torch.relu(h), F.relu(h), F.relu_(h.clone()), F.gelu(h), F.silu(h), torch.sigmoid(h), torch.tanh(h),
            F.softmax(h, dim=-1), F.log_softmax(h, dim=-1), F.leaky_relu(h), F.elu(h), F.mish(h), h.relu(),
            h.softmax(-1),
        ]
        return torch.stack(outs).sum(0)


class CheckpointedBody(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 4))

    def forward(self, x):
        return F.relu(self.block(x))  # a functional call inside the checkpointed region


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool | None) -> None:
        super().__init__()
        self.reentrant = reentrant  # None: no checkpoint
        self.inner = CheckpointedBody()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if self.reentrant is None:
            return self.fc(self.inner(x))
        return self.fc(checkpoint(self.inner, x, use_reentrant=self.reentrant))


class CountTransfers:
    """Counts device-to-host reads (item, tolist, cpu, numpy, bool/float/int of a tensor) from Python,
    including those made under torch._C.DisableTorchFunction (the monitor's own maths)."""

    READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        for name in self.READS:
            original = getattr(torch.Tensor, name)

            def wrapped(tensor, *a, __orig=original, **k):
                self.count += 1
                return __orig(tensor, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, wrapped)


def hook_counts(model: nn.Module) -> list[tuple[int, int]]:
    """(forward hooks, forward pre-hooks) of every module."""
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def no_hooks(model: nn.Module) -> bool:
    return all(f == 0 and p == 0 for f, p in hook_counts(model))


def mode_stack() -> list:
    """The TorchFunctionModes now on torch's stack."""
    return list(torch.overrides._get_current_function_mode_stack())


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)
        self.act = nn.GELU()

    def forward(self, x):
        return F.softmax(self.fc2(F.relu(self.act(self.fc1(x)))), dim=-1)
