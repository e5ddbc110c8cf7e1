"""A stand-in for ``torchvision`` so that timm imports with the project's CPU build of torch.

timm imports torchvision at import time (``torchvision.ops.misc.FrozenBatchNorm2d`` in its layers,
datasets and transforms in ``timm.data``), but the zoo only builds models from configs. The
torchvision wheels on the package index are built against the CUDA torch: with the CPU torch its
C++ ops do not load and ``import torchvision`` fails (``operator torchvision::nms does not exist``).

:func:`install` does nothing when the real torchvision imports. Otherwise it answers every
``torchvision.*`` import with a stub module: ``FrozenBatchNorm2d`` is real (a few lines), any other
name is a placeholder class that raises when instantiated, so code that really needs torchvision
fails loudly instead of silently doing something else.

Side effect, in the process that installs it: ``importlib.util.find_spec("torchvision")`` succeeds,
so libraries that probe for torchvision that way (transformers' ``is_torchvision_available``,
lightning's ``RequirementCache``) report it available. The zoo's models never use it; install it
only where timm must import (tests/zoo/conftest.py does, when timm is installed).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

import torch
import torch.nn as nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (torchvision.ops.misc's semantics)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def _refuse(self: Any, *args: Any, **kwargs: Any) -> None:
    raise RuntimeError(f"{type(self).__name__} needs the real torchvision, which is not importable here")


class _Placeholder(type):
    """A class for any torchvision name; attribute access (``InterpolationMode.BILINEAR``) gives
    another placeholder, so module-level tables in timm.data build."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(f"{cls.__name__}.{name}", (), {"__init__": _refuse})


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = _Placeholder(name, (), {"__init__": _refuse})
        setattr(self, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ == "torchvision.ops.misc":
            module.FrozenBatchNorm2d = FrozenBatchNorm2d  # type: ignore[attr-defined]


def install() -> str:
    """Make ``import torchvision`` work; returns ``"real"`` or ``"stand-in"``."""
    if any(isinstance(f, _StubFinder) for f in sys.meta_path):
        return "stand-in"
    try:
        import torchvision  # noqa: F401

        return "real"
    except Exception:  # noqa: BLE001 - the CUDA wheel with the CPU torch raises RuntimeError, not ImportError
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    sys.meta_path.insert(0, _StubFinder())
    return "stand-in"
