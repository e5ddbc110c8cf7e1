"""Activation kinds: what "firing" and "saturated" mean for each activation function.

Every activation act_diagnostics recognises, as a module class of ``torch.nn`` or as a functional
call, maps to one :class:`ActivationKind` record in :data:`KINDS`. A record holds everything about
its kind:

* its **family** (``relu``, ``smooth``, ``sigmoid``, ``tanh``, ``bounded``, ``softmax``, ``gate``,
  ``other``), which the rules use to decide what advice applies;
* its **firing** test on the output ``y`` (for almost every kind this is "the pre-activation was
  positive", written in terms of the output): ``output > firing_threshold`` or a mask of its own;
* its **saturation** test: where the derivative has fallen below about ``eps`` so that almost no
  gradient flows (see docs/statistics.md for each formula), and its float 0/1 form where one exists;
* the values it can output (for regression heads), and the module classes, class names of other
  libraries and functions that map to it.

The tests are pure tensor functions, checked against hand-computed tensors in tests/core/test_kinds.py.
The lookups :data:`MODULE_KINDS` and :data:`FUNCTIONAL_KINDS` are read off the records.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, TypedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

FAMILIES = ("relu", "smooth", "sigmoid", "tanh", "bounded", "softmax", "gate", "other")

# Derivative below which a smooth activation's negative tail counts as saturated. The same 0.01
# as the sigmoid/tanh saturation default (rules.md: "f'(x) < 0.01").
SMOOTH_TAIL_DERIVATIVE = 0.01

Params = dict[str, Any]
Threshold = Callable[[Tensor, Params], float]  # (output, params) -> firing bound
Mask = Callable[[Tensor, Params], Tensor]  # (output, params) -> firing mask
SaturationTest = Callable[[Tensor, Params, float], Tensor]  # (output or input, params, eps) -> mask or 0/1


@cache
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

_INDICATOR_DTYPES = (torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _zero(y: Tensor, p: Params) -> float:
    return 0.0


@dataclass(frozen=True, eq=False)
class ActivationKind:
    """One activation function: its family, firing and saturation tests, range and names.

    Records are singletons (compared by identity); :data:`KINDS` holds them by name.
    """

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
    # Firing is ``output > firing_threshold(y, params)``; None where ``firing_mask`` says it instead.
    firing_threshold: Threshold | None = _zero
    firing_mask: Mask | None = None
    # Saturation as a bool mask (per element, or per row for softmax), None where not defined, and
    # the same test as a float 0/1 tensor where a cheap formulation exists.
    saturation_test: SaturationTest | None = None
    saturation_indicator: SaturationTest | None = None
    # (low, high) of the values the activation can output, for the kinds a regression head
    # commonly ends in (rules: output-activation-mismatch); None where unbounded or not tabulated.
    value_range: Callable[[Params], tuple[float, float]] | None = None
    # What maps to this kind: torch.nn classes (matched with isinstance, so subclasses too), class
    # names of other libraries (no import needed), and functions with {parameter: position}.
    modules: tuple[type[nn.Module], ...] = ()
    module_names: tuple[str, ...] = ()
    functions: tuple[tuple[Callable[..., Any], dict[str, int]], ...] = ()

    @property
    def unit_saturation(self) -> bool:
        """Saturation is judged per element, so per-unit saturation counts exist."""
        return self.saturation_test is not None and not self.per_row and self.name != "glu"

    @property
    def has_saturation(self) -> bool:
        """A saturation test exists (per element, per softmax row or per GLU gate)."""
        return self.saturation_test is not None

    def active(self, y: Tensor, params: Params) -> Tensor:
        """Boolean mask of outputs that count as firing."""
        if self.firing_mask is not None:
            return self.firing_mask(y, params)
        if self.firing_threshold is not None:
            return y > self.firing_threshold(y, params)
        raise ValueError(f"activation kind {self.name!r} has neither a firing mask nor a firing threshold")

    def saturated(self, x: Tensor | None, y: Tensor, params: Params, eps: float) -> Tensor | None:
        """Boolean mask of saturated outputs (or rows, for softmax), None when not defined."""
        return self._saturated(self.saturation_test, x, y, params, eps)

    # The same tests as float 0/1 tensors, where a cheap formulation exists (else the bool mask).
    # On the CPU, reducing a bool mask per unit costs several times more than ``relu(y - c).sign()``
    # and a float sum. They agree with the masks except at NaN (the indicator is 0 or NaN there,
    # by backend; never 1) and within float rounding of a threshold that is not a representable number.
    def active_indicator(self, y: Tensor, params: Params) -> Tensor:
        """Firing as a float 0/1 tensor (or the bool mask, for kinds without a float form)."""
        if y.dtype in _HALF_DTYPES:
            y = y.float()  # a threshold compared in float16 / bfloat16 is rounded first: 0.9902 > 0.99 is False
        if y.dtype not in _INDICATOR_DTYPES:
            return self.active(y, params)
        if self.sign_firing:
            return y.sign()  # the output is >= 0: sign is 1 exactly where it is > 0
        threshold = self.firing_threshold
        if threshold is None:
            return self.active(y, params)
        return above(y, threshold(y, params))

    def saturated_indicator(self, x: Tensor | None, y: Tensor, params: Params, eps: float) -> Tensor | None:
        """Saturation as a float 0/1 tensor where a float form exists (see :meth:`saturated`)."""
        if x is not None and x.dtype in _HALF_DTYPES:
            x = x.float()  # thresholds compared in float32, as for firing
        if y.dtype in _HALF_DTYPES:
            y = y.float()
        source = x if self.saturation_reads == "input" else y
        fast = self.saturation_indicator
        if fast is None or source is None or source.dtype not in _INDICATOR_DTYPES:
            return self.saturated(x, y, params, eps)
        return self._saturated(fast, x, y, params, eps)

    def _saturated(self, fn: Any, x: Tensor | None, y: Tensor, params: Params, eps: float) -> Tensor | None:
        if fn is None:
            return None
        if self.saturation_reads == "input":
            return None if x is None else fn(x, params, eps)  # None: inplace call, input is gone
        return fn(y, params, eps)


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


def _softmax_dim(p: Params, y: Tensor) -> int:
    dim = p.get("dim")
    if dim is None:  # torch's legacy implicit choice (torch.nn.functional._get_softmax_dim)
        dim = 0 if y.dim() in (0, 1, 3) else 1
    return int(dim)


def _row_max_above(limit_fn: Callable[[float], float]) -> SaturationTest:
    return lambda y, p, eps: y.amax(dim=_softmax_dim(p, y)) > limit_fn(eps)


class SaturationTests(TypedDict):
    """The two forms of one saturation test, passed to an ActivationKind as keyword arguments."""

    saturation_test: SaturationTest
    saturation_indicator: SaturationTest


def _saturated_below(bound: Callable[[Params, float], float]) -> SaturationTests:
    """Saturation as ``value < bound``: the output's negative tail (ELU family) or, for the smooth
    family, the pre-activation's flat tail; as a bool mask and as a float indicator."""
    return SaturationTests(
        saturation_test=lambda t, p, eps: t < bound(p, eps),
        saturation_indicator=lambda t, p, eps: below(t, bound(p, eps)),
    )


