"""On-device running totals for one activation site, and the pure maths that fills them.

Design (see docs/statistics.md):

* Everything a hook computes stays on the tensor's device: no ``.item()``, no ``.cpu()``, no Python
  branch on a tensor value. The host learns the totals once per log step, when
  :func:`act_diagnostics.core.pack.pack_states` concatenates every site's state and copies it once.
* Totals are reducible across processes by sum (or max / min), so a single collective per log step
  serves DDP.
* Every per-element statistic (moments, max |value|, firing and saturation, the output gradient)
  reads at most ``sample_elements`` elements per call, the leading rows of the batch dimension, so
  a call costs the same whatever the size of its output. Detail steps count non-finite values over
  the whole output.
* A site's device totals are one flat vector, ``[sums..., max_abs, unit_active..., unit_saturated...]``
  in float64 (exact for counts below 2**53); the monitor places every site's vector in one shared
  buffer (:func:`act_diagnostics.core.pack.share_buffer`), so a log step packs and resets all of
  them with one op each. Inputs in bf16/fp16 (autocast) are read in float32.
* With ``deferred`` set (by the monitor, after a window's first measured steps, for sites off the
  CPU: core.windows.defers_on), a call's results (sum, sum of squares, max |value|, per-unit
  counts, the gradient's sum of squares) are kept as they come and added to the totals in one go
  (:meth:`SiteState.fold`) at the snapshot, or when a
  site holds FOLD_CALLS calls or FOLD_UNIT_COUNTS counts: inside a training step each dispatched
  op costs microseconds whatever its size, and adding every result costs as many ops as
  computing them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from act_diagnostics.core.kinds import ActivationKind

# Columns of SiteState.sums (float64, reduced by sum across processes).
# GRAD_SKIPPED / PARAM_GRAD_SKIPPED: gradient elements / parameter-norm steps left out because a
# float16 GradScaler skips the step they overflowed in (see observe_grad).
# TARGET_ROWS_OFF: target rows (over the site's classes) whose sum is not 1 (observe_target_rows).
(SUM, SUMSQ, GRAD_SUMSQ, SAT_ROWS, NONFINITE, IN_SUM, IN_SUMSQ, PARAM_GRAD_SQ, TARGET_OUTSIDE, GRAD_SKIPPED, PARAM_GRAD_SKIPPED,
 TARGET_ROWS_OFF) = range(12)
N_SUMS = 12
# Offset of max |value| in a site's device totals (reduced by max); the per-unit counts follow it.
MAX_ABS = N_SUMS
# Host-side integer counters (SiteState.counters, reduced by sum), by index and by name.
(CALLS, ELEMENTS, SAMPLED, SAT_TOTAL, GRAD_CALLS, GRAD_ELEMENTS, DETAIL_ELEMENTS, IN_ELEMENTS, PARAM_GRAD_STEPS, TARGETS,
 TARGET_ROWS) = range(11)
COUNTERS = (
    "calls",
    "elements",
    "sampled",
    "sat_total",
    "grad_calls",
    "grad_elements",
    "detail_elements",
    "in_elements",
    "param_grad_steps",
    "targets",
    "target_rows",
)

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# A site folds its deferred results into its totals at least every FOLD_CALLS calls, and once it
# holds FOLD_UNIT_COUNTS per-unit counts (256 KiB in float32): this bounds what it keeps between
# snapshots.
FOLD_CALLS = 64
FOLD_UNIT_COUNTS = 2**16
# Float32 sums of 0/1 values are exact below 2**24 per unit and call.
_EXACT_FLOAT_COUNT = 2**24


def totals_size(n_units: int, saturated_units: bool) -> int:
    """Length of a site's device totals: sums, max |value|, per-unit firing (and saturation) counts."""
    return N_SUMS + 1 + n_units * (2 if saturated_units else 1)


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it; MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def unit_counts(mask: Tensor, unit_dim: int) -> Tensor:
    """Count the set entries of ``mask`` per unit (index along ``unit_dim``).

    ``mask`` is bool, or a float 0/1 indicator (see :meth:`ActivationKind.active_indicator`).
    A bool mask is summed as uint8 into int32, about twice as fast as bool into int64 on the CPU
    (exact up to 2**31 samples per unit and call); an indicator is summed in float32 below 2**24
    elements (exact), else in float64, and is again several times faster than a bool mask.
    """
    if mask.dim() == 0:
        return mask.reshape(1).to(torch.float64 if mask.is_floating_point() else torch.int64)
    if mask.is_floating_point():
        return unit_sums(mask, unit_dim, torch.float32 if mask.numel() < _EXACT_FLOAT_COUNT else torch.float64)
    return unit_sums(mask.view(torch.uint8) if mask.dtype == torch.bool else mask, unit_dim, torch.int32)


