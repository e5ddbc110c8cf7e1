"""SiteState -> pack -> window_stats, against statistics computed by hand on the same tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from act_diagnostics.core.kinds import KINDS, smooth_tail_threshold
from act_diagnostics.core.pack import reduce_to_host, totals_to_stats
from act_diagnostics.core.snapshot import SiteStats
from act_diagnostics.core.state import COUNTERS, FOLD_CALLS, FOLD_UNIT_COUNTS, MAX_PLANS, CallPlan, SiteState, unit_counts

EPS = 0.01


def make_state(kind: str, n_units: int, unit_dim: int = -1, sample: int | None = None, params=None, hist: int = 0):
    return SiteState(KINDS[kind], dict(params or {}), unit_dim, n_units, torch.device("cpu"), sample, EPS, hist)


def stats(state: SiteState, **thresholds) -> SiteStats:
    totals, _ = reduce_to_host([state], ["s"], torch.device("cpu"))
    return totals_to_stats(totals, **thresholds)["s"]


def test_relu_statistics_match_hand_computation() -> None:
    x = torch.tensor([[-1.0, 2.0, -3.0], [4.0, 5.0, -6.0], [-7.0, 8.0, -9.0], [1.0, 1.0, -1.0]])
    y = F.relu(x)
    st = make_state("relu", 3)
    st.observe(x, y, detail=False)
    s = stats(st)
    assert (s.calls, s.elements, s.sampled, s.units) == (1, 12, 12, 3)
    # unit 0 fires on rows 1 and 3, unit 1 always, unit 2 never
    assert s.unit_firing == [0.5, 1.0, 0.0]
    assert s.firing_rate == pytest.approx(6 / 12)
    assert s.dead_fraction == pytest.approx(1 / 3)
    assert s.saturation is None and s.saturated_units is None
    assert s.mean == pytest.approx(y.mean().item())
    assert s.std == pytest.approx(y.std(unbiased=False).item())
    assert s.rms == pytest.approx(y.pow(2).mean().sqrt().item())
    assert s.max_abs == 8.0
    assert s.nonfinite is False
    assert s.nonfinite_share is None and s.input_std is None  # detail steps only
    assert s.grad_rms is None and s.param_grad_norm is None


def test_window_accumulates_over_calls_and_resets() -> None:
    st = make_state("relu", 2)
    a, b = torch.tensor([[1.0, -1.0]]), torch.tensor([[2.0, 3.0], [-1.0, 4.0]])
    st.observe(a, F.relu(a), False)
    st.observe(b, F.relu(b), False)
    s = stats(st)
    allv = F.relu(torch.cat([a, b]))
    assert s.calls == 2 and s.elements == 6
    assert s.unit_firing == pytest.approx([2 / 3, 2 / 3])
    assert s.mean == pytest.approx(allv.mean().item())
    assert s.std == pytest.approx(allv.std(unbiased=False).item())
    st.reset()
    s = stats(st)
    assert s.calls == 0 and s.elements == 0 and s.mean is None and s.firing_rate is None


def test_sigmoid_saturation_per_unit() -> None:
    y = torch.tensor([[0.001, 0.5, 0.999], [0.002, 0.6, 0.2], [0.003, 0.4, 0.995], [0.004, 0.3, 0.5]])
    st = make_state("sigmoid", 3)
    st.observe(None, y, False)
    s = stats(st)
    assert s.saturation == pytest.approx(6 / 12)
    assert s.saturated_units == pytest.approx(1 / 3)  # only unit 0 is saturated on > 99% of samples
    assert s.unit_firing == [0.0, 0.25, 0.5]
    assert s.dead_fraction == pytest.approx(1 / 3)


@pytest.mark.parametrize("eps", [0.01, 0.05])
def test_tanh_saturation_uses_eps(eps: float) -> None:
    y = torch.tensor([[0.96, 0.999], [-0.97, 0.0]])
    st = SiteState(KINDS["tanh"], {}, -1, 2, torch.device("cpu"), None, eps)
    st.observe(None, y, False)
    expected = (y.abs() > 1 - eps).float().mean().item()
    assert stats(st).saturation == pytest.approx(expected)


def test_gelu_saturation_from_the_input() -> None:
    t = smooth_tail_threshold("gelu")
    x = torch.tensor([[t - 1.0, 0.5], [t - 2.0, t + 0.5], [1.0, -0.1], [t - 0.1, 2.0]])
    st = make_state("gelu", 2)
    st.observe(x, F.gelu(x), True)  # the smooth tail is read on detail steps only
    s = stats(st)
    assert s.saturation == pytest.approx(3 / 8)
    assert s.saturated_units == 0.0
    # A non-detail call adds to firing but not to the tail share (its own denominator).
    st.observe(x, F.gelu(x), False)
    s = stats(st)
    assert s.sampled == 16 and s.saturation == pytest.approx(3 / 8)
    # An inplace call (x is y) has no pre-activation: firing is measured, saturation not.
    st2 = make_state("gelu", 2)
    y = F.gelu(x)
    st2.observe(y, y, True)
    s2 = stats(st2)
    assert s2.firing_rate is not None and s2.saturation is None


def test_saturated_units_when_saturation_was_read_on_fewer_calls() -> None:
    # Two calls, one inplace: saturation divides by its own sample count.
    t = smooth_tail_threshold("silu")
    x = torch.full((4, 2), t - 1.0)
    st = make_state("silu", 2)
    st.observe(x, F.silu(x), True)
    y = F.silu(x.clone())
    st.observe(y, y, True)
    s = stats(st)
    assert s.saturation == 1.0
    assert s.saturated_units == 1.0


def test_softmax_saturation_per_row_and_units_are_classes() -> None:
    logits = torch.tensor([[20.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 20.0], [1.0, 0.0, 0.0]])
    y = F.softmax(logits, dim=-1)
    st = make_state("softmax", 3, unit_dim=1, params={"dim": -1})
    st.observe(logits, y, False)
    s = stats(st)
    assert s.saturation == pytest.approx(2 / 4)  # rows, not elements
    assert s.saturated_units is None
    assert s.units == 3
    assert s.unit_firing == pytest.approx([0.5, 0.0, 0.25])  # probability > 1/3


def test_glu_saturation_reads_gate_half_of_the_input() -> None:
    limit = math.log((1 - EPS) / EPS)
    a = torch.ones(2, 2)
    b = torch.tensor([[limit + 1, 0.0], [-(limit + 1), -(limit + 1)]])
    x = torch.cat([a, b], dim=-1)
    st = make_state("glu", 2, params={"dim": -1})
    st.observe(x, F.glu(x, dim=-1), False)
    assert stats(st).saturation == pytest.approx(3 / 4)


def test_detail_step_adds_nonfinite_share_and_input_std() -> None:
    y = torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]])
    st = make_state("relu", 2)
    st.observe(None, y, detail=True)
    x = torch.tensor([1.0, 3.0, 5.0, 7.0])
    st.observe_input_totals(torch.stack((x.sum(), x.dot(x))).double(), 4)
    s = stats(st)
    assert s.nonfinite is True
    assert s.nonfinite_share == pytest.approx(0.5)
    assert s.input_std == pytest.approx(x.std(unbiased=False).item())
    assert not math.isfinite(s.mean)
    d = s.to_dict()
    assert d["mean"] is None  # non-finite floats become None in dictionaries (JSON-safe)
    assert "unit_firing" not in d and "unit_firing" in s.to_dict(with_units=True)


def test_nonfinite_flag_without_detail() -> None:
    st = make_state("tanh", 2)
    st.observe(None, torch.tensor([[0.5, float("inf")]]), detail=False)
    s = stats(st)
    assert s.nonfinite is True and s.nonfinite_share is None and s.max_abs == math.inf


def test_grad_rms_and_param_grad_norm() -> None:
    st = make_state("relu", 3)
    y = torch.ones(2, 3)
    st.observe(None, y, False)
    g1, g2 = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])
    st.observe_grad(g1, False)
    st.observe_grad(g2, False)
    st.observe_param_grad_sq(torch.tensor(9.0))
    st.observe_param_grad_sq(torch.tensor(25.0))
    s = stats(st)
    assert s.grad_rms == pytest.approx(torch.cat([g1, g2]).pow(2).mean().sqrt().item())
    assert s.grad_nonfinite is False
    # Root of the mean squared norm over the log steps that measured it.
    assert s.param_grad_norm == pytest.approx(math.sqrt((9 + 25) / 2))
    st.observe_grad(torch.tensor([[float("nan"), 0.0, 0.0]]), False)
    assert stats(st).grad_nonfinite is True


def test_loss_scale_is_divided_out_of_the_sampled_gradient() -> None:
    g = torch.randn(1000, 4)
    scale = torch.tensor([2.0**16])
    expected = g[:100].pow(2).mean().sqrt().item()  # sample 400 elements: the leading 100 rows
    plain, as_tensor, as_float = (make_state("relu", 4, sample=400, hist=16) for _ in range(3))
    plain.observe_grad(g, True)
    as_tensor.observe_grad(g * scale, True, scale)  # the GradScaler's device tensor
    as_float.observe_grad(g * scale, True, 2.0**16)  # GradScaler.get_scale()
    for st in (plain, as_tensor, as_float):
        assert stats(st).grad_rms == pytest.approx(expected, rel=1e-6)
        assert torch.allclose(st.grad_sample, plain.grad_sample)


@pytest.mark.parametrize("deferred", [False, True])
def test_steps_a_grad_scaler_skips_for_overflow_are_left_out(deferred: bool) -> None:
    """float16 AMP: the GradScaler skips a step whose scaled gradients overflow (its calibration at
    the start of a run); that gradient trains nothing, so it is no finding and no part of the RMS."""
    scale = torch.tensor([2.0**16])
    g = torch.randn(8, 4)
    st = make_state("relu", 4)
    st.deferred = deferred
    st.observe_grad(torch.full((8, 4), float("inf")), False, scale)  # an overflowing step
    st.observe_grad(g * scale, False, scale)
    st.observe_param_grad_sq(torch.tensor(float("inf")), skip_nonfinite=True)
    st.observe_param_grad_sq(torch.tensor(9.0), skip_nonfinite=True)
    s = stats(st)
    assert s.grad_nonfinite is False and s.grad_rms == pytest.approx(g.pow(2).mean().sqrt().item(), rel=1e-6)
    assert s.grad_skipped_share == 0.5 and s.param_grad_norm == pytest.approx(3.0)
    st.reset()
    st.observe_grad(torch.full((8, 4), float("nan")), False)  # no scaler: NaN is the model's own
    assert stats(st).grad_nonfinite is True and stats(st).grad_skipped_share is None


def test_softmax_rows_of_another_length_still_count_their_saturation() -> None:
    """Attention over sequences of varying length: keys are the units, fixed by the first call;
    a row's peakedness does not depend on how many keys it has."""
    torch.manual_seed(0)
    st = make_state("softmax", 5, params={"dim": -1})
    st.observe(None, torch.softmax(torch.randn(4, 5), -1), False)
    peaked = torch.softmax(torch.eye(12)[:6] * 50.0, -1)  # 6 rows over 12 keys, one-hot
    st.observe(None, peaked, False)
    s = stats(st)
    assert st.unit_mismatch == 1 and s.sampled == 20  # firing: the matching call only
    assert s.saturation_samples == 10 and s.saturation == pytest.approx(0.6)  # 6 of 10 rows peaked