def _tail(name: str) -> SaturationTests:
    """The smooth family's flat negative tail (pre-activation below smooth_tail_threshold)."""

    def bound(p: Params, eps: float) -> float:
        return smooth_tail_threshold("gelu_tanh" if name == "gelu" and p.get("approximate") == "tanh" else name, eps)

    return _saturated_below(bound)


def _probability_above_uniform(y: Tensor, p: Params) -> float:
    return 1.0 / max(1, y.shape[_softmax_dim(p, y)])


def _log_probability_above_uniform(y: Tensor, p: Params) -> float:
    return -math.log(max(1, y.shape[_softmax_dim(p, y)]))


def _unit_interval(p: Params) -> tuple[float, float]:
    return 0.0, 1.0


def _symmetric_unit(p: Params) -> tuple[float, float]:
    return -1.0, 1.0


def _non_negative(p: Params) -> tuple[float, float]:
    return 0.0, math.inf


_POS = "output > 0 (the pre-activation was positive)"
_SMOOTH_TAIL_DOC = "pre-activation below the tail where |f'| < eps"
_SOFTMAX_DIM = {"dim": 1}

# Listed so that a module class comes before its base classes (ReLU6 subclasses Hardtanh).
KINDS: dict[str, ActivationKind] = {
    k.name: k
    for k in [
        ActivationKind(
            "relu", "relu", _POS, sign_firing=True, value_range=_non_negative,
            modules=(nn.ReLU,), module_names=("ReLUSquaredActivation",),
            functions=((F.relu, {}), (F.relu_, {}), (torch.relu, {}), (torch.relu_, {}), (Tensor.relu, {}), (Tensor.relu_, {})),
        ),
        ActivationKind(
            "relu6", "relu", _POS, "output at the upper bound 6", sign_firing=True,
            saturation_test=lambda y, p, eps: y >= 6.0, value_range=lambda p: (0.0, 6.0),
            modules=(nn.ReLU6,), functions=((F.relu6, {}),),
        ),
        ActivationKind(
            "leaky_relu", "relu", _POS, modules=(nn.LeakyReLU,), functions=((F.leaky_relu, {}), (F.leaky_relu_, {})),
        ),
        ActivationKind("prelu", "relu", _POS, modules=(nn.PReLU,), functions=((F.prelu, {}), (torch.prelu, {}))),
        ActivationKind("rrelu", "relu", _POS, modules=(nn.RReLU,), functions=((F.rrelu, {}), (F.rrelu_, {}))),
        ActivationKind(
            "threshold", "relu", "output > threshold and output != value",
            # F.threshold replaces x <= threshold by ``value``; that value is not firing, even above the bound.
            firing_threshold=None,
            firing_mask=lambda y, p: (y > p.get("threshold", 0.0)) & (y != p.get("value", 0.0)),
            modules=(nn.Threshold,),
            functions=((F.threshold, {"threshold": 1, "value": 2}), (torch.threshold_, {"threshold": 1, "value": 2})),
        ),
        ActivationKind(
            "elu", "smooth", _POS, "negative tail: alpha*exp(x) < eps",
            **_saturated_below(lambda p, eps: eps - p.get("alpha", 1.0)),
            modules=(nn.ELU,), functions=((F.elu, {"alpha": 1}), (F.elu_, {"alpha": 1})),
        ),
        ActivationKind(
            "celu", "smooth", _POS, "negative tail: exp(x/alpha) < eps",
            **_saturated_below(lambda p, eps: p.get("alpha", 1.0) * (eps - 1.0)),
            modules=(nn.CELU,), functions=((F.celu, {"alpha": 1}), (F.celu_, {"alpha": 1})),
        ),
        ActivationKind(
            "selu", "smooth", _POS, "negative tail: alpha*exp(x) < eps",
            # SELU: lambda * alpha * (exp(x) - 1), derivative relative to the linear branch alpha*exp(x).
            **_saturated_below(lambda p, eps: 1.0507009873554805 * (eps - 1.6732632423543772)),
            modules=(nn.SELU,), functions=((F.selu, {}), (F.selu_, {}), (torch.selu, {})),
        ),
        ActivationKind(
            "gelu", "smooth", _POS, _SMOOTH_TAIL_DOC, saturation_reads="input", **_tail("gelu"),
            modules=(nn.GELU,),
            module_names=(
                "GELUActivation", "NewGELUActivation", "FastGELUActivation", "QuickGELUActivation",
                "GELUTanh", "PytorchGELUTanh", "AccurateGELUActivation",
            ),  # Hugging Face transformers' GELU variants
            functions=((F.gelu, {}),),
        ),
        ActivationKind(
            "silu", "smooth", _POS, _SMOOTH_TAIL_DOC, saturation_reads="input", **_tail("silu"),
            modules=(nn.SiLU,), module_names=("SiLUActivation",), functions=((F.silu, {}),),
        ),
        ActivationKind(
            "mish", "smooth", _POS, _SMOOTH_TAIL_DOC, saturation_reads="input", **_tail("mish"),
            modules=(nn.Mish,), module_names=("MishActivation",), functions=((F.mish, {}),),
        ),
        ActivationKind(
            "hardswish", "smooth", _POS, "pre-activation <= -3 (zero gradient)", saturation_reads="input",
            **_tail("hardswish"), modules=(nn.Hardswish,), functions=((F.hardswish, {}),),
        ),
        ActivationKind(
            "softplus", "smooth", "output > ln(2)/beta", "output < -ln(1-eps)/beta (sigmoid(beta*x) < eps)",
            firing_threshold=lambda y, p: math.log(2.0) / p.get("beta", 1.0),
            saturation_test=lambda y, p, eps: y < -math.log1p(-eps) / p.get("beta", 1.0),
            value_range=_non_negative, modules=(nn.Softplus,), functions=((F.softplus, {"beta": 1}),),
        ),
        ActivationKind(
            "sigmoid", "sigmoid", "output > 0.5", "output < eps or > 1 - eps",
            firing_threshold=lambda y, p: 0.5,
            saturation_test=lambda y, p, eps: (y < eps) | (y > 1.0 - eps),
            saturation_indicator=lambda y, p, eps: _outside(y, 0.5, 0.5 - eps),
            value_range=_unit_interval, modules=(nn.Sigmoid,),
            functions=(
                (torch.sigmoid, {}), (torch.sigmoid_, {}), (Tensor.sigmoid, {}), (Tensor.sigmoid_, {}),
                (torch.special.expit, {}),
            ),
        ),
        ActivationKind(
            "hardsigmoid", "sigmoid", "output > 0.5", "output at 0 or 1 (zero gradient)",
            firing_threshold=lambda y, p: 0.5,
            saturation_test=lambda y, p, eps: (y <= 0.0) | (y >= 1.0),
            value_range=_unit_interval, modules=(nn.Hardsigmoid,), functions=((F.hardsigmoid, {}),),
        ),
        ActivationKind(
            "logsigmoid", "sigmoid", "output > ln(0.5)", "output > ln(1 - eps)",
            firing_threshold=lambda y, p: math.log(0.5),
            saturation_test=lambda y, p, eps: y > math.log1p(-eps),
            modules=(nn.LogSigmoid,), functions=((F.logsigmoid, {}),),
        ),
        ActivationKind(
            "tanh", "tanh", _POS, "|output| > 1 - eps",
            saturation_test=lambda y, p, eps: y.abs() > 1.0 - eps,
            saturation_indicator=lambda y, p, eps: _outside(y, 0.0, 1.0 - eps),
            value_range=_symmetric_unit, modules=(nn.Tanh,),
            functions=((torch.tanh, {}), (torch.tanh_, {}), (Tensor.tanh, {}), (Tensor.tanh_, {})),
        ),
        ActivationKind(
            "hardtanh", "bounded", "output > max(0, min_val)", "output at min_val or max_val",
            firing_threshold=lambda y, p: max(0.0, p.get("min_val", -1.0)),
            saturation_test=lambda y, p, eps: (y <= p.get("min_val", -1.0)) | (y >= p.get("max_val", 1.0)),
            value_range=lambda p: (float(p.get("min_val", -1.0)), float(p.get("max_val", 1.0))),
            modules=(nn.Hardtanh,),
            functions=((F.hardtanh, {"min_val": 1, "max_val": 2}), (F.hardtanh_, {"min_val": 1, "max_val": 2})),
        ),
        ActivationKind(
            "softsign", "tanh", _POS, "|output| > 1 - sqrt(eps)",
            saturation_test=lambda y, p, eps: y.abs() > 1.0 - math.sqrt(eps),
            value_range=_symmetric_unit, modules=(nn.Softsign,), functions=((F.softsign, {}),),
        ),
        ActivationKind("tanhshrink", "other", _POS, modules=(nn.Tanhshrink,), functions=((F.tanhshrink, {}),)),
        ActivationKind(
            "softmax", "softmax", "probability > 1/K", "row maximum > 1 - eps", per_row=True,
            firing_threshold=_probability_above_uniform, saturation_test=_row_max_above(lambda eps: 1.0 - eps),
            modules=(nn.Softmax,),
            functions=(
                (F.softmax, _SOFTMAX_DIM), (torch.softmax, _SOFTMAX_DIM), (Tensor.softmax, _SOFTMAX_DIM),
                (torch.special.softmax, _SOFTMAX_DIM),
            ),
        ),
        ActivationKind(
            "softmin", "softmax", "probability > 1/K", "row maximum > 1 - eps", per_row=True,
            firing_threshold=_probability_above_uniform, saturation_test=_row_max_above(lambda eps: 1.0 - eps),
            modules=(nn.Softmin,), functions=((F.softmin, _SOFTMAX_DIM),),
        ),
        ActivationKind(
            "log_softmax", "softmax", "log-probability > -ln K", "row maximum > ln(1 - eps)", per_row=True,
            firing_threshold=_log_probability_above_uniform,
            saturation_test=_row_max_above(lambda eps: math.log1p(-eps)),
            modules=(nn.LogSoftmax,),
            functions=(
                (F.log_softmax, _SOFTMAX_DIM), (torch.log_softmax, _SOFTMAX_DIM), (Tensor.log_softmax, _SOFTMAX_DIM),
                (torch.special.log_softmax, _SOFTMAX_DIM),
            ),
        ),
        ActivationKind(
            "glu", "gate", _POS, "gate input |b| > logit(1 - eps)", saturation_reads="input",
            # GLU: a * sigmoid(b); the gate b is the second half of the input along ``dim``.
            saturation_test=lambda x, p, eps: x.chunk(2, dim=p.get("dim", -1))[1].abs() > math.log((1.0 - eps) / eps),
            modules=(nn.GLU,), functions=((F.glu, {"dim": 1}),),
        ),
    ]
}

