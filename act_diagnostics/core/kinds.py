"""Activation kinds: what "firing" and "saturated" mean for each activation function.

Every activation act_diagnostics recognises, as a module class of ``torch.nn`` or as a functional
call, maps to one :class:`ActivationKind`. A kind knows

* its **family** (``relu``, ``smooth``, ``sigmoid``, ``tanh``, ``bounded``, ``softmax``, ``gate``,
  ``other``), which the rules use to decide what advice applies;
* its **firing** test on the output ``y`` (for almost every kind this is "the pre-activation was
  positive", written in terms of the output);
* its **saturation** test: where the derivative has fallen below about ``eps`` so that almost no
  gradient flows (see docs/statistics.md for each formula).

The tests are pure tensor functions, checked against hand-computed tensors in tests/core/test_kinds.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

FAMILIES = ("relu", "smooth", "sigmoid", "tanh", "bounded", "softmax", "gate", "other")

# Derivative below which a smooth activation's negative tail counts as saturated. The same 0.01
# as the sigmoid/tanh saturation default (rules.md: "f'(x) < 0.01").
SMOOTH_TAIL_DERIVATIVE = 0.01


@lru_cache(maxsize=None)
def smooth_tail_threshold(fn_name: str, eps: float = SMOOTH_TAIL_DERIVATIVE) -> float:
    """Largest ``x <= 0`` below which ``|f'(x)| < eps`` everywhere, for GELU, SiLU, Mish, Hardswish.

    Computed once with autograd on a grid of step 1e-3, refined to 1e-6 around the crossing, so the
    constant follows torch's own definition of each function (GELU: about -3.07, SiLU and Mish:
    about -6.26, Hardswish: -3). The first call may come from inside a hook, i.e. under
    ``no_grad``, ``inference_mode``, or activation checkpointing's saved-tensor hooks: the
    computation is isolated from all of them (and from any TorchFunctionMode).
    """
    fn = _SMOOTH_FUNCTIONS[fn_name]

    def first_steep(lo: float, hi: float, n: int) -> tuple[float, float] | None:
        grid = torch.linspace(lo, hi, n, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(fn(grid).sum(), grid)
        steep = (grad.abs() >= eps).nonzero()
        if steep.numel() == 0:
            return None
        i = int(steep[0])
        return float(grid[max(0, i - 1)].detach()), float(grid[i].detach())

    with torch.inference_mode(False), torch.enable_grad(), torch._C.DisableTorchFunction(), \
            torch.autograd.graph.saved_tensors_hooks(_identity, _identity):
        bracket = first_steep(-30.0, 0.0, 30_001)
        if bracket is None:  # pragma: no cover - every listed function is steep somewhere below 0
            return 0.0
        fine = first_steep(bracket[0], bracket[1], 1_001)
    return fine[1] if fine is not None else bracket[1]


def prepare_thresholds(eps: float) -> None:
    """Compute every smooth tail threshold for ``eps`` now (about 10 ms, once per process): the
    computation reads values back to the host, which a hook inside a training step must not do."""
    for name in _SMOOTH_FUNCTIONS:
        smooth_tail_threshold(name, eps)


def _identity(t: Tensor) -> Tensor:
    return t


_SMOOTH_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    "silu": F.silu,
    "mish": F.mish,
    "hardswish": F.hardswish,
}


@dataclass(frozen=True)
class ActivationKind:
    """One activation function and its firing / saturation definitions."""

    name: str
    family: str
    firing_doc: str
    saturation_doc: str | None = None
    # Which tensor the saturation test reads: "output" or "input" (pre-activation).
    saturation_reads: str = "output"
    # Distribution-valued (softmax family): saturation is judged per row along ``dim``.
    per_row: bool = False
    # Output is >= 0 (or NaN) and firing is ``y > 0``: the state may count firing as sum(sign(y)).
    sign_firing: bool = False

    @property
    def unit_saturation(self) -> bool:
        """Saturation is judged per element, so per-unit saturation counts exist."""
        return self.name in _SATURATED and not self.per_row and self.name != "glu"

    @property
    def has_saturation(self) -> bool:
        """A saturation test exists (per element, per softmax row or per GLU gate)."""
        return self.name in _SATURATED

    def active(self, y: Tensor, params: dict[str, Any]) -> Tensor:
        """Boolean mask of outputs that count as firing."""
        return _ACTIVE[self.name](y, params)

    def saturated(self, x: Tensor | None, y: Tensor, params: dict[str, Any], eps: float) -> Tensor | None:
        """Boolean mask of saturated outputs (or rows, for softmax), None when not defined."""
        return self._saturated(_SATURATED.get(self.name), x, y, params, eps)

    # The same tests as float 0/1 tensors, where a cheap formulation exists (else the bool mask).
    # On the CPU, reducing a bool mask per unit costs several times more than ``relu(y - c).sign()``
    # and a float sum. They agree with the masks except at NaN (the indicator is 0 or NaN there,
    # by backend; never 1) and within float rounding of a threshold that is not a representable number.
    def active_indicator(self, y: Tensor, params: dict[str, Any]) -> Tensor:
        """Firing as a float 0/1 tensor (or the bool mask, for kinds without a float form)."""
        if y.dtype in _HALF_DTYPES:
            y = y.float()  # a threshold compared in float16 / bfloat16 is rounded first: 0.9902 > 0.99 is False
        if y.dtype not in _INDICATOR_DTYPES:
            return self.active(y, params)
        if self.sign_firing:
            return y.sign()  # the output is >= 0: sign is 1 exactly where it is > 0
        threshold = _FIRING_THRESHOLD.get(self.name)
        if threshold is None:
            return self.active(y, params)
        return above(y, threshold(y, params))

    def saturated_indicator(self, x: Tensor | None, y: Tensor, params: dict[str, Any], eps: float) -> Tensor | None:
        """Saturation as a float 0/1 tensor where a float form exists (see :meth:`saturated`)."""
        if x is not None and x.dtype in _HALF_DTYPES:
            x = x.float()  # thresholds compared in float32, as for firing
        if y.dtype in _HALF_DTYPES:
            y = y.float()
        source = x if self.saturation_reads == "input" else y
        fast = _SATURATED_INDICATOR.get(self.name)
        if fast is None or source is None or source.dtype not in _INDICATOR_DTYPES:
            return self.saturated(x, y, params, eps)
        return self._saturated(fast, x, y, params, eps)

    def _saturated(self, fn: Any, x: Tensor | None, y: Tensor, params: dict[str, Any], eps: float) -> Tensor | None:
        if fn is None:
            return None
        if self.saturation_reads == "input":
            return None if x is None else fn(x, params, eps)  # None: inplace call, input is gone
        return fn(y, params, eps)


_INDICATOR_DTYPES = (torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def above(t: Tensor, c: float) -> Tensor:
    """1.0 where ``t > c``, else 0.0 (0 or NaN where ``t`` is NaN), as a new float tensor.

    Exact: with gradual underflow ``t - c`` is 0 only where ``t == c``.
    """
    return torch.relu(t).sign_() if c == 0.0 else torch.sub(t, c).relu_().sign_()


def below(t: Tensor, c: float) -> Tensor:
    """1.0 where ``t < c``, else 0.0 (0 or NaN where ``t`` is NaN), as a new float tensor."""
    return torch.rsub(t, c).relu_().sign_()


def _outside(t: Tensor, centre: float, half_width: float) -> Tensor:
    """1.0 where ``|t - centre| > half_width``."""
    d = torch.sub(t, centre).abs_() if centre else t.abs()
    return d.sub_(half_width).relu_().sign_()


def _softmax_dim(p: dict[str, Any], y: Tensor) -> int:
    dim = p.get("dim")
    if dim is None:  # torch's legacy implicit choice (torch.nn.functional._get_softmax_dim)
        dim = 0 if y.dim() in (0, 1, 3) else 1
    return int(dim)


# Firing thresholds of the ``output > c`` kinds: the bool mask and the float indicator both read them.
_FIRING_THRESHOLD: dict[str, Callable[[Tensor, dict[str, Any]], float]] = {
    "sigmoid": lambda y, p: 0.5,
    "hardsigmoid": lambda y, p: 0.5,
    "logsigmoid": lambda y, p: math.log(0.5),
    "softplus": lambda y, p: math.log(2.0) / p.get("beta", 1.0),
    "softmax": lambda y, p: 1.0 / max(1, y.shape[_softmax_dim(p, y)]),
    "softmin": lambda y, p: 1.0 / max(1, y.shape[_softmax_dim(p, y)]),
    "log_softmax": lambda y, p: -math.log(max(1, y.shape[_softmax_dim(p, y)])),
    "hardtanh": lambda y, p: max(0.0, p.get("min_val", -1.0)),
}


def _mask_above(threshold: Callable[[Tensor, dict[str, Any]], float]) -> Callable[[Tensor, dict[str, Any]], Tensor]:
    return lambda y, p: y > threshold(y, p)


_ACTIVE: dict[str, Callable[[Tensor, dict[str, Any]], Tensor]] = {
    # F.threshold replaces x <= threshold by ``value``; that value is not firing, even above the bound.
    "threshold": lambda y, p: (y > p.get("threshold", 0.0)) & (y != p.get("value", 0.0)),
    **{name: _mask_above(fn) for name, fn in _FIRING_THRESHOLD.items()},
}


def _row_max_above(limit_fn: Callable[[float], float]) -> Callable[[Tensor, dict[str, Any], float], Tensor]:
    return lambda y, p, eps: y.amax(dim=_softmax_dim(p, y)) > limit_fn(eps)


_SATURATED: dict[str, Callable[[Tensor, dict[str, Any], float], Tensor]] = {
    "sigmoid": lambda y, p, eps: (y < eps) | (y > 1.0 - eps),
    "hardsigmoid": lambda y, p, eps: (y <= 0.0) | (y >= 1.0),
    "tanh": lambda y, p, eps: y.abs() > 1.0 - eps,
    "hardtanh": lambda y, p, eps: (y <= p.get("min_val", -1.0)) | (y >= p.get("max_val", 1.0)),
    "relu6": lambda y, p, eps: y >= 6.0,
    "softsign": lambda y, p, eps: y.abs() > 1.0 - math.sqrt(eps),
    "logsigmoid": lambda y, p, eps: y > math.log1p(-eps),
    "softplus": lambda y, p, eps: y < -math.log1p(-eps) / p.get("beta", 1.0),
    "softmax": _row_max_above(lambda eps: 1.0 - eps),
    "softmin": _row_max_above(lambda eps: 1.0 - eps),
    "log_softmax": _row_max_above(lambda eps: math.log1p(-eps)),
    # GLU: a * sigmoid(b); the gate b is the second half of the input along ``dim``.
    "glu": lambda x, p, eps: x.chunk(2, dim=p.get("dim", -1))[1].abs() > math.log((1.0 - eps) / eps),
}
def _tail_threshold(name: str, p: dict[str, Any], eps: float) -> float:
    return smooth_tail_threshold("gelu_tanh" if name == "gelu" and p.get("approximate") == "tanh" else name, eps)


def _tail(name: str) -> Callable[[dict[str, Any], float], float]:
    return lambda p, eps: _tail_threshold(name, p, eps)


# Saturation as ``value < bound``: the output's negative tail (ELU family) or, for the smooth
# family, the pre-activation's flat tail. The bool mask and the float indicator both read them.
_SATURATED_BELOW: dict[str, Callable[[dict[str, Any], float], float]] = {
    "elu": lambda p, eps: eps - p.get("alpha", 1.0),
    "celu": lambda p, eps: p.get("alpha", 1.0) * (eps - 1.0),
    # SELU: lambda * alpha * (exp(x) - 1), derivative relative to the linear branch alpha*exp(x).
    "selu": lambda p, eps: 1.0507009873554805 * (eps - 1.6732632423543772),
    **{name: _tail(name) for name in ("gelu", "silu", "mish", "hardswish")},
}


def _mask_below(bound: Callable[[dict[str, Any], float], float]) -> Callable[[Tensor, dict[str, Any], float], Tensor]:
    return lambda t, p, eps: t < bound(p, eps)


def _indicator_below(bound: Callable[[dict[str, Any], float], float]) -> Callable[[Tensor, dict[str, Any], float], Tensor]:
    return lambda t, p, eps: below(t, bound(p, eps))


_SATURATED.update({name: _mask_below(bound) for name, bound in _SATURATED_BELOW.items()})

# Float forms of the commonest saturation tests (sigmoid, tanh and the tails above).
_SATURATED_INDICATOR: dict[str, Callable[[Tensor, dict[str, Any], float], Tensor]] = {
    "sigmoid": lambda y, p, eps: _outside(y, 0.5, 0.5 - eps),
    "tanh": lambda y, p, eps: _outside(y, 0.0, 1.0 - eps),
    **{name: _indicator_below(bound) for name, bound in _SATURATED_BELOW.items()},
}


def _kind(name: str, family: str, firing: str, saturation: str | None = None, **kw: Any) -> ActivationKind:
    if name not in _ACTIVE:
        _FIRING_THRESHOLD[name] = lambda y, p: 0.0
        _ACTIVE[name] = _mask_above(_FIRING_THRESHOLD[name])
    return ActivationKind(name, family, firing, saturation, **kw)


_POS = "output > 0 (the pre-activation was positive)"
KINDS: dict[str, ActivationKind] = {
    k.name: k
    for k in [
        _kind("relu", "relu", _POS, sign_firing=True),
        _kind("relu6", "relu", _POS, "output at the upper bound 6", sign_firing=True),
        _kind("leaky_relu", "relu", _POS),
        _kind("prelu", "relu", _POS),
        _kind("rrelu", "relu", _POS),
        _kind("threshold", "relu", "output > threshold and output != value"),
        _kind("elu", "smooth", _POS, "negative tail: alpha*exp(x) < eps"),
        _kind("celu", "smooth", _POS, "negative tail: exp(x/alpha) < eps"),
        _kind("selu", "smooth", _POS, "negative tail: alpha*exp(x) < eps"),
        _kind("gelu", "smooth", _POS, "pre-activation below the tail where |f'| < eps", saturation_reads="input"),
        _kind("silu", "smooth", _POS, "pre-activation below the tail where |f'| < eps", saturation_reads="input"),
        _kind("mish", "smooth", _POS, "pre-activation below the tail where |f'| < eps", saturation_reads="input"),
        _kind("hardswish", "smooth", _POS, "pre-activation <= -3 (zero gradient)", saturation_reads="input"),
        _kind("softplus", "smooth", "output > ln(2)/beta", "output < -ln(1-eps)/beta (sigmoid(beta*x) < eps)"),
        _kind("sigmoid", "sigmoid", "output > 0.5", "output < eps or > 1 - eps"),
        _kind("hardsigmoid", "sigmoid", "output > 0.5", "output at 0 or 1 (zero gradient)"),
        _kind("logsigmoid", "sigmoid", "output > ln(0.5)", "output > ln(1 - eps)"),
        _kind("tanh", "tanh", _POS, "|output| > 1 - eps"),
        _kind("hardtanh", "bounded", "output > max(0, min_val)", "output at min_val or max_val"),
        _kind("softsign", "tanh", _POS, "|output| > 1 - sqrt(eps)"),
        _kind("tanhshrink", "other", _POS),
        _kind("softmax", "softmax", "probability > 1/K", "row maximum > 1 - eps", per_row=True),
        _kind("softmin", "softmax", "probability > 1/K", "row maximum > 1 - eps", per_row=True),
        _kind("log_softmax", "softmax", "log-probability > -ln K", "row maximum > ln(1 - eps)", per_row=True),
        _kind("glu", "gate", _POS, "gate input |b| > logit(1 - eps)", saturation_reads="input"),
    ]
}

# Module classes of torch.nn, matched with isinstance so user subclasses are found too. Order
# matters only for subclasses of each other (none here).
MODULE_KINDS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.LeakyReLU: "leaky_relu",
    nn.PReLU: "prelu",
    nn.RReLU: "rrelu",
    nn.Threshold: "threshold",
    nn.ELU: "elu",
    nn.CELU: "celu",
    nn.SELU: "selu",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Mish: "mish",
    nn.Hardswish: "hardswish",
    nn.Softplus: "softplus",
    nn.Sigmoid: "sigmoid",
    nn.Hardsigmoid: "hardsigmoid",
    nn.LogSigmoid: "logsigmoid",
    nn.Tanh: "tanh",
    nn.Hardtanh: "hardtanh",
    nn.Softsign: "softsign",
    nn.Tanhshrink: "tanhshrink",
    nn.Softmax: "softmax",
    nn.Softmin: "softmin",
    nn.LogSoftmax: "log_softmax",
    nn.GLU: "glu",
}
# ReLU6 subclasses Hardtanh in torch: look it up before Hardtanh.
_MODULE_LOOKUP_ORDER = [nn.ReLU6] + [c for c in MODULE_KINDS if c is not nn.ReLU6]

# Activation classes of other libraries, matched by class name (no import needed). Hugging Face
# transformers names its GELU variants this way.
NAMED_MODULE_KINDS: dict[str, str] = {
    "GELUActivation": "gelu",
    "NewGELUActivation": "gelu",
    "FastGELUActivation": "gelu",
    "QuickGELUActivation": "gelu",
    "GELUTanh": "gelu",
    "PytorchGELUTanh": "gelu",
    "AccurateGELUActivation": "gelu",
    "SiLUActivation": "silu",
    "MishActivation": "mish",
    "ReLUSquaredActivation": "relu",
    "LinearActivation": "",  # identity: not an activation site
}


# The values an activation can output, (low, high), for the kinds a regression head commonly
# ends in; a regression target outside it can never be fitted (rules.md, output activation
# mismatch: "output range vs target range"). Limits an output only approaches count as inside.
_OUTPUT_RANGE: dict[str, Callable[[dict[str, Any]], tuple[float, float]]] = {
    "sigmoid": lambda p: (0.0, 1.0),
    "hardsigmoid": lambda p: (0.0, 1.0),
    "tanh": lambda p: (-1.0, 1.0),
    "softsign": lambda p: (-1.0, 1.0),
    "hardtanh": lambda p: (float(p.get("min_val", -1.0)), float(p.get("max_val", 1.0))),
    "relu": lambda p: (0.0, math.inf),
    "relu6": lambda p: (0.0, 6.0),
    "softplus": lambda p: (0.0, math.inf),
}


def output_range(kind: str, params: dict[str, Any]) -> tuple[float, float] | None:
    """(low, high) of the outputs of ``kind``, or None where it is unbounded or not tabulated."""
    fn = _OUTPUT_RANGE.get(kind)
    return None if fn is None else fn(params)


def module_kind(module: nn.Module) -> str | None:
    """Kind name of an activation module, or None when ``module`` is not an activation."""
    for cls in _MODULE_LOOKUP_ORDER:
        if isinstance(module, cls):
            return MODULE_KINDS[cls]
    for cls in type(module).__mro__:
        name = NAMED_MODULE_KINDS.get(cls.__name__)
        if name is not None:
            return name or None
    return None


def module_params(module: nn.Module) -> dict[str, Any]:
    """The few constructor arguments the firing and saturation tests need."""
    params: dict[str, Any] = {}
    for attr in ("dim", "threshold", "value", "min_val", "max_val", "alpha", "beta", "approximate"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            params[attr] = value
    if isinstance(module, nn.Softplus):  # its ``threshold`` is a numerical switch, not a firing bound
        params.pop("threshold", None)
    return params


# Functional activations: (callable, kind name, {parameter: positional index}) . Tensor methods are
# included because ``x.relu()`` and ``x.softmax(-1)`` never pass through torch.nn.functional.
_FUNCTIONAL_SPECS: list[tuple[Callable[..., Any], str, dict[str, int]]] = [
    (F.relu, "relu", {}),
    (F.relu_, "relu", {}),
    (torch.relu, "relu", {}),
    (torch.relu_, "relu", {}),
    (Tensor.relu, "relu", {}),
    (Tensor.relu_, "relu", {}),
    (F.relu6, "relu6", {}),
    (F.leaky_relu, "leaky_relu", {}),
    (F.leaky_relu_, "leaky_relu", {}),
    (F.prelu, "prelu", {}),
    (torch.prelu, "prelu", {}),
    (F.rrelu, "rrelu", {}),
    (F.rrelu_, "rrelu", {}),
    (F.threshold, "threshold", {"threshold": 1, "value": 2}),
    (F.threshold_, "threshold", {"threshold": 1, "value": 2}),
    (F.elu, "elu", {"alpha": 1}),
    (F.elu_, "elu", {"alpha": 1}),
    (F.celu, "celu", {"alpha": 1}),
    (F.celu_, "celu", {"alpha": 1}),
    (F.selu, "selu", {}),
    (F.selu_, "selu", {}),
    (torch.selu, "selu", {}),
    (F.gelu, "gelu", {}),
    (F.silu, "silu", {}),
    (F.mish, "mish", {}),
    (F.hardswish, "hardswish", {}),
    (F.softplus, "softplus", {"beta": 1}),
    (torch.sigmoid, "sigmoid", {}),
    (torch.sigmoid_, "sigmoid", {}),
    (Tensor.sigmoid, "sigmoid", {}),
    (Tensor.sigmoid_, "sigmoid", {}),
    (torch.special.expit, "sigmoid", {}),
    (F.hardsigmoid, "hardsigmoid", {}),
    (F.logsigmoid, "logsigmoid", {}),
    (torch.tanh, "tanh", {}),
    (torch.tanh_, "tanh", {}),
    (Tensor.tanh, "tanh", {}),
    (Tensor.tanh_, "tanh", {}),
    (F.hardtanh, "hardtanh", {"min_val": 1, "max_val": 2}),
    (F.hardtanh_, "hardtanh", {"min_val": 1, "max_val": 2}),
    (F.softsign, "softsign", {}),
    (F.tanhshrink, "tanhshrink", {}),
    (F.softmax, "softmax", {"dim": 1}),
    (torch.softmax, "softmax", {"dim": 1}),
    (Tensor.softmax, "softmax", {"dim": 1}),
    (F.softmin, "softmin", {"dim": 1}),
    (F.log_softmax, "log_softmax", {"dim": 1}),
    (torch.log_softmax, "log_softmax", {"dim": 1}),
    (Tensor.log_softmax, "log_softmax", {"dim": 1}),
    (torch.special.softmax, "softmax", {"dim": 1}),
    (torch.special.log_softmax, "log_softmax", {"dim": 1}),
    (F.glu, "glu", {"dim": 1}),
]

FUNCTIONAL_KINDS: dict[Callable[..., Any], tuple[str, dict[str, int]]] = {
    fn: (kind, positions) for fn, kind, positions in _FUNCTIONAL_SPECS
}


def functional_name(fn: Callable[..., Any]) -> str:
    """Short name used in a functional site's name: ``relu`` for F.relu, torch.relu and Tensor.relu;
    ``softmax`` for torch.special.softmax (named ``special_softmax``)."""
    return getattr(fn, "__name__", "fn").removeprefix("special_").strip("_") or "fn"


def functional_params(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Firing/saturation parameters of one functional call, read from its arguments."""
    _, positions = FUNCTIONAL_KINDS[fn]
    params: dict[str, Any] = {}
    for name, index in positions.items():
        if name in kwargs:
            params[name] = kwargs[name]
        elif len(args) > index:
            params[name] = args[index]
    if fn is F.gelu and "approximate" in kwargs:
        params["approximate"] = kwargs["approximate"]
    return {k: v for k, v in params.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


@dataclass
class KindInfo:
    """Static description of a kind for docs and reports (not used on the hot path)."""

    name: str
    family: str
    firing: str
    saturation: str | None = field(default=None)


def describe_kinds() -> list[KindInfo]:
    return [KindInfo(k.name, k.family, k.firing_doc, k.saturation_doc) for k in KINDS.values()]
