"""Tiny Lightning modules and a Trainer factory shared by the production tests (and the DDP script)."""

from __future__ import annotations

import warnings
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from act_diagnostics.callbacks.options import MonitorOptions, OutputOptions, RuleOptions  # noqa: F401 - for the tests
from act_diagnostics.callbacks.pl_callback import ActivationDiagnostics

WIDTH = 8
CLASSES = 3


def dataset(n: int = 64, seed: int = 0, width: int = WIDTH) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, width, generator=g), torch.randint(0, CLASSES, (n,), generator=g))


def loader(n: int = 64, batch_size: int = 8, seed: int = 0, width: int = WIDTH) -> DataLoader:
    return DataLoader(dataset(n, seed, width), batch_size=batch_size, shuffle=False)


def mlp(width: int = WIDTH, depth: int = 2, dead: bool = False) -> nn.Sequential:
    """Linear/ReLU blocks and a Linear head; ``dead`` gives the first Linear a bias of -10 (dead ReLU)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, CLASSES))
    net = nn.Sequential(*layers)
    if dead:
        with torch.no_grad():
            net[0].bias.fill_(-10.0)
    return net


class Classifier(pl.LightningModule):
    """Cross-entropy on ``net(x)``; a functional GELU in forward so the tracer is exercised too."""

    def __init__(self, net: nn.Module | None = None, lr: float = 0.05, functional: bool = True) -> None:
        super().__init__()
        self.net = net if net is not None else mlp()
        self.lr = lr
        self.functional = functional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x)
        return F.gelu(h) if self.functional else h

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def diagnostics(**kwargs: Any) -> ActivationDiagnostics:
    """The callback, quiet: no report files, no console table (both tested elsewhere)."""
    kwargs.setdefault("verbose", False)
    kwargs.setdefault("outputs", OutputOptions(report=False))
    return ActivationDiagnostics(**kwargs)


def trainer(tmp_path: Any, callbacks: list, **kwargs: Any) -> pl.Trainer:
    kwargs.setdefault("max_steps", 4)
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        accelerator="cpu",
        devices=kwargs.pop("devices", 1),
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def hook_count(model: nn.Module) -> int:
    """Forward hooks and pre-hooks registered on any submodule."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def our_warnings(records: list[warnings.WarningMessage]) -> list[str]:
    return [str(r.message) for r in records if "act_diagnostics" in str(r.message) or r.category.__module__.startswith("act_diagnostics")]


class SnapshotRecorder(pl.Callback):
    """Placed after the diagnostics callback: keeps every snapshot it publishes, in order."""

    def __init__(self, diag: ActivationDiagnostics) -> None:
        self.diag = diag
        self.snapshots: list = []

    def _take(self) -> None:
        snap = self.diag.last_snapshot
        if snap is not None and (not self.snapshots or snap is not self.snapshots[-1]):
            self.snapshots.append(snap)

    def on_train_batch_end(self, *args: Any) -> None:
        self._take()

    def on_train_end(self, *args: Any) -> None:
        pass
