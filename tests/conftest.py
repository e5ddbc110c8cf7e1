"""Shared fixtures for every test layer: deterministic seeds and small monitored training steps."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

# The package is used from the checkout (no install step needed).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same random state."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is fastest, and on a busy 2-core machine several threads
    spin against each other (tiny models ran 30x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def function_mode_stack() -> Callable[[], list]:
    """``function_mode_stack()``: the TorchFunctionModes now on torch's stack (a monitor's tracer)."""
    return lambda: list(torch.overrides._get_current_function_mode_stack())


@pytest.fixture
def make_mlp() -> Callable[..., nn.Sequential]:
    """``make_mlp(width=8, depth=2, act=nn.ReLU, out=3)``: Linear/activation blocks, then a Linear head."""

    def build(width: int = 8, depth: int = 2, act: Callable[[], nn.Module] = nn.ReLU, out: int = 3) -> nn.Sequential:
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), act()]
        layers.append(nn.Linear(width, out))
        return nn.Sequential(*layers)

    return build


@pytest.fixture
def train_step() -> Callable[..., torch.Tensor]:
    """``train_step(monitor, model, x, target=None, detail=False, loss_fn=None)``: one monitored step.

    Runs begin_step, forward, a loss (cross-entropy against ``target``, or the output's mean square),
    backward, measure_param_grads and end_step; returns the model output.
    """

    def run(
        monitor: Any,
        model: nn.Module,
        x: torch.Tensor,
        target: torch.Tensor | None = None,
        detail: bool = False,
        loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        monitor.begin_step(detail=detail)
        out = model(x)
        if loss_fn is not None:
            loss = loss_fn(out, target)
        elif target is not None:
            loss = F.cross_entropy(out, target)
        else:
            loss = out.float().pow(2).mean()
        loss.backward()
        monitor.measure_param_grads()
        monitor.end_step()
        model.zero_grad(set_to_none=True)
        return out

    return run


# ---------------------------------------------------------------------------------- golden files
# `pytest --update-golden` rewrites tests/golden/*.txt from the current output instead of comparing
# against them (docs/development.md). Review the diff before committing.
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False, help="rewrite the golden files in tests/golden/")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))
