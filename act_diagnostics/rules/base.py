"""The Rule base class and the small helpers every rule shares.

A rule reads one :class:`~act_diagnostics.core.Snapshot` (through a :class:`RuleContext`) and returns
candidate :class:`Finding` objects. It does not debounce or deduplicate: the
:class:`~act_diagnostics.rules.engine.RuleEngine` does that, using the class attributes below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeGuard

import numpy as np

from act_diagnostics.core.snapshot import SiteStats, Snapshot
from act_diagnostics.core.tracer import REGRESSION_LOSSES
from act_diagnostics.rules.finding import Finding, Severity
from act_diagnostics.rules.notions import SQUASHING_OUTPUT_FAMILIES, Notions, is_hidden  # noqa: F401 - re-exported


@dataclass
class MeasurementRequests:
    """What the rules ask of the measuring schedule for the next window, by site: a detail step
    (histograms, pre-activation moments) or every step measured (a verdict waits on samples)."""

    detail: list[str] = field(default_factory=list)
    dense: list[str] = field(default_factory=list)


@dataclass
class RuleContext:
    """What a rule sees: one window's snapshot, whether it is the pre-flight check, and the
    snapshot's notions (rules/notions.py: gates, heads, hidden stack, small-scale branches)."""

    snapshot: Snapshot
    preflight: bool = False
    # Sites a rule could not judge this window (too few samples): their debounce streak is kept,
    # and an open finding about them is not counted as resolved.
    held: set[str] = field(default_factory=set)
    # Shared by every rule of one evaluation; the engine hands them to the schedule.
    requests: MeasurementRequests = field(default_factory=MeasurementRequests)
    _notions: Notions | None = None

    @property
    def notions(self) -> Notions:
        """Computed once per snapshot (the engine shares them across its rules)."""
        if self._notions is None:
            self._notions = Notions.of(self.snapshot)
        return self._notions

    @property
    def step(self) -> int:
        return self.snapshot.step

    def hold(self, site: str) -> None:
        self.held.add(site)

    def request_detail(self, site: str) -> None:
        """Make the next log step a detail step, for ``site``'s sake."""
        if site not in self.requests.detail:
            self.requests.detail.append(site)

    def request_dense(self, site: str) -> None:
        """Measure every step of the next window, for ``site``'s sake (automatic schedule only)."""
        if site not in self.requests.dense:
            self.requests.dense.append(site)


@dataclass(frozen=True)
class Range:
    """The values a threshold may take: ``lo``..``hi``, each end open or closed; ``integer``: whole
    numbers only (counts)."""

    lo: float = 0.0
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def __contains__(self, value: float) -> bool:
        if self.integer and value != int(value):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def __str__(self) -> str:
        kind = "a whole number " if self.integer else ""
        if math.isinf(self.hi):
            return f"{kind}{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"{kind}in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


# The ranges most thresholds take.
FRACTION = Range(0.0, 1.0)  # a share of units, rows or outputs
PROBABILITY = Range(0.0, 1.0, lo_open=True, hi_open=True)  # a chance strictly between 0 and 1
COUNT = Range(1.0, integer=True)  # windows, sites, samples
POSITIVE = Range(0.0, lo_open=True)  # a ratio or a magnitude
FACTOR = Range(1.0, lo_open=True)  # a growth factor: more than 1x


