"""Shared pieces of the ecosystem tests: a tiny model and Trainer for either Lightning flavour."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

FLAVOURS = ("pytorch_lightning", "lightning.pytorch")


def flavour_module(flavour: str) -> Any:
    """The Lightning package of one flavour (skips the test where it is not installed)."""
    return pytest.importorskip(flavour)


def callback_class(flavour: str) -> type:
    """That flavour's ActivationDiagnostics."""
    if flavour == "pytorch_lightning":
        from act_diagnostics.callbacks.pl_callback import ActivationDiagnostics
    else:
        from act_diagnostics.callbacks.lightning_callback import ActivationDiagnostics
    return ActivationDiagnostics


def tiny_module_class(flavour: str, fail_at: int | None = None) -> type:
    """A LightningModule of ``flavour``: Linear -> ReLU -> Linear -> functional sigmoid gate -> head."""
    L = flavour_module(flavour)

    class Tiny(L.LightningModule):
        def __init__(self, width: int = 16, lr: float = 0.05) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, width)
            self.act = nn.ReLU()
            self.fc2 = nn.Linear(width, width)
            self.head = nn.Linear(width, 3)
            self.lr = lr

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act(self.fc1(x))
            h = torch.tanh(self.fc2(h))
            return self.head(h)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if fail_at is not None and self.global_step == fail_at:
                raise RuntimeError("boom: simulated failure")
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    Tiny.__qualname__ = Tiny.__name__ = f"Tiny_{flavour.replace('.', '_')}"
    return Tiny


def loader(n: int = 128, batch: int = 16, seed: int = 0) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=batch)


def make_trainer(flavour: str, tmp_path: Path, callbacks: list | None = None, logger: Any = True, **kw: Any) -> Any:
    """A quiet CPU Trainer of ``flavour`` logging to TensorBoard under ``tmp_path/tb``."""
    L = flavour_module(flavour)
    loggers = importlib.import_module(f"{flavour}.loggers")
    if logger is True:
        logger = loggers.TensorBoardLogger(str(tmp_path), name="tb")
    kw.setdefault("max_steps", 12)
    return L.Trainer(
        logger=logger,
        callbacks=callbacks or [],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=4,
        **kw,
    )


def fit(trainer: Any, module: Any, data: Any = None) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, data if data is not None else loader())


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    flavour_module(request.param)
    return request.param


def seq_module_class(flavour: str, fail_at: int | None = None) -> type:
    """A LightningModule of ``flavour`` around any ``net`` (inputs of 8 features, 3 classes)."""
    L = flavour_module(flavour)

    class Seq(L.LightningModule):
        def __init__(self, net: nn.Module, lr: float = 0.1) -> None:
            super().__init__()
            self.net = net
            self.lr = lr

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if fail_at is not None and self.global_step == fail_at:
                raise RuntimeError("boom: simulated failure")
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    return Seq


def deep_sigmoid_net(depth: int = 5, width: int = 16) -> nn.Sequential:
    """Sigmoid hidden layers: the classic set-up that act_diagnostics warns about."""
    layers: list[nn.Module] = [nn.Linear(8, width), nn.Sigmoid()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    layers.append(nn.Linear(width, 3))
    return nn.Sequential(*layers)
