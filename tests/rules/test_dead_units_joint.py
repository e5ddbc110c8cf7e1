"""dead-units' joint layer test (issue 20, class 5): with tiny batches no single unit collects the
~300 silent samples that reject a 1% firing rate, but many units of one layer all that silent are
improbable together. Table: per-unit firings and samples since each last looked alive in, the
number of units the joint test calls dead out (per-unit test left aside)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from act_diagnostics.rules.silence import layer_dead, log_tail, log_upper_tail


def _units(*groups: tuple[int, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(count, firings, samples) groups -> per-unit firings and samples."""
    firings = np.concatenate([np.full(c, f) for c, f, _ in groups])
    samples = np.concatenate([np.full(c, n) for c, _, n in groups])
    return firings, samples


CASES = [
    # name, groups (units, firings, samples), dead units expected
    ("16 of 16 silent on 27 samples: 0.99^27 = 0.762, 0.762^16 = 0.013", [(16, 0, 27)], 16),
    ("16 of 16 silent on 10 samples: 0.904^16 = 0.20", [(16, 0, 10)], 0),
    ("32 of 32 silent on 90 samples", [(32, 0, 90)], 32),
    ("13 of 32 silent on 90 (0.405 each): 13 expected of live units", [(13, 0, 90), (19, 0, 0)], 0),
    ("16 of 32 silent on 27: 24 expected of live units", [(16, 0, 27), (16, 0, 0)], 0),
    ("7 of 32 silent on 400: improbable, but under warn_fraction", [(7, 0, 400), (25, 0, 0)], 0),
    ("16 units firing at 2.5% of 40 samples: above the rate, alive", [(16, 1, 40)], 0),
    ("42 of 48 silent on 36: 0.696 each, P(>= 42 of 48) ~ 0.014", [(42, 0, 36), (6, 0, 0)], 42),
    ("two levels: 20 of 24 on 60 pass, the 4 on 12 join nothing", [(20, 0, 60), (4, 0, 12)], 20),
]


@pytest.mark.parametrize("groups,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_joint_verdict(groups, expected):
    firings, samples = _units(*groups)
    tails = log_tail(firings, samples, 0.01)
    assert int(layer_dead(tails, warn_fraction=0.25, evidence=0.05).sum()) == expected


def test_upper_tail_is_exact_when_all_units_are_silent():
    # P(Binomial(N, t) >= N) = t^N: the bound is exact at k = N.
    t = 0.99**27
    assert math.isclose(float(log_upper_tail(np.array([16.0]), 16, np.array([t]))[0]), 16 * math.log(t), rel_tol=1e-9)


def test_upper_tail_bounds_the_exact_binomial():
    # Chernoff never understates the tail: it errs on the side of alive.
    n, p = 48, 0.696
    for k in range(34, 49):
        exact = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
        assert float(log_upper_tail(np.array([float(k)]), n, np.array([p]))[0]) >= math.log(exact) - 1e-12
