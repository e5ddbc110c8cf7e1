"""A TorchFunctionMode that sees functional activations and losses as they are called.

Module hooks never see ``F.relu`` inside a forward (nn.TransformerEncoderLayer's default
activation is a function). While a training step runs, :class:`ActivationTracer` sits on torch's
function-mode stack and hands every call of a known activation function to the monitor. During the
first training steps it also follows activation outputs through view-like ops, clamps, logs,
normalisation and the other ops of :mod:`following` into multiplications (gates), loss functions
and hand-written losses, which is how the rules learn that a softmax feeds ``F.cross_entropy``.

Everything else passes straight through: one dictionary lookup per torch call.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from act_diagnostics.core.attention import ATTENTION_FUNCTIONS
from act_diagnostics.core.following import FOLLOWED, HANDWRITTEN_L1, HANDWRITTEN_MSE, RANGE_KEPT, SCALE, Following, note_target_rows
from act_diagnostics.core.kinds import FUNCTIONAL_KINDS
from act_diagnostics.core.network import COMBINING, MATMULS

if TYPE_CHECKING:
    from act_diagnostics.core.monitor import ActivationMonitor

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
}  # fmt: skip
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


def _gates(value: Any, output: Tensor, kind: str, monitor: "ActivationMonitor") -> bool:
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
    """Routes functional activations (and, while tracking structure, losses and gates) to a monitor."""

    def __init__(self, monitor: "ActivationMonitor") -> None:
        super().__init__()
        self.monitor = monitor
        self.following = Following()  # values derived from activation outputs in this step

    def __enter__(self) -> "ActivationTracer":
        self.following.clear()  # a new step (or a checkpoint's re-run): nothing derived yet
        return super().__enter__()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
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
        if mon.tracking_structure:
            return self._track(func, args, kwargs)
        if mon.detail and func in LOSS_FUNCTIONS:  # a NaN loss is news even where no site shows it
            return self._observe_loss(func, args, kwargs)
        return func(*args, **kwargs)

    def _observe_loss(self, func, args: tuple, kwargs: dict) -> Any:
        result = func(*args, **kwargs)
        try:
            self.monitor.network.observe_loss(result)
        except Exception as exc:  # noqa: BLE001 - diagnostics must never break training
            self.monitor._fail(exc)
        return result

    def _track(self, func, args: tuple, kwargs: dict) -> Any:
        result = func(*args, **kwargs)  # the user's errors propagate unchanged
        if func in _FOLLOWED or func in COMBINING or func in MATMULS:
            try:
                network = self.monitor.network
                # x.mm(self.w1) is a layer of a bare parameter; other products and sums combine values.
                made_layer = func in MATMULS and network.note_matmul(self.monitor.model, args, kwargs, result)
                if func in COMBINING and not made_layer:
                    network.note_combined(args, kwargs, func, result, self.monitor.model)
                if func in _FOLLOWED:
                    self._follow(func, args, kwargs, result)
            except Exception as exc:  # noqa: BLE001 - diagnostics must never break training
                self.monitor._fail(exc)
        return result

    def _follow(self, func, args: tuple, kwargs: dict, result: Any) -> None:
        mon, following = self.monitor, self.following
        if func in _SAME_VALUES:
            value = args[0] if args else None
            flow = following.flow_of(mon, value)
            if flow is not None:
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
