"""A TorchFunctionMode that sees functional activations and losses as they are called.

Module hooks never see ``F.relu`` inside a forward (nn.TransformerEncoderLayer's default
activation is a function). While a training step runs, :class:`ActivationTracer` sits on torch's
function-mode stack and hands every call of a known activation function to the monitor (a
:class:`CallRouter`). During the first training steps it also follows activation outputs through
view-like ops, clamps, logs, normalisation and the other ops of :mod:`following` into
multiplications (gates), loss functions and hand-written losses, and tells a
:class:`StructureRecorder` (:class:`~act_diagnostics.core.structure.StructureFacts`), which is how
the rules learn that a softmax feeds ``F.cross_entropy``. An error while following is handed to
``on_error``.

Everything else passes straight through: one dictionary lookup per torch call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from act_diagnostics.core.attention import ATTENTION_FUNCTIONS, EAGER_OPS
from act_diagnostics.core.following import FOLLOWED, HANDWRITTEN_L1, HANDWRITTEN_MSE, RANGE_KEPT, SCALE, Following, note_target_rows
from act_diagnostics.core.kinds import FUNCTIONAL_KINDS
from act_diagnostics.core.logits import LOG_Z_LOSSES, observe_loss_logits
from act_diagnostics.core.network import COMBINING, MATMULS, NetworkWatch
from act_diagnostics.core.routers import ROUTER_FUNCTIONS, call_topk

# Loss functions whose first argument is the model's prediction.
LOSS_FUNCTIONS: dict[Any, str] = {
    F.cross_entropy: "cross_entropy",
    F.nll_loss: "nll_loss",
    F.binary_cross_entropy: "binary_cross_entropy",
    F.binary_cross_entropy_with_logits: "binary_cross_entropy_with_logits",
    F.mse_loss: "mse_loss",
    F.l1_loss: "l1_loss",
    F.smooth_l1_loss: "smooth_l1_loss",
    F.huber_loss: "huber_loss",
    F.kl_div: "kl_div",
    F.poisson_nll_loss: "poisson_nll_loss",
    F.gaussian_nll_loss: "gaussian_nll_loss",
    F.multi_margin_loss: "multi_margin_loss",
    F.multilabel_margin_loss: "multilabel_margin_loss",
    F.multilabel_soft_margin_loss: "multilabel_soft_margin_loss",
    F.soft_margin_loss: "soft_margin_loss",
    F.ctc_loss: "ctc_loss",
}

# Losses whose target is a value the prediction should reach (not a class or a probability).
REGRESSION_LOSSES = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", HANDWRITTEN_MSE, HANDWRITTEN_L1)

# Ops that move dims: after them the output's dim k is no longer the loss input's dim k.
_REORDER = {
    Tensor.permute, torch.permute, Tensor.transpose, torch.transpose, Tensor.swapaxes, torch.swapaxes,
    Tensor.swapdims, torch.swapdims, Tensor.movedim, torch.movedim, Tensor.t, torch.t,
}
# Ops after which a tensor still carries the same values (shape changes, copies, dropout).
_SAME_VALUES = _REORDER | {
    Tensor.view,
    Tensor.view_as,
    Tensor.reshape,
    Tensor.reshape_as,
    torch.reshape,
    Tensor.squeeze,
    torch.squeeze,
    Tensor.unsqueeze,
    torch.unsqueeze,
    Tensor.flatten,
    torch.flatten,
    # Broadcasting repeats values: a gate written x * g.expand_as(x) is still a gate.
    Tensor.expand,
    Tensor.expand_as,
    Tensor.broadcast_to,
    torch.broadcast_to,
    Tensor.repeat,
    Tensor.contiguous,
    Tensor.float,
    Tensor.double,
    Tensor.to,
    Tensor.type,
    Tensor.type_as,
    Tensor.clone,
    Tensor.__getitem__,
    F.dropout,
}
_MULTIPLY = {torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__, Tensor.mul_, Tensor.__imul__}
# Clamps, epsilons, logs, normalisation, reductions and the ops of hand-written losses: following.py.
_FOLLOWED = _SAME_VALUES | _MULTIPLY | set(LOSS_FUNCTIONS) | FOLLOWED


# torch.compiler.is_compiling (torch >= 2.3; dynamo reads it as True while it traces). Older torch:
# never short-circuits, as before it existed.
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)


# Activations whose [0, 1] output gates the values it multiplies.
_GATE_KINDS = ("sigmoid", "hardsigmoid")


def _gates(value: Any, output: Tensor, kind: str, monitor: StructureRecorder) -> bool:
    """Whether multiplying a site's ``output`` by ``value`` makes the site a gate.

    A gate multiplies what the model computed: ``value`` made by an op autograd records, or another
    activation's output (sigmoid(g) * h, o * tanh(c), x * se(x)). Without autograd history (the
    input, a frozen backbone's features, an initial state, learned or broadcast over the batch), a
    sigmoid's output gates values of its own rank that fill every dim but the batch; a mask
    broadcast over the features (padding (N, L, 1), a drop-path flag), or any other activation
    times such a tensor, is masked or scaled and stays a hidden layer. A number, a one-element
    tensor or a parameter of another rank (LayerScale's gamma) only scales."""
    if not isinstance(value, Tensor) or value.numel() <= 1:
        return False
    if value.grad_fn is not None or monitor.produced_by(value) is not None:
        return True
    return kind in _GATE_KINDS and value.dim() == output.dim() and all(v >= o for v, o in zip(value.shape[1:], output.shape[1:]))


class ActivationTracer(TorchFunctionMode):
    """Routes functional activations to a monitor, and while it learns structure, records what
    activation outputs flow into (losses, gates) with a structural-facts recorder."""

    def __init__(self, monitor: CallRouter, facts: StructureRecorder, on_error: Callable[[BaseException], None]) -> None:
        super().__init__()
        self.monitor = monitor
        self.facts = facts
        self.on_error = on_error
        self.following = Following()  # values derived from activation outputs in this step

    def __enter__(self) -> ActivationTracer:
        self.following.clear()  # a new step (or a checkpoint's re-run): nothing derived yet
        return super().__enter__()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_compiling():
            # dynamo tracing a compiled function called in forward: pass through, or it would trace
            # the monitor into the graph and recompile whenever the monitor's state changes.
            return func(*args, **kwargs)
        mon = self.monitor
        if func in FUNCTIONAL_KINDS and mon.enabled and mon.functional and mon.activation_depth == 0:
            return mon.call_functional(func, args, kwargs)
        if func in ATTENTION_FUNCTIONS and mon.functional:
            return mon.call_attention(func, args, kwargs)
        if func in LOG_Z_LOSSES:  # log Z of the logits a classification loss reads
            observe_loss_logits(mon, func, args, kwargs)
        if func in ROUTER_FUNCTIONS:  # top-k over router probabilities (dead-experts)
            return call_topk(mon, self.facts, func, args, kwargs)
        if mon.learning_structure:
            return self._track(func, args, kwargs)
        if mon.detail and func in LOSS_FUNCTIONS:  # a NaN loss is news even where no site shows it
            return self._observe_loss(func, args, kwargs)
        return func(*args, **kwargs)

    def _observe_loss(self, func, args: tuple, kwargs: dict) -> Any:
        result = func(*args, **kwargs)
        try:
            self.facts.network.observe_loss(result)
        except Exception as exc:  # noqa: BLE001 - diagnostics must never break training
            self.on_error(exc)
        return result

    def _track(self, func, args: tuple, kwargs: dict) -> Any:
        result = func(*args, **kwargs)  # the user's errors propagate unchanged
        if func in EAGER_OPS:  # hand-written attention: scores, and the weights meeting the values
            try:
                self.facts.note_eager_op(func, args, kwargs, result)
            except Exception as exc:  # noqa: BLE001 - diagnostics must never break training
                self.on_error(exc)
        if func in _FOLLOWED or func in COMBINING or func in MATMULS:
            try:
                if func in COMBINING or func in MATMULS:
                    network, model = self.facts.network, self.monitor.model
                    # x.mm(self.w1) is a layer of a bare parameter; other products and sums combine values.
                    made_layer = func in MATMULS and network.note_matmul(model, args, kwargs, result)
                    if func in COMBINING and not made_layer:
                        network.note_combined(args, kwargs, func, result, model)
                if func in _FOLLOWED:
                    self._follow(func, args, kwargs, result)
            except Exception as exc:  # noqa: BLE001 - diagnostics must never break training
                self.on_error(exc)
        return result

    def _follow(self, func, args: tuple, kwargs: dict, result: Any) -> None:
        mon, following = self.facts, self.following  # the structural-facts recorder
        if func in _SAME_VALUES:
            value = args[0] if args else None
            flow = following.flow_of(mon, value)
            # p[range(n), y] after the forward picks each row's class (a log-likelihood's term), not a view.
            index = args[1] if len(args) > 1 else None
            picked = flow is not None and func is Tensor.__getitem__ and following.pick(mon, flow, value, index, result)
            if flow is not None and not picked:
                following.put(mon, result, replace(flow, reordered=flow.reordered or func in _REORDER), produced=True)
            mon.network.follow_layer_output(value, result)  # a layer's output, viewed or dropped out
        elif func in _MULTIPLY:
            operands = (*args, *kwargs.values())  # torch.mul(a, other=b)
            if following.multiply(mon, operands, result):
                return  # outside the model: a loss being computed, never a gate
            for i, arg in enumerate(operands):
                flow = following.flow_of(mon, arg)
                if flow is None or not flow.structural:
                    continue
                site = mon.sites.get(flow.site)
                kind = site.kind if site is not None else ""
                if any(_gates(other, arg, kind, mon) for j, other in enumerate(operands) if j != i):
                    mon.add_consumer(flow.site, "mul")  # a gate: sigmoid(g) * h, x * se(x)
                elif isinstance(result, Tensor):
                    # Scaled by a constant (2.0 * tanh(z), LayerScale's learned gamma, a mask): still
                    # a hidden activation. "scale": its range changed, so no target or logit check.
                    following.put(mon, result, flow.then(SCALE), produced=True)
        elif func in LOSS_FUNCTIONS:
            loss = LOSS_FUNCTIONS[func]
            prediction = args[0] if args else kwargs.get("input")
            target = args[1] if len(args) > 1 else kwargs.get("target")
            flow = following.flow_of(mon, prediction)
            if flow is None and loss in REGRESSION_LOSSES:
                # Symmetric losses are often called as F.mse_loss(target, prediction).
                swapped = following.flow_of(mon, target)
                if swapped is not None:
                    prediction, target, flow = target, prediction, swapped
            mon.note_loss(loss, prediction, target)
            mon.network.observe_loss(result)
            if flow is not None and flow.structural:
                following.put(mon, prediction, flow, produced=True)  # its layout (reordered dims) for add_consumer
                mon.add_consumer(flow.site, f"loss:{loss}" + (f"({flow.via})" if flow.via else ""), prediction)
                if all(step in RANGE_KEPT for step in flow.steps):  # clamped or normalised: still in range
                    mon.note_targets(flow.site, loss, target)
                    note_target_rows(mon, flow.site, prediction, target, flow.reordered)
        else:
            following.follow(mon, func, args, kwargs, result)


# ---------------------------------------------------------------- what the tracer talks to
class CallRouter(Protocol):
    """What the tracer hands calls to (the monitor), and the flags it reads on every torch call."""

    enabled: bool  # a step is being measured
    functional: bool  # functional calls are measured, not only modules
    activation_depth: int  # > 0 inside an activation module's forward (its F.relu is the module's)
    learning_structure: bool  # this step follows values into gates and losses
    detail: bool  # this step also counts the losses' non-finite values (NetworkWatch)
    model: Any  # the nn.Module watched (layers of bare parameters: NetworkWatch.note_matmul)

    def call_functional(self, func: Any, args: tuple, kwargs: dict) -> Any: ...

    def call_attention(self, func: Any, args: tuple, kwargs: dict) -> Any: ...


class StructureRecorder(Protocol):
    """Where the tracer records what it follows (StructureFacts)."""

    sites: dict[str, Any]
    states: dict[str, Any]
    network: NetworkWatch  # whole-model facts: layer links, the model's input, loss values

    @property
    def in_module_forward(self) -> bool: ...  # a module's forward is running (following.py)

    def produced_by(self, value: Any) -> tuple[str, str] | None: ...

    def reordered(self, value: Any) -> bool: ...

    def mark_produced(self, tensor: Tensor, site: str, via: str = "", reordered: bool = False) -> None: ...

    def add_consumer(self, site: str, consumer: str, value: Any = None) -> None: ...

    def note_eager_op(self, func: Any, args: tuple, kwargs: dict, result: Any) -> None: ...

    def same_layout(self, site: str, value: Any) -> bool: ...

    def note_class_dim(self, site: str, loss: str, dim: int) -> None: ...

    def note_loss(self, loss: str, prediction: Any, target: Any) -> None: ...

    def note_targets(self, site: str, loss: str, target: Any) -> None: ...
