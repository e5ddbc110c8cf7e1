"""Whole-model facts that belong to no activation site.

A model may have no activation site at all (a stack of Linear layers), and still deserve findings:

* **Layer links** (structure steps): which parametrised layer's output went straight into which
  next parametrised layer, through same-value ops only (views, reshapes, dropout, flatten), and
  into nothing else: an output that also fed another layer or was combined with other values (a
  residual sum, a product, a concatenation) is a shared representation, not a link. Two linear
  layers linked this way compose into one linear map (rules: missing-nonlinearity).
* **The model's input** (structure and detail steps): sum, sum of squares, count and max |x| of
  the input of the first parametrised layer the forward feeds floating values (an Embedding's
  integer input is no such input), on the device (rules: input-scale).
* **Losses** (structure steps through the tracer; every measured step through the Lightning
  callback): how many loss values were seen, and how many were NaN/Inf, counted on the device
  (rules: non-finite, when no activation site shows the NaN).

The device totals are one small vector, copied to the host in the log step's one copy
(:meth:`ActivationMonitor.snapshot` appends it to the histogram samples). Under DDP they are the
rank's own (a sample of the data; they never enter the collective). Tensors seen are held weakly:
none outlives its step.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

# Ops that combine a value with others: a layer output they read is not only the next layer's input.
COMBINING = {
    torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__, Tensor.add_, Tensor.__iadd__, torch.sub, Tensor.sub,
    Tensor.__sub__, Tensor.__rsub__, torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__, Tensor.mul_,
    torch.div, Tensor.div, Tensor.__truediv__, torch.cat, torch.concat, torch.stack, torch.matmul, Tensor.matmul,
    Tensor.__matmul__, torch.bmm, Tensor.bmm, torch.einsum, torch.where,
}
# Matrix products: with a parameter of a module outside torch.nn as the weight (x.mm(self.w1), a
# tutorial's tensor-only net), a layer the module hooks cannot see, named after the parameter.
MATMULS = {torch.mm, Tensor.mm, torch.matmul, Tensor.matmul, Tensor.__matmul__, Tensor.__rmatmul__, torch.nn.functional.linear}
# Adds that keep a layer's output one (a bias parameter added to a matrix product).
_BIAS_ADDS = {torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__}

# Columns of the device vector (float64; float32 on MPS); element and loss counts stay on the host.
IN_SUM, IN_SUMSQ, IN_MAX_ABS, LOSS_NONFINITE = range(4)
# The type name of a layer made by a matrix product with a bare parameter (note_matmul).
MATMUL = "matmul"
N_TOTALS = 4
# Input elements read per call (the leading ones: whole rows of a contiguous batch), as the sites'
# statistics read at most sample_elements per call.
INPUT_SAMPLE_ELEMENTS = 2**18


@dataclass
class NetworkFacts:
    """Snapshot.network: the whole-model facts of one window (see the module docstring)."""

    # (layer, its type, next layer, its type): the first layer's output fed the second directly.
    layer_links: list[tuple[str, str, str, str]] = field(default_factory=list)
    # Per linked layer: (input width, output width, grouped): features or channels, None if unknown;
    # grouped for a convolution with groups > 1 (depthwise: a factorised convolution).
    layer_widths: dict[str, tuple[int | None, int | None, bool]] = field(default_factory=dict)
    # The first parametrised layer the forward fed floating values (after any Embedding, whose input
    # is integers), and whether an Embedding ran before it (its input then holds learned vectors).
    first_layer: str | None = None
    first_layer_type: str | None = None
    after_embedding: bool = False
    input_elements: int = 0  # elements of the first layer's input measured in this window
    input_mean: float | None = None
    input_std: float | None = None
    input_rms: float | None = None
    input_max_abs: float | None = None
    losses: int = 0  # loss values seen in this window
    losses_nonfinite: int = 0  # of which NaN/Inf


def _version(t: Tensor) -> int:
    """``t``'s version counter (bumped by every inplace op on it or its views); inference tensors
    keep none."""
    return -1 if t.is_inference() else t._version


def _own_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or isinstance(getattr(module, "parametrizations", None), nn.Module)


def layer_widths(module: nn.Module) -> tuple[int | None, int | None, bool]:
    """(input width, output width, grouped) read from a layer's attributes."""
    for a, b in (("in_features", "out_features"), ("in_channels", "out_channels"), ("num_features", "num_features")):
        if isinstance(getattr(module, a, None), int) and isinstance(getattr(module, b, None), int):
            return getattr(module, a), getattr(module, b), int(getattr(module, "groups", 1) or 1) > 1
    return None, None, False