# Class names of other libraries' identity activations: not an activation site.
NOT_ACTIVATIONS = frozenset({"LinearActivation"})

# Lookups read off the records: module class -> kind name (in KINDS order, subclasses first),
# class name -> kind name, and function -> (kind name, {parameter: positional index}). Tensor
# methods are among the functions because ``x.relu()`` never passes through torch.nn.functional.
MODULE_KINDS: dict[type[nn.Module], str] = {cls: k.name for k in KINDS.values() for cls in k.modules}
_NAMED_MODULE_KINDS: dict[str, str] = {n: k.name for k in KINDS.values() for n in k.module_names}
FUNCTIONAL_KINDS: dict[Callable[..., Any], tuple[str, dict[str, int]]] = {
    fn: (k.name, positions) for k in KINDS.values() for fn, positions in k.functions
}


def output_range(kind: str, params: Params) -> tuple[float, float] | None:
    """(low, high) of the outputs of ``kind``, or None where it is unbounded or not tabulated.
    Limits an output only approaches count as inside."""
    record = KINDS.get(kind)
    return None if record is None or record.value_range is None else record.value_range(params)


def module_kind(module: nn.Module) -> str | None:
    """Kind name of an activation module, or None when ``module`` is not an activation."""
    for cls, name in MODULE_KINDS.items():
        if isinstance(module, cls):
            return name
    for cls in type(module).__mro__:
        if cls.__name__ in NOT_ACTIVATIONS:
            return None
        named = _NAMED_MODULE_KINDS.get(cls.__name__)
        if named is not None:
            return named
    return None


def module_params(module: nn.Module) -> Params:
    """The few constructor arguments the firing and saturation tests need."""
    params: Params = {}
    for attr in ("dim", "threshold", "value", "min_val", "max_val", "alpha", "beta", "approximate"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            params[attr] = value
    if isinstance(module, nn.Softplus):  # its ``threshold`` is a numerical switch, not a firing bound
        params.pop("threshold", None)
    return params


def functional_name(fn: Callable[..., Any]) -> str:
    """Short name used in a functional site's name: ``relu`` for F.relu, torch.relu and Tensor.relu;
    ``softmax`` for torch.special.softmax (named ``special_softmax``)."""
    return getattr(fn, "__name__", "fn").removeprefix("special_").strip("_") or "fn"


def functional_params(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Params) -> Params:
    """Firing/saturation parameters of one functional call, read from its arguments."""
    _, positions = FUNCTIONAL_KINDS[fn]
    params: Params = {}
    for name, index in positions.items():
        if name in kwargs:
            params[name] = kwargs[name]
        elif len(args) > index:
            params[name] = args[index]
    if fn is F.gelu and "approximate" in kwargs:
        params["approximate"] = kwargs["approximate"]
    return {k: v for k, v in params.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
