"""The finite-population bound (rules/silence.py): a unit's silence on distinct rows of a small
training set, checked against the hypergeometric computed by hand and by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from act_diagnostics.rules.silence import LOG_IMPOSSIBLE, layer_dead, log_silence_finite, log_tail


def _finite(rows: int, segments: int, population: int, rate: float = 0.01) -> float:
    return float(log_silence_finite(np.array([rows]), np.array([segments]), population, rate)[0])


def test_one_epoch_is_the_hypergeometric():
    # 1% of 120 rows is 2 rows (ceil 1.2); 60 distinct rows miss both with C(118, 60) / C(120, 60).
    exact = math.comb(118, 60) / math.comb(120, 60)
    assert math.isclose(exact, (60 * 59) / (120 * 119))
    assert math.isclose(_finite(60, 1, 120), math.log(exact), rel_tol=1e-9)


def test_a_run_over_two_epochs_takes_the_worst_split():
    # Two segments of 30 rows, each within an epoch: H(30)^2, larger (weaker) than H(60).
    h30 = (90 * 89) / (120 * 119)
    assert math.isclose(_finite(60, 2, 120), 2 * math.log(h30), rel_tol=1e-9)
    assert _finite(60, 2, 120) > _finite(60, 1, 120)


def test_the_bound_holds_against_simulated_epochs():
    # A unit firing on 2 of 120 rows, independently shuffled epochs, a 60-row run starting at
    # various points: the chance of seeing no firing is at most the bound for the epochs it spans.
    rng = np.random.default_rng(0)
    for start in (0, 40, 90, 119):
        misses = 0
        for _ in range(4000):
            rows = np.concatenate([rng.permutation(120) for _ in range(2)])[start : start + 60]
            misses += not np.isin(rows, (0, 1)).any()
        spans = 1 + (start + 59) // 120 - start // 120
        assert misses / 4000 <= math.exp(_finite(60, spans, 120)) + 0.02


def test_a_run_over_every_row_is_impossible_for_a_live_unit():
    assert _finite(120, 1, 120) == LOG_IMPOSSIBLE
    assert _finite(119, 1, 120) == LOG_IMPOSSIBLE  # 119 distinct rows cannot miss 2 firing rows


def test_never_weaker_than_needed_on_large_sets():
    # 60 of 1,000,000 rows: as good as independent draws (0.99^60), not stronger.
    assert math.isclose(_finite(60, 1, 1_000_000), 60 * math.log(0.99), rel_tol=1e-3)


@pytest.mark.parametrize("rows", [0, 1, 30])
def test_no_rows_no_evidence_beyond_the_rows(rows):
    value = _finite(rows, 1, 120)
    assert value <= 0 and (rows > 0 or value == 0)


def test_the_bag_of_words_layer_decides_with_it_and_not_without():
    # 30 of 48 units silent on 60 rows of a 120-row set, 6 on 40, 6 alive: the corpus program
    # sparse_bag_of_words_batch_two at its last log step.
    samples = np.array([60.0] * 30 + [40.0] * 6 + [0.0] * 12)
    firings = np.zeros(48)
    binomial = np.where(samples > 0, log_tail(firings, samples, 0.01), 0.0)
    assert not layer_dead(binomial, 0.25, 0.05).any()  # independent draws: 0.99^60 = 0.55, 26 expected
    finite = np.minimum(binomial, np.where(samples > 0, log_silence_finite(samples, np.ones(48, np.int64), 120, 0.01), 0.0))
    assert int(layer_dead(finite, 0.25, 0.05).sum()) >= 30