def test_unit_dim_one_for_conv_outputs() -> None:
    x = torch.randn(4, 3, 5, 5)
    x[:, 1] = -1.0  # channel 1 never fires
    x[:, 2] = 1.0  # channel 2 always fires
    y = F.relu(x)
    st = make_state("relu", 3, unit_dim=1)
    st.observe(x, y, False)
    s = stats(st)
    expected = (y > 0).float().mean(dim=(0, 2, 3))
    assert s.unit_firing == pytest.approx(expected.tolist())
    assert s.unit_firing[1] == 0.0 and s.unit_firing[2] == 1.0
    assert s.dead_fraction == pytest.approx(1 / 3)


def test_unit_dim_last_for_sequences() -> None:
    x = torch.randn(2, 7, 4)
    x[..., 0] = -1.0
    st = make_state("relu", 4, unit_dim=-1)
    st.observe(x, F.relu(x), False)
    s = stats(st)
    assert s.unit_firing == pytest.approx((x > 0).float().mean(dim=(0, 1)).tolist())


def test_unit_counts_helper() -> None:
    mask = torch.rand(3, 4, 5, 6) > 0.5
    for dim in range(4):
        other = [d for d in range(4) if d != dim]
        assert torch.equal(unit_counts(mask, dim), mask.sum(dim=other))
    assert torch.equal(unit_counts(mask, -1), mask.sum(dim=(0, 1, 2)))
    assert unit_counts(torch.tensor(True), 0).tolist() == [1]