class Rule:
    """One diagnostic. Subclasses set the class attributes and implement :meth:`evaluate`."""

    id: ClassVar[str] = ""
    # Default thresholds, overridable as ``{"<id>.<name>": value}`` (named constants in each module).
    defaults: ClassVar[dict[str, float]] = {}
    # The valid range of each threshold (checked by the engine); a threshold not listed takes any
    # finite number >= 0.
    ranges: ClassVar[dict[str, Range]] = {}
    # Consecutive evaluations a condition must hold before it is reported (1: at once).
    windows: ClassVar[int] = 1
    # Evidence key measuring how bad a finding is (higher is worse): a finding already reported
    # is reported again when this value doubles.
    primary: ClassVar[str | None] = None
    # Where the rule runs: the pre-flight snapshot (first step, at initialisation) and/or training.
    in_preflight: ClassVar[bool] = True
    in_training: ClassVar[bool] = True
    # Deduplicate per (rule, site), or once per model (whole-network conditions whose named site
    # may move from window to window: NaN spreading, first/last comparisons).
    per_site: ClassVar[bool] = True
    # Lifecycle: a rule that re-judges its condition every window (statistics) lets the engine mark
    # its finding resolved once the condition has not held for ``resolve_windows`` judged windows in
    # a row; a finding about the model's static structure cannot resolve.
    resolvable: ClassVar[bool] = False
    resolve_windows: ClassVar[int] = 2
    # Judges statistics across the rows of a batch: skipped in a pre-flight check whose batch is
    # degenerate (one row, or identical rows), where those statistics mean nothing.
    reads_rows: ClassVar[bool] = False

    def __init__(self, thresholds: Mapping[str, float] | None = None) -> None:
        self.t: dict[str, float] = {**self.defaults, **dict(thresholds or {})}

    def evaluate(self, ctx: RuleContext) -> list[Finding]:  # pragma: no cover - abstract
        raise NotImplementedError

    def topic(self, finding: Finding) -> str:
        """What ``finding`` is about, for debouncing and deduplication: its site, or ``"*"`` for a
        whole-model rule (``per_site = False``). A rule with several independent whole-model
        findings names each one."""
        return finding.site if self.per_site else "*"

    def finding(
        self, ctx: RuleContext, site: str, severity: Severity, message: str, recommendation: str, **evidence: Any
    ) -> Finding:
        return Finding(self.id, site, severity, message, recommendation, ctx.step, evidence)

    # Rules that remember something across windows override these (checkpoint resume).
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


def finite(value: float | None) -> TypeGuard[float]:
    """A number that is not NaN or infinite (and not None: a statistic this window did not measure)."""
    return value is not None and math.isfinite(value)


def samples_per_unit(stats: SiteStats) -> float:
    """Samples each unit was tested on in this window (the firing mask reads ``sampled`` elements)."""
    return stats.sampled / stats.units if stats.units else 0.0


# Appended to the growth rules' findings when the model regresses: large targets need large
# outputs, so growth across depth may be the targets' scale rather than a fault.
REGRESSION_SCALE_NOTE = (
    " If the regression targets are large (far from unit scale), standardise them (subtract the mean, "
    "divide by the std, and scale the predictions back) before changing the model."
)


def growth_fix(snapshot: Snapshot, fix: str) -> str:
    """A growth rule's ``fix``, plus the target-scale note when the model trains with a regression
    loss (mse, l1, smooth_l1, huber)."""
    return fix + REGRESSION_SCALE_NOTE if any(loss in REGRESSION_LOSSES for loss in snapshot.losses) else fix


def pct(value: float) -> str:
    return f"{100.0 * value:.0f}%"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 unit``, ``2 units``: a number with its noun agreeing."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


def was_were(n: int) -> str:
    """``1 was``, ``2 were``."""
    return f"{n} {'was' if n == 1 else 'were'}"


class SamplePool:
    """Sample-weighted means per site, pooled over windows until enough samples were seen.

    Statistical rules judge a site only over ``minimum`` samples per unit (rules.md: windows of
    >= 1k samples); a short window (logging every step, a small batch) is added to the next ones.
    Values are pooled as numpy arrays: a wide layer pooled at every log step costs one vector op.
    """

    def __init__(self) -> None:
        self._pools: dict[str, tuple[np.ndarray, float]] = {}

    def add(self, site: str, values: Sequence[float] | np.ndarray, weight: float, minimum: float) -> tuple[np.ndarray | None, float]:
        """Add one window's ``values`` seen over ``weight`` samples; the pooled means once
        ``minimum`` samples were seen (and start over), else None. Also returns the samples seen."""
        v = np.asarray(values, dtype=np.float64)
        sums, seen = self._pools.get(site, (np.zeros_like(v), 0.0))
        if sums.shape != v.shape:  # the site changed width: start over
            sums, seen = np.zeros_like(v), 0.0
        sums = sums + v * weight
        seen += weight
        if seen < minimum:
            self._pools[site] = (sums, seen)
            return None, seen
        self._pools.pop(site, None)
        return sums / seen, seen

    def judged(
        self, preflight: bool, site: str, values: Sequence[float] | np.ndarray, weight: float, t: Mapping[str, float]
    ) -> tuple[np.ndarray | None, float]:
        """What a statistical rule judges, and over how many samples per unit: in the pre-flight
        check this window's values, if it saw ``t["preflight_min_samples"]``; in training the
        values pooled until ``t["min_samples"]`` were seen. None while there are too few."""
        if preflight:
            ok = weight >= t["preflight_min_samples"]
            return (np.asarray(values, dtype=np.float64) if ok else None), weight
        return self.add(site, values, weight, t["min_samples"])
