"""Structural facts about the model and its batches that the rules interpret (torch only, no judging).

* **Parameter scales** (:func:`parameter_scales`): the largest ``|value|`` of each parameter that is
  not a bias, read once at attach with one host copy. A scale initialised at ~0 (LayerScale's
  gamma 1e-6, ReZero's alpha 0, a zero-initialised last BatchNorm of a residual block, adaLN-zero's
  modulation) shows here; the rules decide what is small.
* **Output layers** (:class:`OutputLayers`): the parametrised layers whose output is a model output
  or a loss input, reached back from that tensor through ops that only move, copy or drop values
  (a view, a reshape, dropout). Learned while the monitor tracks structure.
* **Batch facts** (:class:`BatchFacts`): on detail steps, the rows of the model's first tensor input
  and their spread (the largest ``|row - first row|``, 0 for a batch of identical rows), a device
  scalar read in the log step's one host copy.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

# Autograd nodes that pass values on unchanged (shape, copies, dropout): an output reached through
# them is still the output of the layer before them.
_PASS_THROUGH = (
    "View", "UnsafeView", "Reshape", "Clone", "Permute", "Transpose", "TBackward", "Squeeze", "Unsqueeze",
    "Expand", "Select", "Slice", "Index", "ToCopy", "Alias", "AsStrided", "NativeDropout", "Split", "Unbind",
)
# Nodes walked back from one output before giving up (a long chain of views is not a layer's output).
_MAX_NODES = 32


def parameter_scales(model: nn.Module) -> dict[str, float]:
    """``{parameter name: max |value|}`` for every initialised parameter except biases, in one host
    copy. Parameters not materialised yet (lazy, on the meta device) or sharded (DTensor) are left out."""
    names: list[str] = []
    params: list[Tensor] = []
    with torch._C.DisableTorchFunction(), torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1].endswith("bias") or isinstance(p, nn.parameter.UninitializedParameter):
                continue
            if p.is_meta or p.numel() == 0 or type(p.data).__name__ == "DTensor":
                continue
            names.append(name)
            params.append(p.detach())
        if not params:
            return {}
        # One foreach call and one copy per device holding parameters (one for a model on one
        # device). The infinity norm is the largest |value|, read without an abs() copy of each.
        by_device: dict[torch.device, list[int]] = {}
        for i, param in enumerate(params):
            by_device.setdefault(param.device, []).append(i)
        values: list[float] = [0.0] * len(params)
        for idx in by_device.values():
            maxima = torch._foreach_norm([params[i] for i in idx], ord=math.inf)
            for i, v in zip(idx, torch.stack([m.float() for m in maxima]).tolist()):
                values[i] = float(v)
    return dict(zip(names, values))


class OutputLayers:
    """Names of the parametrised layers whose output is a model output or a loss input."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def note(self, value: Any, layer_out: dict[int, tuple[str, str, Tensor]]) -> None:
        """``value`` (a tensor, or a model's output structure) leaves the model or enters a loss;
        ``layer_out`` maps id(layer output) -> (layer, type, output) for this step's layers."""
        with torch._C.DisableTorchFunction():
            nodes = {id(out.grad_fn): name for name, _, out in layer_out.values() if out.grad_fn is not None}
        if not nodes:
            return
        with torch._C.DisableTorchFunction():
            for tensor in _tensors(value):
                self._walk(tensor, nodes)

    def _walk(self, tensor: Tensor, nodes: dict[int, str]) -> None:
        todo = [tensor.grad_fn] if tensor.grad_fn is not None else []
        seen = 0
        while todo and seen < _MAX_NODES:
            node = todo.pop()
            seen += 1
            layer = nodes.get(id(node))
            if layer is not None:
                self.names.add(layer)
                continue
            if any(part in type(node).__name__ for part in _PASS_THROUGH):
                todo.extend(n for n, _ in node.next_functions if n is not None)


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):  # also Hugging Face ModelOutput (an OrderedDict)
        return [t for item in value.values() for t in _tensors(item)]
    return []


class BatchFacts:
    """Rows and spread of the model's input on the window's latest detail step."""

    def __init__(self) -> None:
        self.rows: int | None = None
        self._spread: Tensor | None = None

    def note(self, args: tuple, detail: bool) -> None:
        """At the model's forward pre-hook: on detail steps, record the first tensor input's rows
        and (on the device, no sync) the largest difference of any row from the first."""
        if not detail:
            return
        x = next((a for a in args if isinstance(a, Tensor)), None)
        if x is None:
            return
        # Our ops (even .dim(), .shape) must not reach the user's or our own TorchFunctionMode.
        with torch._C.DisableTorchFunction():
            if x.dim() == 0 or x.shape[0] == 0:
                return
            rows = x.detach().reshape(x.shape[0], -1)
            if rows.dtype == torch.bool:
                rows = rows.to(torch.uint8)
            if rows.shape[1]:
                spread = (rows.to(torch.float64) - rows[:1].to(torch.float64)).abs().amax()
            else:
                spread = rows.new_zeros((), dtype=torch.float64)
            self._spread = spread.reshape(1)
            self.rows = int(x.shape[0])

    def pending(self) -> Tensor | None:
        """The device scalar to add to the log step's host copy (None when none was recorded)."""
        return self._spread

    def read(self, host: list[float] | None) -> dict[str, Any]:
        """The Snapshot fields, from the host copy of :meth:`pending`'s tensor (None when there was
        none); the next window starts empty."""
        spread = host[0] if host is not None else None
        fields = {"batch_rows": self.rows, "batch_spread": spread}
        self.rows, self._spread = None, None
        return fields