def test_sample_elements_bounds_every_per_element_statistic() -> None:
    x = -torch.ones(1000, 10)
    x[:10] = 1.0  # only the leading 10 rows fire
    x[500, 3] = 1e6  # outside the sample: a NaN or a spike there is seen on detail steps only
    st = make_state("relu", 10, sample=100)
    st.observe(x, F.relu(x), False)
    g = torch.zeros(1000, 10)
    g[:10] = 2.0
    st.observe_grad(g, False)
    s = stats(st)
    assert s.sampled == 100 and s.elements == 100
    assert s.firing_rate == 1.0  # read on the leading 100 elements (10 rows)
    assert s.mean == 1.0 and s.max_abs == 1.0  # moments and extrema read the same rows
    assert s.grad_rms == 2.0  # and so does the gradient
    st.reset()
    x[500, 3] = float("nan")
    st.observe(x, F.relu(x), True)  # a detail step reads the whole output for non-finite values
    s = stats(st)
    assert s.nonfinite_share == pytest.approx(1 / 10_000) and not s.nonfinite
    assert CallPlan(x.shape, x.dtype, make_state("relu", 10, sample=25)).rows == 2
    assert CallPlan(x.shape, x.dtype, make_state("relu", 10, sample=5)).rows == 1  # at least one row
    assert CallPlan(x.shape, x.dtype, make_state("relu", 10)).rows is None  # no limit: everything
    assert CallPlan(x.shape, x.dtype, make_state("relu", 10, sample=10_000)).rows is None  # fits


