"""Small readings of torch modules and values that several parts of the monitor share."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor


def compiled_modules(model: nn.Module) -> list[str]:
    """Names of ``model``'s torch.compile'd modules: ``torch.compile(m)`` wrappers, and modules
    compiled in place with ``m.compile()`` (the root is ``"<model>"``)."""
    wrappers: tuple[type, ...] = ()
    try:
        from torch._dynamo.eval_frame import OptimizedModule

        wrappers = (OptimizedModule,)
    except ImportError:  # pragma: no cover - torch without dynamo
        pass
    return [
        name or "<model>"
        for name, m in model.named_modules()
        if isinstance(m, wrappers) or getattr(m, "_compiled_call_impl", None) is not None
    ]


def own_parameters(module: nn.Module) -> list[nn.Parameter]:
    """A layer's own parameters, including those a parametrization keeps for it (weight_norm,
    spectral_norm: ``parametrizations.weight.original0/1``), not those of its child layers."""
    params = list(module.parameters(recurse=False))
    parametrizations = getattr(module, "parametrizations", None)
    if isinstance(parametrizations, nn.Module):
        params += list(parametrizations.parameters())
    return params


def has_params(module: nn.Module) -> bool:
    """A parametrised layer (Linear, Conv, a norm): its output is what feeds an activation."""
    return bool(own_parameters(module))


def is_leaf(module: nn.Module) -> bool:
    return not any(True for _ in module.children())


def in_backward() -> bool:
    """True while autograd runs a backward pass (activation checkpointing re-runs forward there)."""
    return torch._C._current_graph_task_id() != -1


def first_tensor(value: Any) -> Tensor | None:
    """A module's output tensor: the value itself, or the first item of a tuple or list."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    return None


def tensors(value: Any) -> list[Tensor]:
    """Every tensor in a (nested) output: tuples, lists, dicts and dataclasses."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for item in value for v in tensors(item)]
    if isinstance(value, dict):
        return [v for item in value.values() for v in tensors(item)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [v for f in dataclasses.fields(value) for v in tensors(getattr(value, f.name, None))]
    return []