def unit_sums(t: Tensor, unit_dim: int, dtype: torch.dtype) -> Tensor:
    """Sum ``t`` over every dimension but ``unit_dim``, accumulating in ``dtype``.

    Reshapes so the reduction runs over contiguous memory: summing over dims (0, 2, 3) directly is
    several times slower on the CPU than over a (rows, units, rest) view.
    """
    unit_dim = unit_dim % t.dim()
    if unit_dim == t.dim() - 1:
        return (t if t.dim() == 2 else t.reshape(-1, t.shape[-1])).sum(0, dtype=dtype)
    lead = 1
    for size in t.shape[:unit_dim]:
        lead *= size
    return t.reshape(lead, t.shape[unit_dim], -1).sum(2, dtype=dtype).sum(0)



def input_moments(x: Tensor) -> tuple[Tensor, int]:
    """(sum, sum of squares) of a pre-activation, on its device, and its element count.

    Read before the activation runs, so an inplace activation cannot hide it; added to the site by
    :meth:`SiteState.observe_input_totals` once the site is known.
    """
    flat = flat_float(x.detach())
    return torch.stack((flat.sum(), torch.dot(flat, flat))), flat.numel()


def flat_float(t: Tensor) -> Tensor:
    """``t`` as a flat float32/float64 tensor (a view where possible)."""
    if t.dtype in _LOW_PRECISION or not t.is_floating_point():
        t = t.float()
    return t.reshape(-1)


