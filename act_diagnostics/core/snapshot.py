"""Host-side statistics of one window: what a log step reports for every site.

:func:`window_stats` turns one site's reduced totals (plain Python numbers, already on the host)
into the statistics documented in docs/statistics.md. It is a pure function so tests can check it
against hand-computed values without any hooks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from act_diagnostics.core.network import NetworkFacts
from act_diagnostics.core.sites import Site

# A unit is dead over a window when it fired on fewer than 1% of the samples it saw
# (SageMaker Debugger DeadRelu, threshold_inactivity = 1%).
DEAD_UNIT_RATE = 0.01
# A unit is saturated over a window when it was saturated on more than 99% of its samples
# (rules.md, "unit saturated if f'(x) < 0.01 on > 99% of samples").
SATURATED_UNIT_RATE = 0.99


@dataclass
class SiteStats:
    """Statistics of one site over one window (None where nothing was measured)."""

    calls: int = 0
    elements: int = 0
    sampled: int = 0
    units: int = 0
    firing_rate: float | None = None
    dead_fraction: float | None = None
    saturation: float | None = None
    saturated_units: float | None = None
    # Elements the saturation test read (fewer than ``sampled`` where it runs on detail steps only).
    saturation_samples: int = 0
    mean: float | None = None
    std: float | None = None
    rms: float | None = None
    max_abs: float | None = None
    nonfinite: bool = False
    nonfinite_share: float | None = None
    input_std: float | None = None
    grad_rms: float | None = None
    grad_nonfinite: bool = False
    # Share of gradient elements left out because a float16 GradScaler skipped their step.
    grad_skipped_share: float | None = None
    param_grad_norm: float | None = None
    # Share of the regression targets this output can never reach (outside its activation's range).
    target_outside: float | None = None
    # Share of the dense targets' rows (over this output's classes) that do not sum to 1: multi-label.
    target_rows_off: float | None = None
    unit_firing: list[float] = field(default_factory=list, repr=False)
    # Attention sites (detail steps): largest pre-softmax logit q.k * scale, overall and per head.
    max_logit: float | None = None
    max_logit_heads: list[float] = field(default_factory=list, repr=False)

    def scalars(self) -> dict[str, float]:
        """The per-site values logged as ``act/<site>/<stat>`` (see LOGGED_STATS)."""
        out: dict[str, float] = {}
        for key in LOGGED_STATS:
            value = getattr(self, key)
            if value is None:
                continue
            out[key] = float(value)
        return out

    def to_dict(self, with_units: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_units:
            d.pop("unit_firing")
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


# Order of the per-site scalars in loggers; each is documented in docs/statistics.md.
LOGGED_STATS = (
    "firing_rate",
    "dead_fraction",
    "saturation",
    "mean",
    "std",
    "max_abs",
    "grad_rms",
    "param_grad_norm",
    "nonfinite",
    "max_logit",
)


@dataclass
class Snapshot:
    """Every site's statistics for one window, plus the sites' structure."""

    step: int
    window_steps: int
    stats: dict[str, SiteStats]
    sites: dict[str, Site]
    out_samples: dict[str, list[float]] = field(default_factory=dict, repr=False)
    grad_samples: dict[str, list[float]] = field(default_factory=dict, repr=False)
    # Loss functions the model's losses were computed with (seen while the monitor tracked structure).
    losses: tuple[str, ...] = ()
    # float16 AMP: the GradScaler's scale at the snapshot (None without one).
    grad_scale: float | None = None
    # Log Z of the logits reaching each classification loss call ("cross_entropy", "cross_entropy#1"),
    # and the token loads of each mixture-of-experts router ("<owner>:router"); core/logits.py,
    # core/routers.py. Filled on the steps the tracer runs.
    log_z: dict[str, Any] = field(default_factory=dict)
    routers: dict[str, Any] = field(default_factory=dict)
    # Structural facts (core/facts.py). Parametrised layers whose output is a model output or a loss
    # input (reached through views, copies, dropout).
    output_layers: tuple[str, ...] = ()
    # Largest |value| of each parameter that is not a bias, read once at attach.
    param_scales: dict[str, float] = field(default_factory=dict, repr=False)
    # The model's first tensor input on the window's latest detail step: its rows, and the largest
    # |row - first row| (0: every row the same). None where not recorded (keyword-only inputs).
    batch_rows: int | None = None
    batch_spread: float | None = None
    # Whole-model facts: layer links, the first layer's input, loss values (core/network.py).
    network: NetworkFacts = field(default_factory=NetworkFacts)
    # Rows of the training data set when each epoch draws every row once, and the epoch of the
    # snapshot (set by the training loop, the Lightning callback; None where unknown): within an
    # epoch the samples are then rows drawn without replacement from a finite set.
    dataset_rows: int | None = None
    epoch: int | None = None

    def ordered(self) -> list[tuple[Site, SiteStats]]:
        """(site, stats) pairs in forward order, input side first."""
        return [(self.sites[n], self.stats[n]) for n in sorted(self.stats, key=lambda n: self.sites[n].index)]


def window_stats(
    counters: dict[str, int],
    sums: dict[str, float],
    max_abs: float,
    unit_active: Sequence[float] | np.ndarray,
    unit_saturated: Sequence[float] | np.ndarray | None,
    dead_unit_rate: float = DEAD_UNIT_RATE,
    saturated_unit_rate: float = SATURATED_UNIT_RATE,
) -> SiteStats:
    """Derive one site's window statistics from its reduced totals (per-unit counts as a list or
    a numpy array: the per-unit arithmetic is vectorised)."""
    n = counters["elements"]
    sampled = counters["sampled"]
    active = np.asarray(unit_active, dtype=np.float64)
    units = int(active.size)
    s = SiteStats(calls=counters["calls"], elements=n, sampled=sampled, units=units)
    if n > 0:
        mean = sums["sum"] / n
        mean_sq = sums["sumsq"] / n
        s.mean = mean
        s.rms = math.sqrt(mean_sq) if mean_sq >= 0 else float("nan")
        var = mean_sq - mean * mean
        # Cancellation can leave a tiny negative variance for near-constant outputs.
        s.std = math.sqrt(max(var, 0.0)) if math.isfinite(var) else float("nan")
        s.max_abs = max_abs
        s.nonfinite = not (math.isfinite(max_abs) and math.isfinite(sums["sum"]))
    if sampled > 0 and units > 0:
        rates = active * (units / sampled)
        s.firing_rate = float(active.sum()) / sampled
        s.unit_firing = rates.tolist()
        # NaN rates (a NaN output reached a count) compare False: not dead, as with plain floats.
        s.dead_fraction = int(np.count_nonzero(rates < dead_unit_rate)) / units
        if unit_saturated is not None and counters["sat_total"] > 0:
            # Saturation may have been read on fewer calls than firing (an inplace GELU/SiLU call
            # has no pre-activation left): per-unit saturation divides by its own sample count.
            sat = np.asarray(unit_saturated, dtype=np.float64)
            s.saturation = float(sat.sum()) / counters["sat_total"]
            s.saturated_units = int(np.count_nonzero(sat * (units / counters["sat_total"]) > saturated_unit_rate)) / units
    s.saturation_samples = counters["sat_total"]
    if unit_saturated is None and counters["sat_total"] > 0:
        s.saturation = sums["sat_rows"] / counters["sat_total"]
    if counters["detail_elements"] > 0:
        s.nonfinite_share = sums["nonfinite"] / counters["detail_elements"]
    if counters["in_elements"] > 0:
        m = sums["in_sum"] / counters["in_elements"]
        v = sums["in_sumsq"] / counters["in_elements"] - m * m
        s.input_std = math.sqrt(max(v, 0.0)) if math.isfinite(v) else float("nan")
    skipped = sums.get("grad_skipped", 0.0)
    if skipped > 0:
        s.grad_skipped_share = skipped / counters["grad_elements"]
    kept = counters["grad_elements"] - skipped  # float16 AMP: steps the scaler skipped
    if kept > 0:
        g = sums["grad_sumsq"] / kept
        s.grad_rms = math.sqrt(g) if math.isfinite(g) else float("nan")
        s.grad_nonfinite = not math.isfinite(g)
    if counters.get("targets", 0) > 0:
        s.target_outside = sums["target_outside"] / counters["targets"]
    if counters.get("target_rows", 0) > 0:
        s.target_rows_off = sums.get("target_rows_off", 0.0) / counters["target_rows"]
    param_steps = counters["param_grad_steps"] - sums.get("param_grad_skipped", 0.0)
    if param_steps > 0:
        p = sums["param_grad_sq"] / param_steps
        s.param_grad_norm = math.sqrt(p) if math.isfinite(p) else float("nan")
    return s