def test_plans_are_per_shape_and_bounded() -> None:
    st = make_state("relu", 4, sample=8)
    for rows in (1, 2, 3, 4):
        st.observe(None, torch.ones(rows, 4), False)
    s = stats(st)
    assert s.calls == 4 and s.elements == 1 * 4 + 2 * 4 + 2 * 4 + 2 * 4  # 2 rows fit in 8 elements
    st.reset()
    for length in range(1, 200):  # e.g. a new batch size every call: the cache starts over
        st.observe(None, torch.ones(length, 4), False)
    assert len(st._plans) <= MAX_PLANS
    assert stats(st).elements == sum(min(length, 2) * 4 for length in range(1, 200))


def test_sampling_keeps_the_pre_activation_aligned() -> None:
    t = smooth_tail_threshold("silu")
    x = torch.full((100, 4), t - 1.0)
    x[:5] = 1.0  # only the sampled rows are unsaturated
    st = make_state("silu", 4, sample=20)
    st.observe(x, F.silu(x), True)  # detail: the smooth tail is read
    s = stats(st)
    assert s.sampled == 20 and s.saturation == 0.0 and s.firing_rate == 1.0


def test_units_on_dim_zero_read_everything() -> None:
    x = torch.randn(6, 50)
    x[0] = -1.0
    st = make_state("relu", 6, unit_dim=0, sample=10)
    st.observe(x, F.relu(x), False)
    s = stats(st)
    assert s.sampled == 300 and s.unit_firing[0] == 0.0


def test_one_unit_outputs() -> None:
    # A (batch,) sigmoid output is one unit whatever the batch size.
    st = make_state("sigmoid", 1, unit_dim=0)
    st.observe(None, torch.tensor([0.9, 0.2, 0.7, 0.001]), False)
    st.observe(None, torch.tensor([0.8, 0.3]), False)
    s = stats(st)
    assert s.units == 1 and s.sampled == 6
    assert s.unit_firing == pytest.approx([3 / 6])  # 0.9, 0.7, 0.8 are above 0.5
    assert s.saturation == pytest.approx(1 / 6)


