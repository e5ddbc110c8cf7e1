"""Window statistics on the host: the pure function from reduced totals to SiteStats, and the
dead-unit rate it applies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from act_diagnostics.core.snapshot import window_stats
from act_diagnostics.core.state import COUNTERS


def test_window_stats_pure_function() -> None:
    counters = dict.fromkeys(COUNTERS, 0)
    counters.update(calls=2, elements=8, sampled=8, sat_total=8, grad_elements=4, detail_elements=8, in_elements=4)
    sums = {
        "sum": 4.0, "sumsq": 8.0, "grad_sumsq": 16.0, "sat_rows": 0.0, "nonfinite": 2.0,
        "in_sum": 0.0, "in_sumsq": 4.0, "param_grad_sq": 0.0,
    }
    s = window_stats(counters, sums, 3.0, [4, 0], [4, 1], dead_unit_rate=0.01, saturated_unit_rate=0.99)
    assert s.mean == 0.5 and s.rms == 1.0 and s.std == pytest.approx(math.sqrt(1 - 0.25))
    assert s.max_abs == 3.0
    assert s.unit_firing == [1.0, 0.0] and s.dead_fraction == 0.5 and s.firing_rate == 0.5
    assert s.saturation == pytest.approx(5 / 8) and s.saturated_units == 0.5
    assert s.grad_rms == 2.0 and s.nonfinite_share == 0.25 and s.input_std == 1.0
    # Tiny negative variance from cancellation is clamped to zero.
    s = window_stats(counters, {**sums, "sum": 8.0, "sumsq": 8.0 - 1e-12}, 1.0, [4, 4], None)
    assert s.std == 0.0
    assert window_stats(counters, sums, 3.0, [4, 0], None, dead_unit_rate=0.6).dead_fraction == 0.5
    # Per-unit counts as a numpy array (what the packed host copy holds) give the same result,
    # and a NaN count (a NaN output reached a sign count) is not counted as dead.
    assert window_stats(counters, sums, 3.0, np.array([4.0, 0.0]), np.array([4.0, 1.0]), dead_unit_rate=0.01, saturated_unit_rate=0.99) == window_stats(counters, sums, 3.0, [4, 0], [4, 1], dead_unit_rate=0.01, saturated_unit_rate=0.99)
    assert window_stats(counters, sums, 3.0, [float("nan"), 0.0], None).dead_fraction == 0.5
    assert window_stats(counters, {**sums, "sum": float("nan")}, 3.0, [4, 0], None).nonfinite
    assert window_stats(counters, sums, float("inf"), [4, 0], None).nonfinite
    assert s.scalars().keys() <= {"firing_rate", "dead_fraction", "saturation", "mean", "std", "max_abs", "grad_rms", "param_grad_norm", "nonfinite"}


def test_the_dead_unit_rate_is_defined_once() -> None:
    from act_diagnostics.core.config import MonitorConfig
    from act_diagnostics.core.snapshot import DEAD_UNIT_RATE

    assert MonitorConfig().dead_unit_rate == DEAD_UNIT_RATE == 0.01
    # a unit firing on 1 sample in 200 (0.5%) is dead at the default rate, alive at 0.004
    counters = dict.fromkeys(COUNTERS, 0) | {"calls": 1, "elements": 400, "sampled": 400}
    sums = dict.fromkeys(("sum", "sumsq", "grad_sumsq", "sat_rows", "nonfinite", "in_sum", "in_sumsq", "param_grad_sq", "target_outside"), 0.0)
    assert window_stats(counters, sums, 1.0, [1.0, 100.0], None).dead_fraction == 0.5
    assert window_stats(counters, sums, 1.0, [1.0, 100.0], None, dead_unit_rate=0.004).dead_fraction == 0.0