class CallPlan:
    """What a call of a given output shape and dtype reads, worked out once per shape.

    Every measured call would otherwise repeat the same shape arithmetic (leading rows, unit
    dimension, element counts, casts) in Python; inside a training step those few microseconds per
    call are a visible part of the monitor's cost.
    """

    __slots__ = ("count_dtype", "low_precision", "match", "n", "one_unit", "rows", "sum_rows", "to_float", "unit_dim")

    def __init__(self, shape: torch.Size, dtype: torch.dtype, state: SiteState) -> None:
        dims = len(shape)
        numel = shape.numel()
        self.unit_dim = state.unit_dim % dims if dims else 0
        # The leading rows of dim 0 holding at most sample_elements (at least one row); all of
        # them when dim 0 holds the units. None: the whole output.
        rows = None
        limit = state.sample_elements
        if dims >= 2 and self.unit_dim != 0 and limit is not None and numel > limit:
            per_row = max(1, numel // max(1, shape[0]))
            rows = max(1, limit // per_row)
            if rows >= shape[0]:
                rows = None
        sample_shape = shape if rows is None else torch.Size((rows, *shape[1:]))
        self.rows = rows
        self.n = sample_shape.numel()
        # The whole output is one unit (e.g. a (batch,) probability).
        self.one_unit = one_unit = state.n_units == 1
        self.match = one_unit or (dims > 0 and sample_shape[self.unit_dim] == state.n_units)
        self.low_precision = dtype in _LOW_PRECISION
        self.to_float = self.low_precision or not dtype.is_floating_point
        # A 2-D sample with the units last is counted by one column sum (the common Linear case).
        self.sum_rows = not one_unit and dims == 2 and self.unit_dim == 1
        self.count_dtype = torch.float32 if self.n < _EXACT_FLOAT_COUNT else torch.float64


# Plans kept per site before the cache starts over (outputs whose shape changes every call, e.g.
# variable sequence lengths, would otherwise grow it without bound).
MAX_PLANS = 64


@dataclass
class SiteState:
    """Running totals of one site over the current window (reset after every snapshot)."""

    kind: ActivationKind
    params: dict[str, Any]
    unit_dim: int
    n_units: int
    device: torch.device
    sample_elements: int | None
    eps: float
    histogram_samples: int = 0
    counters: list[int] = field(init=False)
    totals: Tensor = field(init=False)  # the flat device vector; the fields below are views of it
    sums: Tensor = field(init=False)
    max_abs: Tensor = field(init=False)
    unit_active: Tensor = field(init=False)
    unit_saturated: Tensor | None = field(init=False)
    out_sample: Tensor | None = field(init=False, default=None)
    grad_sample: Tensor | None = field(init=False, default=None)
    unit_mismatch: int = field(init=False, default=0)
    # Keep each call's results until fold() instead of adding them (see the module docstring).
    deferred: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        kind = self.kind
        self.elementwise_saturation = kind.unit_saturation
        # Fixed per kind; looked up once, as every measured call would otherwise.
        self._reads_input = kind.saturation_reads == "input"
        self._saturation = kind.has_saturation
        # The smooth family's flat negative tail (GELU, SiLU, ...) costs a second mask over the
        # input: it is read on detail steps only (the near-dead-units rule pools windows).
        self._tail_only = kind.family == "smooth" and self._reads_input
        # Deferred per-call results: sums, sums of squares, max |value|, per-unit firing and
        # saturation counts; gradient sums of squares.
        self._sums: list[Tensor] = []
        self._squares: list[Tensor] = []
        self._peaks: list[Tensor] = []
        self._lows: list[Tensor] = []  # minima, for kinds whose output can be negative
        self._active: list[Tensor] = []
        self._saturated: list[Tensor] = []
        self._grad_squares: list[Tensor] = []
        self._deferred_lists = (self._sums, self._squares, self._peaks, self._lows, self._active, self._saturated, self._grad_squares)
        self._deferred_units = 0
        self._plans: dict[tuple[torch.Size, torch.dtype], CallPlan] = {}
        self._allocate(self.device)

    # -- allocation -------------------------------------------------------------------------
    @property
    def totals_size(self) -> int:
        return totals_size(self.n_units, self.elementwise_saturation)

    def _allocate(self, device: torch.device) -> None:
        self.counters = [0] * len(COUNTERS)
        self.out_sample = None
        self.grad_sample = None
        # Totals must be normal tensors even when the first call runs under inference_mode
        # (inference tensors cannot be updated inplace outside it).
        with torch.inference_mode(False):
            self.bind(torch.zeros(self.totals_size, dtype=accumulator_dtype(device), device=device))

    def bind(self, totals: Tensor) -> None:
        """Keep the device totals in ``totals`` (a 1-D tensor, often a view of a shared buffer)."""
        if totals.shape != (self.totals_size,):
            raise ValueError(f"totals must have shape ({self.totals_size},), got {tuple(totals.shape)}")
        self.totals = totals
        self.device = totals.device
        # Views kept once so a hook adds into them without an indexing op per call.
        self.sums = totals[:N_SUMS]
        self._moments = totals[SUM : SUMSQ + 1]
        self._grad = totals[GRAD_SUMSQ]
        self.max_abs = totals[MAX_ABS]
        # Per-unit counts in the accumulator dtype: exact integers below 2**53 (2**24 on MPS),
        # and a float32 per-call count adds without a cast op.
        units = MAX_ABS + 1
        self.unit_active = totals[units : units + self.n_units]
        self.unit_saturated = (
            totals[units + self.n_units : units + 2 * self.n_units] if self.elementwise_saturation else None
        )

    def fold(self) -> None:
        """Add the deferred per-call results to the totals: a few ops, however many calls."""
        dtype = self.totals.dtype
        for deferred, total in ((self._active, self.unit_active), (self._saturated, self.unit_saturated)):
            if deferred and total is not None:
                total.add_(torch.stack(deferred).sum(0, dtype=dtype))  # exact: integer counts in float64
        if self._sums:
            k = len(self._sums)
            self._moments.add_(torch.stack(self._sums + self._squares).view(2, k).sum(1, dtype=dtype))
            peak = torch.stack(self._peaks).amax()
            if self._lows:
                peak = torch.maximum(peak, torch.stack(self._lows).amin().neg_())
            torch.maximum(self.max_abs, peak.to(dtype), out=self.max_abs)
        if self._grad_squares:
            self._grad.add_(torch.stack(self._grad_squares).sum(dtype=dtype))
        self._discard_deferred()

    def _discard_deferred(self) -> None:
        for deferred in self._deferred_lists:
            deferred.clear()
        self._deferred_units = 0

    @property
    def folded(self) -> bool:
        """Nothing waits to be added to the totals."""
        return not any(self._deferred_lists)

    def reset(self, totals: bool = True) -> None:
        """Start a new window (called after each snapshot). ``totals=False`` leaves the device
        totals to the caller, which zeroes a shared buffer for every site in one op."""
        self._discard_deferred()  # empty after a snapshot, which folds first; else the old window's
        self.counters = [0] * len(COUNTERS)
        if totals:
            self.totals.zero_()  # max |value| restarts at 0: |y| >= 0, and NaN still propagates
        self.out_sample = None
        self.grad_sample = None

    def to(self, device: torch.device) -> None:
        """Follow the model to another device, keeping the window's totals (in a buffer of its own;
        the monitor shares one again at the next snapshot)."""
        if device == self.device:
            return
        with torch.inference_mode(False):
            self.fold()
            self.bind(self.totals.to(device, accumulator_dtype(device)))

    # -- per call ---------------------------------------------------------------------------
    def _plan(self, t: Tensor) -> CallPlan:
        key = (t.shape, t.dtype)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            plan = self._plans[key] = CallPlan(t.shape, t.dtype, self)
        return plan

    def observe(self, x: Tensor | None, y: Tensor, detail: bool) -> None:
        """Add one forward call's output ``y`` (and its input ``x``, when intact) to the window."""
        c = self.counters
        c[CALLS] += 1
        plan = self._plan(y)
        if plan.n == 0:  # empty batch: counted as a call, nothing to measure
            return
        if y.device != self.device:
            self.to(y.device)
        # An inplace activation returns its input: then the pre-activation is gone. Only the kinds
        # whose saturation reads the pre-activation use it.
        x = None if x is None or x is y or not self._reads_input else x.detach()
        # Detached aliases rather than a no_grad block: no autograd records, and inside a training
        # step entering and leaving the grad mode costs as much as a small op.
        y = y.detach()
        rows = plan.rows
        sample = y if rows is None else y[:rows]
        x_sample = x if x is None or rows is None else x[:rows]
        flat = sample.reshape(-1)
        if plan.to_float:
            flat = flat.float()
            if plan.low_precision:  # the float32 copy made for the moments serves the indicators
                sample = flat.view(sample.shape)
        c[ELEMENTS] += plan.n
        total, squares = flat.sum(), torch.dot(flat, flat)
        kind, params = self.kind, self.params
        deferred = self.deferred
        if kind.sign_firing:  # output >= 0 (or NaN): its maximum is its largest |value|
            peak, low = flat.max(), None
        else:
            low, peak = torch.aminmax(flat)
        if deferred:
            self._sums.append(total)
            self._squares.append(squares)
            self._peaks.append(peak)
            if low is not None:
                self._lows.append(low)  # max |value| = max(max, -min), taken at the fold
        else:
            self._moments.add_(torch.stack((total, squares)))
            if low is not None:
                peak = torch.maximum(peak, low.neg_())
            torch.maximum(self.max_abs, peak, out=self.max_abs)

        if plan.match:
            # Float 0/1 indicators where the kind has one: several times cheaper on the CPU than
            # building and counting a bool mask. A NaN output makes its unit's count NaN: that
            # window is reported non-finite anyway.
            self._count_units(kind.active_indicator(sample, params), self._active, self.unit_active, plan)
            c[SAMPLED] += plan.n
        else:
            self.unit_mismatch += 1
        # Saturation per row (softmax rows, GLU's gate half) does not depend on the unit count:
        # attention over sequences of another length is still judged.
        if self._saturation and (detail or not self._tail_only) and (plan.match or not self.elementwise_saturation):
            saturated = kind.saturated_indicator(x_sample, sample, params, self.eps)
            if saturated is not None:
                if self.unit_saturated is not None and saturated.shape == sample.shape:
                    self._count_units(saturated, self._saturated, self.unit_saturated, plan)
                    c[SAT_TOTAL] += plan.n
                else:  # softmax rows, or GLU's gate half
                    self.sums[SAT_ROWS].add_(saturated.sum())
                    c[SAT_TOTAL] += saturated.numel()
        if deferred and (len(self._sums) >= FOLD_CALLS or self._deferred_units >= FOLD_UNIT_COUNTS):
            self.fold()

        if detail:
            # The whole output, on detail steps. x - x is NaN exactly where x is NaN/Inf; float
            # ops are ~6x cheaper on the CPU than a bool mask.
            flat = flat_float(y)
            self.sums[NONFINITE].add_(torch.nan_to_num(flat - flat, nan=1.0).sum())
            c[DETAIL_ELEMENTS] += flat.numel()
            if self.histogram_samples:
                self.out_sample = _strided_sample(flat, self.histogram_samples)

    def _count_units(self, indicator: Tensor, deferred: list[Tensor], total: Tensor, plan: CallPlan) -> None:
        """Count one call's set entries per unit into ``total``, or keep them in ``deferred``."""
        if plan.one_unit:
            counts = indicator.sum().reshape(1)
        elif plan.sum_rows and indicator.is_floating_point():  # as unit_counts, without its checks
            counts = indicator.sum(0, dtype=plan.count_dtype)
        else:
            counts = unit_counts(indicator, plan.unit_dim)
        if self.deferred and self.n_units <= FOLD_UNIT_COUNTS // 4:  # wider: a fold per call or two
            deferred.append(counts)
            self._deferred_units += counts.numel()
        else:
            total.add_(counts)

    def observe_input_totals(self, moments: Tensor, n: int) -> None:
        """Pre-activation sum and sum of squares of one call (detail steps only), measured before
        the call so an inplace activation cannot hide them; used by the signal-propagation check."""
        if moments.device != self.device:
            self.to(moments.device)
        self.sums[IN_SUM : IN_SUMSQ + 1].add_(moments)
        self.counters[IN_ELEMENTS] += n

    def observe_grad(self, g: Tensor, detail: bool, scale: Tensor | float | None = None) -> None:
        """Add the gradient with respect to this site's output (called from a tensor hook); it reads
        the same leading rows as the output's statistics. ``scale``: the loss scale of float16
        AMP (a device tensor or a float), divided out of the sample only, never the whole gradient."""
        plan = self._plan(g)
        if plan.n == 0:
            return
        if g.device != self.device:
            self.to(g.device)
        if g.requires_grad:  # under create_graph
            g = g.detach()
        flat = (g if plan.rows is None else g[: plan.rows]).reshape(-1)
        if plan.to_float:
            flat = flat.float()
        if scale is not None:
            flat = flat / (scale.to(flat.dtype) if isinstance(scale, Tensor) else scale)
        squares = torch.dot(flat, flat)
        if scale is not None:
            # float16 AMP: the GradScaler skips a step whose scaled gradients overflow (its normal
            # back-off while it calibrates): that gradient trains nothing and is left out, counted
            # on the device so the window's RMS divides by the elements kept.
            finite = squares.isfinite()
            self.sums[GRAD_SKIPPED].add_(finite.logical_not(), alpha=plan.n)
            squares = squares.where(finite, 0.0)
        if self.deferred:
            self._grad_squares.append(squares)
            if len(self._grad_squares) >= FOLD_CALLS:
                self.fold()
        else:
            self._grad.add_(squares)
        self.counters[GRAD_CALLS] += 1
        self.counters[GRAD_ELEMENTS] += plan.n
        if detail and self.histogram_samples:
            self.grad_sample = _strided_sample(flat, self.histogram_samples)

    def observe_param_grad_sq(self, sq: Tensor, skip_nonfinite: bool = False) -> None:
        """Squared gradient norm of the parameters of the layer feeding this site (log steps).
        ``skip_nonfinite``: under a float16 GradScaler, a step it skips for overflow is left out."""
        sq = sq.to(self.sums.device, self.sums.dtype)
        if skip_nonfinite:
            finite = sq.isfinite()
            self.sums[PARAM_GRAD_SKIPPED].add_(finite.logical_not())
            sq = sq.where(finite, 0.0)
        self.sums[PARAM_GRAD_SQ].add_(sq)
        self.counters[PARAM_GRAD_STEPS] += 1

    def observe_targets(self, target: Tensor, low: float, high: float) -> None:
        """Count the regression targets that this site's output (a model output fed to the loss)
        can never reach: below ``low`` or above ``high``. On the device, no sync."""
        t = target.detach()
        if t.device != self.device:
            self.to(t.device)
        self.sums[TARGET_OUTSIDE].add_((t < low).sum() + (t > high).sum())
        self.counters[TARGETS] += t.numel()

    def observe_target_rows(self, target: Tensor, class_dim: int, tolerance: float) -> None:
        """Count the rows of dense ``target`` (over ``class_dim``, the site's classes) whose sum
        differs from 1 by more than ``tolerance``: multi-label rows, which no softmax can output.
        On the device, no sync."""
        t = target.detach()
        if t.device != self.device:
            self.to(t.device)
        rows = t.sum(class_dim, dtype=torch.float32 if t.dtype in _LOW_PRECISION else t.dtype)
        self.sums[TARGET_ROWS_OFF].add_(((rows - 1).abs() > tolerance).sum())
        self.counters[TARGET_ROWS] += rows.numel()


def _strided_sample(flat: Tensor, n: int) -> Tensor:
    """About ``n`` evenly spaced elements, copied (the output itself may be freed or modified)."""
    stride = max(1, flat.numel() // n)
    return flat[::stride][:n].detach().to(torch.float32, copy=True)
