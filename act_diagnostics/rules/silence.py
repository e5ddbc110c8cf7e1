"""How improbable a unit's silence is for a unit alive at a given firing rate: the tail bounds
the dead-units rule decides on (per unit, and jointly over a layer's units).

Samples as independent draws (the binomial, :func:`log_tail`), or, where the training data are a
finite set of rows each drawn once per epoch, as draws without replacement
(:func:`log_silence_finite`): a unit firing on 1% of 120 rows fires on 2 of them, and 60 distinct
rows miss both with a chance of 0.25, where 60 independent draws would with 0.55. Both bound the
same probability (draws without replacement miss less often than independent ones), so the
smaller bound holds too.
"""

from __future__ import annotations

import math

import numpy as np

# A log-probability standing for "impossible" (a run that covered every row): finite, so the
# joint test's arithmetic stays finite.
LOG_IMPOSSIBLE = -1e4


def log_tail(firings: np.ndarray, samples: np.ndarray, rate: float) -> np.ndarray:
    """Upper bound on log P(Binomial(samples, rate) <= firings), per unit (Chernoff:
    -n KL(c/n || rate); exact for c = 0). 0 where the observed rate is not below ``rate``."""
    n = np.maximum(samples, 1e-12)
    q = np.clip(firings / n, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(q > 0, q * np.log(q / rate), 0.0) + (1 - q) * np.log((1 - q) / (1 - rate))
    return np.where((q < rate) & (samples > 0), -samples * kl, 0.0)


def log_upper_tail(k: np.ndarray, trials: int, p: np.ndarray) -> np.ndarray:
    """Upper bound on log P(Binomial(trials, p) >= k) (Chernoff: -N KL(k/N || p); exact for k = N).
    0 where k/N is not above p."""
    q = np.clip(k / max(trials, 1), 0.0, 1.0)
    p = np.clip(p, 1e-300, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = q * np.log(q / p) + np.where(q < 1, (1 - q) * np.log((1 - q) / np.maximum(1 - p, 1e-300)), 0.0)
    return np.where(q > p, -trials * kl, 0.0)


def layer_dead(log_tails: np.ndarray, warn_fraction: float, evidence: float) -> np.ndarray:
    """Units shown dead jointly, a mask. For each distinct per-unit tail bound t among the quiet
    units, k(t) units show t or less; at least k(t) of N live units looking that silent has a chance
    of at most P(Binomial(N, t) >= k(t)). The largest k(t) >= ``warn_fraction`` of N whose chance
    is below ``evidence`` over the number of levels scanned (Bonferroni) names the dead units."""
    units = log_tails.size
    levels = np.unique(log_tails[log_tails < 0])
    out = np.zeros(units, dtype=bool)
    if levels.size == 0:
        return out
    k = np.searchsorted(np.sort(log_tails), levels, side="right").astype(np.float64)
    joint = log_upper_tail(k, units, np.exp(levels))
    passed = (joint < math.log(evidence / levels.size)) & (k >= warn_fraction * units)
    if passed.any():
        out[log_tails <= levels[passed][-1]] = True
    return out


def log_silence_finite(rows: np.ndarray, segments: np.ndarray, population: int, rate: float) -> np.ndarray:
    """Upper bound on log P(a unit firing on ``rate`` of ``population`` rows shows no firing on a
    run of ``rows`` rows), per unit, where the run lies within ``segments`` epochs and each epoch
    draws every row once (so rows are distinct within a segment; shuffles are independent).

    The unit fires on m = ceil(rate * population) rows. k distinct rows miss them all with the
    hypergeometric chance H(k) = C(P - m, k) / C(P, k). Where the run's epoch boundaries fall is
    unknown; log H is concave in k, so the product over segments is largest for an equal split:
    s * log H(floor(rows / s)) bounds every split.
    """
    p = int(population)
    m = max(1, math.ceil(rate * p))
    rows = np.asarray(rows, dtype=np.float64)
    segments = np.maximum(np.asarray(segments, dtype=np.int64), 1)
    out = np.zeros(rows.shape)
    per_segment = np.minimum(np.floor(rows / segments), p).astype(np.int64)
    for k, s in {(int(k), int(s)) for k, s in zip(per_segment.ravel(), segments.ravel(), strict=True)}:
        if k <= 0:
            continue
        if p - k < m:
            log_h = LOG_IMPOSSIBLE
        else:
            log_h = math.lgamma(p - k + 1) - math.lgamma(p - k - m + 1) - math.lgamma(p + 1) + math.lgamma(p - m + 1)
        out[(per_segment == k) & (segments == s)] = max(LOG_IMPOSSIBLE, s * log_h)
    return out