def test_low_precision_inputs_accumulate_in_float32() -> None:
    y = torch.ones(4096, 8, dtype=torch.bfloat16)
    st = make_state("relu", 8)
    st.observe(None, y, detail=True)
    st.observe_grad(torch.full((4096, 8), 0.5, dtype=torch.float16), False)
    s = stats(st)
    # A bf16 sum would stop at 256; float32 accumulation is exact here.
    assert s.mean == 1.0 and s.rms == 1.0 and s.std == 0.0
    assert s.grad_rms == pytest.approx(0.5)
    assert st.sums.dtype == torch.float64


def test_empty_tensors_do_not_crash() -> None:
    st = make_state("relu", 5)
    st.observe(torch.zeros(0, 5), torch.zeros(0, 5), detail=True)
    st.observe_grad(torch.zeros(0, 5), True)
    s = stats(st)
    assert s.calls == 1 and s.elements == 0 and s.mean is None and s.firing_rate is None and s.grad_rms is None


def test_histogram_samples_on_detail_steps() -> None:
    st = make_state("relu", 10, hist=16)
    y = torch.arange(1000.0).reshape(100, 10)
    st.observe(None, y, detail=False)
    assert st.out_sample is None
    st.observe(None, y, detail=True)
    assert st.out_sample is not None and st.out_sample.numel() == 16 and st.out_sample.dtype == torch.float32
    y.fill_(-1.0)  # the sample is a copy
    assert st.out_sample.min().item() >= 0.0
    st.observe_grad(torch.ones(100, 10), detail=True)
    assert st.grad_sample is not None and st.grad_sample.numel() == 16
    totals, samples = reduce_to_host([st], ["s"], torch.device("cpu"), samples=[st.out_sample, st.grad_sample])
    assert len(samples) == 2 and len(samples[0]) == 16 and samples[1] == [1.0] * 16
    st.reset()
    assert st.out_sample is None and st.grad_sample is None


def test_state_follows_device_keeping_totals() -> None:
    st = make_state("relu", 2)
    st.observe(None, torch.tensor([[1.0, 0.0]]), False)
    st.to(torch.device("cpu"))
    assert stats(st).calls == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape, unit_dim", [((6, 5), -1), ((3, 4, 5), -1), ((2, 5, 3, 3), 1)])
def test_relu_fast_firing_count_equals_the_mask(shape, unit_dim, dtype) -> None:
    # ReLU / ReLU6 count firing as sum(sign(y)); it must equal counting y > 0, NaN included.
    x = torch.randn(shape).to(dtype)
    x.view(-1)[3] = float("nan")
    x.view(-1)[4] = -0.0
    for kind, fn in (("relu", F.relu), ("relu6", F.relu6)):
        y = fn(x)
        assert KINDS[kind].sign_firing
        st = make_state(kind, shape[unit_dim], unit_dim=unit_dim)
        st.observe(x, y, False)
        expected = unit_counts(y > 0, unit_dim)
        assert st.unit_active.tolist() == expected.tolist()


@pytest.mark.parametrize(
    "kind, shape, unit_dim",
    [("relu", (6, 5), -1), ("tanh", (4, 3, 7), -1), ("gelu", (6, 5), -1), ("softmax", (6, 5), -1),
     ("sigmoid", (6,), -1), ("leaky_relu", (2, 4, 3, 3), 1)],
)
def test_deferred_results_fold_to_the_same_totals(kind: str, shape, unit_dim: int) -> None:
    """Deferring each call's results to a fold changes when they are added, never what: the
    folded totals equal those added call by call, over more calls than one fold holds."""
    torch.manual_seed(0)
    n_units = 1 if len(shape) == 1 else shape[unit_dim]
    params = {"dim": -1} if kind == "softmax" else {}
    direct, deferred = make_state(kind, n_units, unit_dim, params=params), make_state(kind, n_units, unit_dim, params=params)
    deferred.deferred = True
    # tanh shifted down: the largest |value| is a minimum, which a fold must not lose.
    fn = {"relu": F.relu, "tanh": lambda t: torch.tanh(t / 3) - 0.5, "gelu": F.gelu, "softmax": lambda t: F.softmax(t * 4, -1),
          "sigmoid": lambda t: torch.sigmoid(t * 4), "leaky_relu": F.leaky_relu}[kind]
    for i in range(FOLD_CALLS + 7):
        x = torch.randn(shape) * 3
        y, g = fn(x), torch.randn(shape)
        for st in (direct, deferred):
            st.observe(x, y, detail=i % 10 == 0)
            st.observe_grad(g, detail=False)
        assert len(deferred._sums) < FOLD_CALLS and len(deferred._grad_squares) < FOLD_CALLS
    assert not deferred.folded  # the last calls wait for the snapshot, which folds them
    a, b = stats(direct), stats(deferred)
    assert deferred.folded
    assert b.unit_firing == a.unit_firing and b.saturation == a.saturation  # exact counts
    assert b.saturated_units == a.saturated_units and b.max_abs == a.max_abs
    for field in ("mean", "std", "grad_rms"):
        assert getattr(b, field) == pytest.approx(getattr(a, field), rel=1e-12)


