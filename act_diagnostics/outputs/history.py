"""The run's history for the report: a bounded series of each site's statistics over log steps.

The report's charts (report.md, one PNG per finding) show the statistic behind a finding over the
whole run. The core keeps only the current window, so the outputs keep this record: one point per
published snapshot, at most ``max_points`` per series; when full, every other point is dropped
(the first and the newest are kept), so a long run keeps its whole time axis at a coarser
resolution and memory stays bounded.
"""

from __future__ import annotations

import math
from typing import Any

from act_diagnostics.outputs.applicability import applicable

# What the charts can show: the logged shares and scales, and the share of saturated units the
# saturation and near-dead-units rules judge.
HISTORY_STATS = ("firing_rate", "dead_fraction", "saturation", "saturated_units", "std", "max_abs", "grad_rms")
DEFAULT_MAX_POINTS = 256


class StatHistory:
    """``record(snapshot)`` at every published snapshot; ``series(site, stat)`` for a chart."""

    def __init__(self, stats: tuple[str, ...] = HISTORY_STATS, max_points: int = DEFAULT_MAX_POINTS) -> None:
        if not isinstance(max_points, int) or isinstance(max_points, bool) or max_points < 4:
            raise ValueError(f"`max_points` must be an int >= 4, got {max_points!r}")
        self.stats = tuple(stats)
        self.max_points = max_points
        self.steps: list[int] = []
        self.values: dict[str, dict[str, list[float | None]]] = {}  # site -> stat -> one value per step

    def record(self, snapshot: Any) -> None:
        """Append one snapshot. A step below the last one starts a new fit: the old record goes; the
        same step again (a window published twice) replaces its point."""
        step = int(snapshot.step)
        if self.steps and step < self.steps[-1]:
            self.steps, self.values = [], {}
        if self.steps and step == self.steps[-1]:
            self._drop_last()
        self.steps.append(step)
        n = len(self.steps)
        for site, stats in snapshot.ordered():
            per_stat = self.values.setdefault(site.name, {})
            for stat in self.stats:
                value = applicable(stat, site.family, getattr(stats, stat, None))
                series = per_stat.setdefault(stat, [])
                series.extend([None] * (n - 1 - len(series)))  # a site first seen late
                series.append(float(value) if value is not None and math.isfinite(float(value)) else None)
        for per_stat in self.values.values():  # a site missing from this snapshot
            for series in per_stat.values():
                series.extend([None] * (n - len(series)))
        if len(self.steps) > self.max_points:
            self._thin()

    def _drop_last(self) -> None:
        self.steps.pop()
        for per_stat in self.values.values():
            for series in per_stat.values():
                del series[len(self.steps) :]

    def _thin(self) -> None:
        keep = list(range(0, len(self.steps) - 1, 2)) + [len(self.steps) - 1]
        self.steps = [self.steps[i] for i in keep]
        for per_stat in self.values.values():
            for stat, series in per_stat.items():
                per_stat[stat] = [series[i] for i in keep]

    def series(self, site: str, stat: str) -> list[tuple[int, float]]:
        """(step, value) points of one site's statistic, where it was measured and applies."""
        values = self.values.get(site, {}).get(stat, [])
        return [(s, v) for s, v in zip(self.steps, values) if v is not None]


def record_history(history: StatHistory | None, snapshot: Any) -> StatHistory:
    """``history`` (a new one when None) with ``snapshot`` recorded: one call per published window."""
    history = history if history is not None else StatHistory()
    history.record(snapshot)
    return history
