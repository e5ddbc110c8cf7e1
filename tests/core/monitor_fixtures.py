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