def test_deferred_unit_counts_are_bounded() -> None:
    """A wide layer folds its deferred per-unit counts before they exceed FOLD_UNIT_COUNTS."""
    units = FOLD_UNIT_COUNTS // 8
    st = make_state("relu", units)
    st.deferred = True
    for _ in range(20):
        st.observe(None, F.relu(torch.randn(2, units)), detail=False)
        assert st._deferred_units < FOLD_UNIT_COUNTS and len(st._active) < 8
    assert stats(st).calls == 20


def test_very_wide_sites_add_their_counts_directly() -> None:
    """Counts of a site wider than a quarter of the budget would fold every few calls: added."""
    units = FOLD_UNIT_COUNTS // 2
    st = make_state("relu", units)
    st.deferred = True
    y = F.relu(torch.randn(2, units))
    st.observe(None, y, detail=False)
    assert not st._active and len(st._sums) == 1
    assert stats(st).unit_firing == (y > 0).float().mean(0).tolist()


def test_reset_discards_deferred_results() -> None:
    st = make_state("relu", 3)
    st.deferred = True
    st.observe(None, torch.ones(4, 3), detail=False)
    st.reset()
    assert st.folded
    st.observe(None, torch.zeros(4, 3), detail=False)
    s = stats(st)
    assert (s.calls, s.firing_rate, s.max_abs) == (1, 0.0, 0.0)


@pytest.mark.parametrize(
    "kind, dtype, value, params, stat, expected",
    [
        ("sigmoid", torch.float16, 0.990234375, {}, "saturation", 1.0),  # > 1 - eps; 0.99 rounds up in float16
        ("tanh", torch.float16, 0.990234375, {}, "saturation", 1.0),
        ("softplus", torch.float16, 0.693359375, {"beta": 1}, "firing_rate", 1.0),  # > ln 2 = 0.693147
        ("log_softmax", torch.bfloat16, -2.765625, {"dim": -1}, "firing_rate", 1.0),  # > -ln 16 = -2.7726
    ],
)
def test_half_precision_outputs_are_compared_with_exact_thresholds(kind, dtype, value, params, stat, expected) -> None:
    """float16 / bfloat16 outputs are compared in float32: a threshold rounded to the output's
    dtype first would put a value just past it on the wrong side."""
    y = torch.full((4, 16), value, dtype=dtype)
    st = make_state(kind, 16, params=params)
    st.observe(None, y, detail=False)
    assert getattr(stats(st), stat) == expected


def test_counters_are_read_by_their_names() -> None:
    from act_diagnostics.core import state as state_module

    names = ("calls", "elements", "sampled", "sat_total", "grad_calls", "grad_elements", "detail_elements",
             "in_elements", "param_grad_steps", "targets")
    assert [COUNTERS[getattr(state_module, n.upper())] for n in names] == list(names)
    st = SiteState(KINDS["sigmoid"], {}, 1, 3, torch.device("cpu"), None, 0.01)
    y = torch.rand(4, 3)
    st.observe(None, y, detail=True)
    st.observe_grad(torch.ones(4, 3), detail=False)
    c = st.counters
    assert (c[state_module.CALLS], c[state_module.ELEMENTS], c[state_module.SAMPLED]) == (1, 12, 12)
    assert (c[state_module.DETAIL_ELEMENTS], c[state_module.GRAD_CALLS], c[state_module.GRAD_ELEMENTS]) == (12, 1, 12)