class NetworkWatch:
    """Learns the layer links, measures the first layer's input and counts non-finite losses."""

    def __init__(self) -> None:
        # (layer, next layer) -> (types, the link held on every forward seen so far)
        self.links: dict[tuple[str, str], tuple[str, str, bool]] = {}
        # Links seen in this step's forward, judged at read(): (uses of the source's output, link).
        self._pending: list[tuple[dict[str, Any], tuple[str, str], tuple[str, str]]] = []
        self.widths: dict[str, tuple[int | None, int | None, bool]] = {}
        self.first_layer: tuple[str, str] | None = None
        self.after_embedding = False  # a layer took integers (an Embedding) before the first layer
        # Layer outputs and views of them: (tensor, layer, type, version counter when recorded, uses of
        # the layer's output: {"layers": layers it fed, "combined": combined with other values}).
        self._outputs: dict[int, tuple[weakref.ref[Tensor], str, str, int, dict[str, Any]]] = {}
        self._totals: Tensor | None = None
        self._input_elements = 0
        self._losses = 0
        self._param_names: dict[int, str] | None = None  # id -> name of the bare parameters (MATMULS)
        self._param_ids: set[int] = set()  # every parameter of the model (bias adds)
        self._last_loss: weakref.ref | None = None
        self.failure: BaseException | None = None  # an internal error switched these facts off

    # ------------------------------------------------------------------ structure
    def layer_output(self, name: str, type_name: str, out: Tensor) -> None:
        """A parametrised layer returned ``out`` (structure steps)."""
        with torch._C.DisableTorchFunction():
            self._outputs[id(out)] = (weakref.ref(out), name, type_name, _version(out), {"layers": set(), "combined": False})

    def _layer_of(self, value: Any) -> tuple[str, str, dict[str, Any]] | None:
        """The layer whose output ``value`` holds, unchanged (an inplace op since, ReLU(inplace=True)
        after a BatchNorm, bumped its version counter, which views share), and that output's uses."""
        if not isinstance(value, Tensor):
            return None
        entry = self._outputs.get(id(value))
        if entry is None or entry[0]() is not value:
            return None
        with torch._C.DisableTorchFunction():
            return (entry[1], entry[2], entry[4]) if _version(value) == entry[3] else None

    def follow_layer_output(self, value: Any, result: Any) -> None:
        """``result`` holds ``value``'s values (a view, reshape, dropout): a layer's output still."""
        layer = self._layer_of(value)
        if layer is not None and isinstance(result, Tensor):
            with torch._C.DisableTorchFunction():
                self._outputs[id(result)] = (weakref.ref(result), layer[0], layer[1], _version(result), layer[2])

    def _bare_parameters(self, model: nn.Module) -> dict[int, str]:
        """2-D parameters of modules outside torch.nn (whose own layers the module hooks see), by id."""
        if self._param_names is None:
            self._param_ids = {id(p) for p in model.parameters()}
            self._param_names = {
                id(p): f"{prefix}.{name}" if prefix else name
                for prefix, module in model.named_modules()
                if not any(c is not nn.Module and c.__module__.startswith("torch.nn") for c in type(module).__mro__)
                for name, p in module.named_parameters(recurse=False)
                if p.dim() == 2
            }
        return self._param_names

    def note_matmul(self, model: nn.Module, args: tuple, kwargs: dict, result: Any) -> bool:
        """``x.mm(w)``, ``x @ w``, ``F.linear(x, w)`` with a bare parameter ``w``: a linear layer of its
        own (True); any other product is not (False)."""
        params = self._bare_parameters(model)
        operands = [*args[:2], *(v for k, v in kwargs.items() if k in ("weight", "other", "mat2"))]
        weight = next((v for v in operands if isinstance(v, Tensor) and id(v) in params), None)
        if weight is None or not isinstance(result, Tensor):
            return False
        name = params[id(weight)]
        other = next((v for v in operands if v is not weight), None)
        with torch._C.DisableTorchFunction():
            source = self._layer_of(other)
            if source is not None and source[0] != name:
                source[2]["layers"].add(name)
                self._pending.append((source[2], (source[0], name), (source[1], MATMUL)))
            self.widths.setdefault(name, (int(weight.shape[0]), int(weight.shape[1]), False))
        self.layer_output(name, MATMUL, result)
        return True

    def note_combined(self, args: tuple, kwargs: dict, func: Any = None, result: Any = None, model: nn.Module | None = None) -> None:
        """A COMBINING op read these operands: a layer output among them is more than a layer's input,
        except a bias parameter added to it (``x.mm(w) + b``), whose result is still that layer's."""
        if func in _BIAS_ADDS and model is not None and len(args) == 2 and not kwargs:
            self._bare_parameters(model)
            params = self._param_ids
            layer, bias = (args[0], args[1]) if id(args[1]) in params else (args[1], args[0])
            if id(bias) in params and self._layer_of(layer) is not None:
                self.follow_layer_output(layer, result)
                return
        for value in (*args, *kwargs.values()):
            for t in value if isinstance(value, (list, tuple)) else (value,):
                layer = self._layer_of(t)
                if layer is not None:
                    layer[2]["combined"] = True

    def layer_input(self, name: str, module: nn.Module, args: tuple, structure: bool, detail: bool) -> None:
        """A module's forward starts with ``args``: link it to the layer that produced them, and
        measure the model's input at the first parametrised layer. Never raises into the forward."""
        if self.failure is not None or not (structure or detail):
            return
        try:
            with torch._C.DisableTorchFunction():  # our reads reach no TorchFunctionMode (a FLOP counter)
                self._layer_input(name, module, args, structure, detail)
        except Exception as exc:  # noqa: BLE001 - diagnostics must never break training
            self.failure = exc
            warnings.warn(
                f"act_diagnostics stopped its whole-model checks after an internal error ({type(exc).__name__}: {exc}); "
                "training and the activation sites are unaffected.",
                RuntimeWarning,
                stacklevel=3,
            )

    def _layer_input(self, name: str, module: nn.Module, args: tuple, structure: bool, detail: bool) -> None:
        if not _own_params(module):
            return
        type_name = type(module).__name__
        if structure:
            if self.first_layer is None:
                x = args[0] if args else None
                if isinstance(x, Tensor) and x.is_floating_point():
                    self.first_layer = (name, type_name)
                elif isinstance(x, Tensor):
                    self.after_embedding = True
            self.widths.setdefault(name, layer_widths(module))
            for arg in args:
                source = self._layer_of(arg)
                if source is not None and source[0] != name:
                    source[2]["layers"].add(name)
                    self._pending.append((source[2], (source[0], name), (source[1], type_name)))
        if (structure or detail) and self.first_layer is not None and self.first_layer[0] == name and args:
            x = args[0]
            if isinstance(x, Tensor) and x.is_floating_point() and x.numel():
                self._observe_input(x.detach())

    # ------------------------------------------------------------------ device totals
    def _vector(self, device: torch.device) -> Tensor:
        if self._totals is None or self._totals.device != device:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            with torch.inference_mode(False):
                old = self._totals
                self._totals = torch.zeros(N_TOTALS, dtype=dtype, device=device)
                if old is not None:
                    self._totals.copy_(old.to(device, dtype))
        return self._totals

    def _observe_input(self, x: Tensor) -> None:
        flat = x.reshape(-1)[:INPUT_SAMPLE_ELEMENTS]
        if flat.dtype in (torch.float16, torch.bfloat16):
            flat = flat.float()
        totals = self._vector(flat.device)
        totals[IN_SUM : IN_SUMSQ + 1].add_(torch.stack((flat.sum(), torch.dot(flat, flat))).to(totals.dtype))
        self._input_elements += flat.numel()
        torch.maximum(totals[IN_MAX_ABS], flat.abs().max().to(totals.dtype), out=totals[IN_MAX_ABS])

    def observe_loss(self, loss: Any) -> None:
        """Count a loss value, and whether it is NaN/Inf (on its device, no sync)."""
        if not isinstance(loss, Tensor) or (self._last_loss is not None and self._last_loss() is loss):
            return  # seen by the tracer (F.cross_entropy) and again by the callback (the same tensor)
        with torch._C.DisableTorchFunction():
            if not loss.is_floating_point() or not loss.numel():
                return
            self._last_loss = weakref.ref(loss)
            value = loss.detach()
            totals = self._vector(value.device)
            totals[LOSS_NONFINITE].add_(value.isfinite().logical_not().any().to(totals.dtype))
        self._losses += 1

    def device_totals(self) -> Tensor | None:
        """The window's device vector, for the snapshot's one host copy (None if never used)."""
        return self._totals

    def _judge_links(self) -> None:
        """A link holds when the source's output fed that one layer and was combined with nothing;
        once broken on any forward, it stays broken."""
        for uses, key, types in self._pending:
            held = len(uses["layers"]) == 1 and not uses["combined"]
            self.links[key] = (*types, held and self.links.get(key, (None, None, True))[2])
        self._pending.clear()

    def read(self, host: list[float] | None) -> NetworkFacts:
        """The window's facts from the host copy of :meth:`device_totals`."""
        self._judge_links()
        facts = NetworkFacts(
            layer_links=[(a, ta, b, tb) for (a, b), (ta, tb, held) in self.links.items() if held],
            layer_widths=dict(self.widths),
            first_layer=self.first_layer[0] if self.first_layer else None,
            first_layer_type=self.first_layer[1] if self.first_layer else None,
            after_embedding=self.after_embedding,
            losses=self._losses,
        )
        if host is None:
            return facts
        n = self._input_elements
        facts.losses_nonfinite = int(round(host[LOSS_NONFINITE])) if math.isfinite(host[LOSS_NONFINITE]) else facts.losses
        if n > 0:
            mean, mean_sq = host[IN_SUM] / n, host[IN_SUMSQ] / n
            facts.input_elements = n
            facts.input_mean = mean
            facts.input_rms = math.sqrt(mean_sq) if mean_sq >= 0 else float("nan")
            var = mean_sq - mean * mean
            facts.input_std = math.sqrt(max(var, 0.0)) if math.isfinite(var) else float("nan")
            facts.input_max_abs = host[IN_MAX_ABS]
        return facts

    def reset(self) -> None:
        """Start a new window (the links and the first layer stay)."""
        if self._totals is not None:
            with torch._C.DisableTorchFunction():
                self._totals.zero_()
        self._input_elements = self._losses = 0
        self._outputs.clear()  # dead references of past steps
