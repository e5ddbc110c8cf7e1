"""Device-to-host transfers made through act_diagnostics: none on non-log steps, a constant number
(<= 2: one ``.cpu()`` and its ``.numpy()``) per log step, whatever the model's depth."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
from prod_models import Classifier, RuleOptions, diagnostics, loader, trainer

import act_diagnostics

PACKAGE_DIR = str(Path(act_diagnostics.__file__).parent)
TRANSFERS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")
# kinds.smooth_tail_threshold computes a per-function constant once per process (lru_cache) on a
# grid it creates on the host: conversions there never touch model data or the device.
HOST_CONSTANTS = ("smooth_tail_threshold",)


class _Counter:
    """Patches Tensor's host-transfer methods; counts calls made from act_diagnostics' code."""

    def __init__(self) -> None:
        self.step = "setup"
        self.counts: Counter = Counter()

    def wrap(self, name: str, real: Any) -> Any:
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            frame, ours = sys._getframe(1), False
            for _ in range(40):  # the caller chain: is act_diagnostics asking?
                if frame is None:
                    break
                if frame.f_code.co_name in HOST_CONSTANTS:
                    ours = False
                    break
                ours = ours or frame.f_code.co_filename.startswith(PACKAGE_DIR)
                frame = frame.f_back
            if ours:
                self.counts[(self.step, name)] += 1
            return real(tensor, *args, **kwargs)

        return counted

    def per_step(self) -> dict:
        out: Counter = Counter()
        for (step, _), n in self.counts.items():
            out[step] += n
        return dict(out)


class _StepMarker(pl.Callback):
    """Runs before the diagnostics callback: labels transfers with the step index."""

    def __init__(self, counter: _Counter) -> None:
        self.counter = counter

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.counter.step = trainer.global_step

    def on_train_end(self, *args: Any) -> None:
        self.counter.step = "end"


def _deep(depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(8, 8), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(8, 3))


def _transfers(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, depth: int) -> dict:
    counter = _Counter()
    for name in TRANSFERS:
        monkeypatch.setattr(torch.Tensor, name, counter.wrap(name, getattr(torch.Tensor, name)))
    cb = diagnostics(log_every_n_steps=3, rules=RuleOptions(warn=False))  # rules on: they read host numbers only
    t = trainer(tmp_path, [_StepMarker(counter), cb], max_steps=7)
    t.fit(Classifier(net=_deep(depth)), loader())
    monkeypatch.undo()
    assert cb.failure is None
    return counter.per_step()


def test_transfers_per_step_are_constant_whatever_the_depth(tmp_path, monkeypatch):
    log_steps = {0, 2, 5}  # preflight, then every third step; step 6 ends a partial window at train end
    shallow = _transfers(tmp_path / "2", monkeypatch, depth=2)
    deep = _transfers(tmp_path / "100", monkeypatch, depth=100)
    for counts in (shallow, deep):
        for step in range(7):
            if step in log_steps:
                assert 1 <= counts.get(step, 0) <= 2, counts
            else:
                assert counts.get(step, 0) == 0, counts
        assert counts.get("end", 0) <= 2  # the last partial window
    assert shallow == deep
