"""Firing and saturation masks of every activation kind, against hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from act_diagnostics.core.kinds import (
    FUNCTIONAL_KINDS,
    KINDS,
    MODULE_KINDS,
    SMOOTH_TAIL_DERIVATIVE,
    functional_name,
    functional_params,
    module_kind,
    module_params,
    smooth_tail_threshold,
)

EPS = 0.01
T = torch.tensor


def active(kind: str, y: torch.Tensor, **params) -> list[bool]:
    return KINDS[kind].active(y, params).tolist()


def saturated(kind: str, y: torch.Tensor, x: torch.Tensor | None = None, eps: float = EPS, **params):
    mask = KINDS[kind].saturated(x, y, params, eps)
    return None if mask is None else mask.tolist()


# ---------------------------------------------------------------- firing
@pytest.mark.parametrize(
    "kind, fn",
    [
        ("relu", F.relu),
        ("leaky_relu", F.leaky_relu),
        ("elu", F.elu),
        ("selu", F.selu),
        ("celu", F.celu),
        ("gelu", F.gelu),
        ("silu", F.silu),
        ("mish", F.mish),
        ("hardswish", F.hardswish),
        ("tanh", torch.tanh),
        ("softsign", F.softsign),
        ("tanhshrink", F.tanhshrink),
        ("relu6", F.relu6),
        ("rrelu", lambda x: F.rrelu(x, training=False)),
        ("prelu", lambda x: F.prelu(x, torch.tensor([0.25]))),
    ],
)
def test_firing_means_positive_pre_activation(kind: str, fn) -> None:
    x = T([-5.0, -1.0, -1e-3, 0.0, 1e-3, 0.7, 4.0])
    assert active(kind, fn(x)) == (x > 0).tolist()


@pytest.mark.parametrize(
    "kind, fn, params",
    [
        ("sigmoid", torch.sigmoid, {}),
        ("hardsigmoid", F.hardsigmoid, {}),
        ("logsigmoid", F.logsigmoid, {}),
        ("softplus", F.softplus, {}),
        ("softplus", lambda x: F.softplus(x, beta=3.0), {"beta": 3.0}),
        ("hardtanh", F.hardtanh, {}),
    ],
)
def test_firing_of_offset_kinds_is_positive_pre_activation(kind: str, fn, params) -> None:
    # sigmoid > 0.5, logsigmoid > ln 0.5, softplus > ln(2)/beta: all mean x > 0.
    x = T([-6.0, -1.0, -0.1, 0.0, 0.1, 1.0, 6.0], dtype=torch.float64)
    assert active(kind, fn(x), **params) == (x > 0).tolist()


def test_firing_threshold() -> None:
    x = T([0.2, 0.5, 0.7, 3.0])
    assert active("threshold", F.threshold(x, 0.5, 0.0), threshold=0.5, value=0.0) == [False, False, True, True]
    # A replacement value above the threshold is not firing.
    assert active("threshold", F.threshold(x, 0.5, 2.0), threshold=0.5, value=2.0) == [False, False, True, True]


def test_firing_hardtanh_with_positive_min_val() -> None:
    y = F.hardtanh(T([0.0, 0.5, 0.6, 2.0]), min_val=0.5, max_val=1.5)
    assert active("hardtanh", y, min_val=0.5, max_val=1.5) == [False, False, True, True]


@pytest.mark.parametrize("kind, fn", [("softmax", F.softmax), ("softmin", F.softmin), ("log_softmax", F.log_softmax)])
def test_firing_softmax_family_is_above_uniform(kind: str, fn) -> None:
    x = T([[0.0, 1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    y = fn(x, dim=1)
    p = F.softmax(-x if kind == "softmin" else x, dim=1)
    expected = (p > 0.25 + 1e-6).tolist()
    assert active(kind, y, dim=1) == expected
    # Along dim 0 the uniform level is 1/2.
    y0 = fn(x, dim=0)
    p0 = F.softmax(-x if kind == "softmin" else x, dim=0)
    assert active(kind, y0, dim=0) == (p0 > 0.5 + 1e-6).tolist()


def test_firing_glu_is_positive_value_half() -> None:
    a, b = T([[-1.0, 2.0, 0.5]]), T([[3.0, -3.0, 0.0]])
    y = F.glu(torch.cat([a, b], dim=-1), dim=-1)
    assert active("glu", y, dim=-1) == [[False, True, True]]


# ---------------------------------------------------------------- saturation
def test_saturation_sigmoid() -> None:
    y = T([0.005, 0.02, 0.5, 0.98, 0.995])
    assert saturated("sigmoid", y) == [True, False, False, False, True]
    assert saturated("sigmoid", y, eps=0.03) == [True, True, False, True, True]


def test_saturation_hardsigmoid() -> None:
    y = F.hardsigmoid(T([-4.0, -3.0, -1.0, 0.0, 2.9, 3.0, 5.0]))
    assert saturated("hardsigmoid", y) == [True, True, False, False, False, True, True]


def test_saturation_tanh_and_softsign() -> None:
    y = T([-0.995, -0.98, 0.0, 0.98, 0.995])
    assert saturated("tanh", y) == [True, False, False, False, True]
    # softsign: f' = (1 - |y|)^2 < eps  <=>  |y| > 1 - sqrt(eps) = 0.9
    assert saturated("softsign", T([-0.95, -0.85, 0.5, 0.89, 0.91])) == [True, False, False, False, True]


def test_saturation_hardtanh_and_relu6() -> None:
    y = F.hardtanh(T([-2.0, -1.0, 0.0, 0.99, 1.0, 3.0]))
    assert saturated("hardtanh", y, min_val=-1.0, max_val=1.0) == [True, True, False, False, True, True]
    y = F.hardtanh(T([-1.0, 0.5, 1.0, 2.0]), 0.0, 2.0)
    assert saturated("hardtanh", y, min_val=0.0, max_val=2.0) == [True, False, False, True]
    assert saturated("relu6", F.relu6(T([-1.0, 3.0, 5.99, 6.0, 9.0]))) == [False, False, False, True, True]


@pytest.mark.parametrize("kind", ["relu", "leaky_relu", "prelu", "rrelu", "threshold", "tanhshrink"])
def test_kinds_without_saturation(kind: str) -> None:
    assert saturated(kind, T([-1.0, 1.0]), x=T([-1.0, 1.0])) is None
    assert not KINDS[kind].unit_saturation


def _derivative(fn, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


@pytest.mark.parametrize(
    "kind, fn, params, scale",
    [
        # Exact: saturated <=> |f'(x)| / scale < eps (scale: SELU is judged relative to its linear slope).
        ("elu", F.elu, {}, 1.0),
        ("elu", lambda x: F.elu(x, alpha=2.0), {"alpha": 2.0}, 1.0),
        ("celu", F.celu, {}, 1.0),
        ("celu", lambda x: F.celu(x, alpha=0.5), {"alpha": 0.5}, 1.0),
        ("selu", F.selu, {}, 1.0507009873554805),
        ("softplus", F.softplus, {}, 1.0),
        ("softplus", lambda x: F.softplus(x, beta=2.0), {"beta": 2.0}, 1.0),
        ("logsigmoid", F.logsigmoid, {}, 1.0),
        ("softsign", F.softsign, {}, 1.0),
    ],
)
def test_output_saturation_is_where_the_derivative_is_below_eps(kind, fn, params, scale) -> None:
    x = torch.linspace(-12.0, 12.0, 4801, dtype=torch.float64)
    flat = _derivative(fn, x).abs() / scale < EPS
    got = KINDS[kind].saturated(None, fn(x), params, EPS)
    # Away from the boundary itself (float rounding), the two definitions agree exactly.
    boundary = (flat[1:] != flat[:-1]).nonzero().flatten()
    keep = torch.ones_like(flat)
    for i in boundary.tolist():
        keep[max(0, i - 1) : i + 3] = False
    assert boundary.numel() >= 1
    assert torch.equal(got[keep], flat[keep])


@pytest.mark.parametrize("fn_name", ["gelu", "gelu_tanh", "silu", "mish", "hardswish"])
def test_smooth_tail_threshold_is_where_the_derivative_crosses(fn_name: str) -> None:
    fns = {
        "gelu": F.gelu,
        "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
        "silu": F.silu,
        "mish": F.mish,
        "hardswish": F.hardswish,
    }
    t = smooth_tail_threshold(fn_name)
    expected = {"gelu": -3.07, "gelu_tanh": -3.05, "silu": -6.26, "mish": -6.26, "hardswish": -3.0}[fn_name]
    assert t == pytest.approx(expected, abs=0.01)
    below = torch.linspace(-30.0, t - 1e-3, 20001, dtype=torch.float64)
    assert (_derivative(fns[fn_name], below).abs() < SMOOTH_TAIL_DERIVATIVE).all()
    assert _derivative(fns[fn_name], torch.tensor([t + 1e-3], dtype=torch.float64)).abs().item() >= SMOOTH_TAIL_DERIVATIVE


@pytest.mark.parametrize("kind, fn", [("gelu", F.gelu), ("silu", F.silu), ("mish", F.mish), ("hardswish", F.hardswish)])
def test_smooth_tail_saturation_reads_the_input(kind: str, fn) -> None:
    t = smooth_tail_threshold(kind)
    x = T([t - 5.0, t - 0.01, t + 0.01, 0.0, 2.0], dtype=torch.float64)
    assert KINDS[kind].saturation_reads == "input"
    assert saturated(kind, fn(x), x=x) == [True, True, False, False, False]
    # The output alone (an inplace call overwrote the input) gives no saturation.
    assert saturated(kind, fn(x), x=None) is None


def test_gelu_tanh_uses_its_own_threshold() -> None:
    t_exact, t_tanh = smooth_tail_threshold("gelu"), smooth_tail_threshold("gelu_tanh")
    x = T([(t_exact + t_tanh) / 2], dtype=torch.float64)
    exact = saturated("gelu", F.gelu(x), x=x)
    approx = saturated("gelu", F.gelu(x, approximate="tanh"), x=x, approximate="tanh")
    assert exact != approx


def test_saturation_softmax_family_per_row() -> None:
    x = T([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 4.0]])
    assert saturated("softmax", F.softmax(x, dim=1), dim=1) == [True, False, False]
    assert saturated("log_softmax", F.log_softmax(x, dim=1), dim=1) == [True, False, False]
    assert saturated("softmin", F.softmin(-x, dim=1), dim=1) == [True, False, False]
    # Rows along dim 0 are the columns here.
    assert saturated("softmax", F.softmax(x.t(), dim=0), dim=0) == [True, False, False]
    assert KINDS["softmax"].per_row and not KINDS["softmax"].unit_saturation


def test_saturation_softmax_legacy_implicit_dim() -> None:
    x = T([[10.0, 0.0], [0.0, 0.0]])
    y = F.softmax(x, dim=1)
    assert saturated("softmax", y) == [True, False]  # no dim: torch's legacy choice is 1 for 2-D


def test_saturation_glu_reads_the_gate_half() -> None:
    limit = math.log((1 - EPS) / EPS)  # sigmoid(b) within eps of 0 or 1
    a = T([[1.0, 1.0, 1.0, 1.0]])
    b = T([[limit + 0.1, -(limit + 0.1), limit - 0.1, 0.0]])
    x = torch.cat([a, b], dim=-1)
    assert saturated("glu", F.glu(x), x=x, dim=-1) == [[True, True, False, False]]
    x1 = torch.cat([a.t(), b.t()], dim=0)
    assert saturated("glu", F.glu(x1, dim=0), x=x1, dim=0) == [[True], [True], [False], [False]]


# ---------------------------------------------------------------- lookup
def test_module_kinds_cover_torch_classes_and_subclasses() -> None:
    for cls, kind in MODULE_KINDS.items():
        module = cls(dim=-1) if cls in (nn.Softmax, nn.Softmin, nn.LogSoftmax) else (
            cls(0.5, 0.0) if cls is nn.Threshold else cls()
        )
        assert module_kind(module) == kind, cls
        assert kind in KINDS
    assert module_kind(nn.ReLU6()) == "relu6"  # ReLU6 subclasses Hardtanh

    class MyReLU(nn.ReLU):
        pass

    class GELUActivation(nn.Module):  # Hugging Face naming
        def forward(self, x):
            return F.gelu(x)

    assert module_kind(MyReLU()) == "relu"
    assert module_kind(GELUActivation()) == "gelu"
    assert module_kind(nn.Linear(2, 2)) is None
    assert module_kind(nn.Identity()) is None


def test_module_params() -> None:
    assert module_params(nn.Softmax(dim=-1)) == {"dim": -1}
    assert module_params(nn.Softplus(beta=2.0, threshold=30.0)) == {"beta": 2.0}
    assert module_params(nn.Threshold(0.3, 1.0)) == {"threshold": 0.3, "value": 1.0}
    assert module_params(nn.GELU(approximate="tanh")) == {"approximate": "tanh"}
    assert module_params(nn.ELU(alpha=0.5))["alpha"] == 0.5
    assert module_params(nn.Hardtanh(-2.0, 2.0)) == {"min_val": -2.0, "max_val": 2.0}


def test_functional_params_from_positions_and_keywords() -> None:
    x = torch.zeros(2, 3)
    assert functional_params(F.softmax, (x, -1), {}) == {"dim": -1}
    assert functional_params(F.softmax, (x,), {"dim": 0}) == {"dim": 0}
    assert functional_params(torch.Tensor.softmax, (x, 1), {}) == {"dim": 1}
    assert functional_params(F.threshold, (x, 0.5, 2.0), {}) == {"threshold": 0.5, "value": 2.0}
    assert functional_params(F.elu, (x,), {"alpha": 0.3}) == {"alpha": 0.3}
    assert functional_params(F.gelu, (x,), {"approximate": "tanh"}) == {"approximate": "tanh"}
    assert functional_params(F.hardtanh, (x, -2.0, 3.0), {}) == {"min_val": -2.0, "max_val": 3.0}


def test_functional_names() -> None:
    assert functional_name(F.relu) == functional_name(torch.relu) == functional_name(torch.Tensor.relu) == "relu"
    assert functional_name(F.relu_) == "relu"
    assert functional_name(F.log_softmax) == "log_softmax"
    assert all(kind in KINDS for kind, _ in FUNCTIONAL_KINDS.values())


def test_every_kind_documents_firing_and_family() -> None:
    from act_diagnostics.core.kinds import FAMILIES

    for kind in KINDS.values():
        assert kind.family in FAMILIES
        assert kind.firing_doc


def test_smooth_tail_follows_eps() -> None:
    t1, t5 = smooth_tail_threshold("silu", 0.01), smooth_tail_threshold("silu", 0.05)
    assert t1 < t5 < 0
    x = T([(t1 + t5) / 2], dtype=torch.float64)
    assert saturated("silu", F.silu(x), x=x, eps=0.01) == [False]
    assert saturated("silu", F.silu(x), x=x, eps=0.05) == [True]


# ---------------------------------------------------------------- float indicators
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_float_indicators_agree_with_the_masks(kind: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 10, generator=gen) * 4).to(dtype)
    # Outputs spread over every region the tests distinguish, with exact zeros and bounds.
    y = torch.cat([x, torch.rand(64, 10, generator=gen).to(dtype), torch.zeros(2, 10, dtype=dtype), torch.ones(2, 10, dtype=dtype)])
    if kind in ("relu", "relu6"):
        y = y.clamp(min=0)  # the sign shortcut relies on the output being >= 0
    params = {"dim": -1} if KINDS[kind].per_row else {}
    spec = KINDS[kind]
    # The masks at full precision: the thresholds are exact there (bfloat16 would round them first).
    mask = spec.active(y.float(), params)
    indicator = spec.active_indicator(y, params)
    assert indicator.shape == mask.shape
    assert torch.equal(indicator.to(torch.float64), mask.to(torch.float64)), kind
    xin = torch.cat([x, x[:68]]) if spec.saturation_reads == "input" else None
    sat = spec.saturated(None if xin is None else xin.float(), y.float(), params, EPS)
    fast = spec.saturated_indicator(xin, y, params, EPS)
    assert (sat is None) == (fast is None)
    if sat is not None:
        assert torch.equal(fast.to(torch.float64), sat.to(torch.float64)), kind


def test_indicator_is_float_where_it_pays_and_never_counts_nan() -> None:
    y = torch.tensor([[-1.0, 0.0, 2.0, float("nan")]])
    assert KINDS["gelu"].active_indicator(y, {}).dtype == torch.float32
    assert KINDS["sigmoid"].saturated_indicator(None, y, {}, EPS).dtype == torch.float32
    assert KINDS["gelu"].active_indicator(y, {}).tolist()[0][:3] == [0.0, 0.0, 1.0]
    # relu(NaN) is 0 on some backends and NaN on others: either way NaN is never counted as firing.
    nan_entry = float(KINDS["gelu"].active_indicator(y, {})[0, 3])
    assert math.isnan(nan_entry) or nan_entry == 0.0
    assert KINDS["threshold"].active_indicator(y, {}).dtype == torch.bool  # no float form


def test_each_record_holds_its_names_and_the_lookups_agree() -> None:
    import dataclasses

    for kind in KINDS.values():
        for cls in kind.modules:
            assert MODULE_KINDS[cls] == kind.name
        for fn, positions in kind.functions:
            assert FUNCTIONAL_KINDS[fn] == (kind.name, positions)
        for class_name in kind.module_names:
            assert module_kind(type(class_name, (nn.Module,), {})()) == kind.name
    assert module_kind(type("LinearActivation", (nn.Module,), {})()) is None  # an identity, not a site
    with pytest.raises(dataclasses.FrozenInstanceError):
        KINDS["relu"].family = "smooth"  # type: ignore[misc]


def test_output_ranges_come_from_the_records() -> None:
    from act_diagnostics.core.kinds import output_range

    assert output_range("sigmoid", {}) == (0.0, 1.0)
    assert output_range("hardtanh", {"min_val": -2.0, "max_val": 3.0}) == (-2.0, 3.0)
    assert output_range("relu6", {}) == (0.0, 6.0)
    assert output_range("gelu", {}) is None and output_range("no_such_kind", {}) is None
