"""One way to train any zoo model through the Lightning callback, and what a run gives back."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from act_diagnostics import ActivationDiagnostics

STEPS = 40  # tens of steps: enough for the loss to fall and for four log windows
LOG_EVERY = 10  # Trainer(log_every_n_steps=...): the callback follows it


@dataclass(frozen=True)
class Case:
    """A zoo model: how to build it, its data, its loss and the optimiser people train it with."""

    name: str
    build: Callable[[], nn.Module]
    data: Callable[[], tuple[torch.Tensor, ...]]
    loss: Callable[[nn.Module, tuple], torch.Tensor]
    optimizer: Callable[[Any], torch.optim.Optimizer]
    batch_size: int = 32
    steps: int = STEPS
    log_every: int = LOG_EVERY
    # A fault's event at a training step: perturb(step, batch) -> the batch trained on (a scaled
    # batch); None: the run as people train it.
    perturb: Callable[[int, tuple], tuple] | None = None


class ZooModule(pl.LightningModule):
    def __init__(self, net: nn.Module, case: Case) -> None:
        super().__init__()
        self.net = net
        self.case = case
        self.losses: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        batch = tuple(batch)
        if self.case.perturb is not None:
            batch = self.case.perturb(self.global_step, batch)
        loss = self.case.loss(self.net, batch)
        self.losses.append(loss.detach())  # read once after fit: no host sync per step
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.case.optimizer(self.net.parameters())


def diagnostics(every_step: bool) -> ActivationDiagnostics:
    """The callback as a user adds it: defaults, or every step measured."""
    return ActivationDiagnostics(measure_every_n_steps=1) if every_step else ActivationDiagnostics()


@dataclass
class Run:
    case: Case
    net: nn.Module
    callback: ActivationDiagnostics
    losses: list[float]
    seconds: float
    findings: list = field(default_factory=list)

    def serious(self) -> list:
        """Warning and error findings (info is allowed in a healthy model)."""
        return [f for f in self.findings if f.severity in ("warning", "error")]

    def rules(self) -> set[str]:
        return {f.rule for f in self.serious()}

    def describe(self, findings: list | None = None) -> str:
        shown = self.findings if findings is None else findings
        lines = [f"{self.case.name}: loss {self.losses[0]:.3f} -> {self.losses[-1]:.3f} in {len(self.losses)} steps, {self.seconds:.1f}s"]
        lines += [f"  [{f.severity}] {f.rule} @ {f.site!r} step {f.step} ({f.status}): {f.message} | {f.evidence_text()}" for f in shown]
        return "\n".join(lines)


def loader(case: Case, data: tuple[torch.Tensor, ...] | None = None) -> DataLoader:
    tensors = case.data() if data is None else data
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(*tensors), batch_size=case.batch_size, shuffle=True, drop_last=True, generator=g)


def fit(case: Case, root: Any, every_step: bool = False, net: nn.Module | None = None,
        data: tuple[torch.Tensor, ...] | None = None, steps: int | None = None, seed: int = 0) -> Run:
    """Build (unless ``net`` is given) and train ``case`` for ``steps`` with the callback."""
    torch.manual_seed(seed)
    net = case.build() if net is None else net
    module = ZooModule(net, case)
    cb = diagnostics(every_step)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps or case.steps, log_every_n_steps=case.log_every,
        callbacks=[cb], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(root), num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(module, loader(case, data))
    seconds = time.perf_counter() - start
    losses = torch.stack(module.losses).float().tolist()
    if cb.failure is not None:  # diagnostics switched off: the run says nothing about the rules
        trace = "".join(traceback.format_exception(cb.failure))
        raise AssertionError(f"act_diagnostics disabled itself in {case.name}:\n{trace}")
    findings = list(cb.report.findings) if cb.report is not None else []
    return Run(case, net, cb, losses, seconds, findings)
