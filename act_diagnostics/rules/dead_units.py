"""dead-units: ReLU-family units that (almost) never fire, decided on the evidence collected.

A unit that fires with probability p shows at most c firings in n samples with probability
P(Binomial(n, p) <= c) (for c = 0, (1 - p)^n). A unit is called dead at the first log step at which
its firings since it last looked alive are improbable (below ``evidence``) for any rate worth calling
alive (``unit_rate``, the core's DEAD_UNIT_RATE: 1%): no fixed sample count, no waiting for a second
window. At 1% and 5%, 299 silent samples decide; a unit firing on 2% of its inputs shows that
silence with a chance of 0.2%. The pre-flight check has one batch and judges against a rate
worth calling alive at initialisation (``preflight_unit_rate``, 20%: a Kaiming-initialised unit
fires on about half its inputs).

With tiny batches and short runs no single unit collects those ~300 samples, so the layer is also
judged jointly: each quiet unit's tail bound t_i is a p-value (P(t_i <= t) <= t for a unit alive at
``unit_rate``). If k of a layer's N units show a bound t or less, and k reaches ``warn_fraction`` of
N, the chance that k or more live units would look that silent is P(Binomial(N, t) >= k) (again a
Chernoff bound, exact for k = N); below ``evidence`` over the number of distinct levels t scanned
(Bonferroni), those k units are dead. 16 units all silent on 40 samples each: 0.99^40 = 0.669 and
0.669^16 = 0.0016. This assumes units fire independently given the rate; units of one layer share
inputs, so their silences are correlated (a batch of near-zero rows silences many at once), which is
why the joint test needs a quarter of the layer and only counts samples from windows where the unit
already fell below ``unit_rate``.

A layer is reported when the share of its units shown dead reaches ``warn_fraction``; while units
not yet decided could still take it there, the layer is held (neither reported nor cleared), and
the rule asks for the next window to be measured on every step (the automatic schedule otherwise
measures about one step in ten after the first window): with small batches the verdict then comes
as soon as the data allow. These dense windows are budgeted: ``dense_windows`` at first, then one
in every ``dense_every`` windows judged, so layers whose units keep flickering between windows
cannot keep every step measured.

Units born dead (dead since the first window seen, the pre-flight one if any) point at the
initialisation, the bias or the depth; units that fired at first and stopped later point at the
learning rate (rules.md, "dead units"; Lu et al. 2020 for born-dead ReLU networks).

Impact: dead units in a gate bottleneck (the ReLU inside squeeze-excitation, which only modulates the
main path through a gate) cost little: an info note, a warning only when every unit is dead (the
gate is then a constant scale). Only a couple of dead units (a narrow layer) lower the severity one
step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from act_diagnostics.core.snapshot import DEAD_UNIT_RATE
from act_diagnostics.rules.base import (
    COUNT,
    FRACTION,
    PROBABILITY,
    Range,
    Rule,
    RuleContext,
    count,
    pct,
    samples_per_unit,
    was_were,
)
from act_diagnostics.rules.finding import SEVERITIES, Finding, Severity
from act_diagnostics.rules.silence import layer_dead, log_silence_finite, log_tail

# Kinds whose output and gradient are exactly zero below the threshold: a unit that never fires
# learns nothing. Leaky variants (leaky_relu, prelu, rrelu) keep a gradient and are left out.
DEAD_KINDS = ("relu", "relu6", "threshold")

# Chance, for a unit firing at ``unit_rate``, of showing as few firings as a unit called dead did
# (proposal: 5%, the usual significance level. A layer is reported only when a quarter of its units
# pass the test, so even a layer of units all firing at exactly 1% expects 5% of them flagged, far
# from 25%: a false layer-level report needs many unlikely units at once; healthy units fire far
# more often and are flagged with a vanishing chance).
EVIDENCE = 0.05
# Rate worth calling alive at initialisation, for the pre-flight check's one batch (proposal: a
# Kaiming-initialised unit fires on ~50% of its inputs; 14 silent samples reject 20% at 5%).
PREFLIGHT_UNIT_RATE = 0.2
# Share of a layer's units dead before warning: proposal within rules.md's 0.10-0.25 range, set at
# the top so small healthy layers (a few percent of units idle on synthetic data) stay quiet.
WARN_FRACTION = 0.25
# Share of dead units that is an error: SageMaker DeadRelu threshold_layer = 50%.
ERROR_FRACTION = 0.5
# Dense windows (every step measured) the rule may ask for at first, and afterwards one per this
# many windows judged (proposal: four windows of 10-50 steps at batch 5 give a unit 200-1000 more
# samples, enough for the joint test; a quarter of the windows bounds the extra cost in the steady
# state of a run where undecided units keep coming back).
DENSE_WINDOWS = 4
DENSE_EVERY = 4
# Fewer dead units than this cost a layer little (one unit of a 4-unit layer is 25% of it, yet the
# layer still computes with three): one step lower severity (proposal).
MIN_DEAD_UNITS = 2

BORN_DEAD_FIX = (
    "Units are dead from initialisation: use Kaiming (He) init matched to ReLU "
    "(nn.init.kaiming_normal_(w, nonlinearity='relu')), a zero or small positive bias, BatchNorm "
    "before the activation or fewer layers; LeakyReLU(0.01) or GELU keep a gradient for negative inputs."
)
DIED_LATER_FIX = (
    "Units fired at first and died during training: lower the learning rate (or add warm-up and "
    "gradient clipping); LeakyReLU(0.01), GELU or ELU never have a zero gradient; BatchNorm keeps "
    "pre-activations centred."
)
LOW_IMPACT_NOTE = " They cost little here ({why}); act if the model does not learn."


def one_sample_per_row(site: Any, stats: Any, measured_steps: int) -> bool:
    """Each of the window's samples of a unit is a different row of the data: a (rows, units)
    output, called once per measured step (a site called twice a step sees its rows twice)."""
    return len(site.shape) == 2 and site.unit_dim in (1, -1) and stats.calls == measured_steps > 0


@dataclass
class _Evidence:
    """One site's per-unit evidence: firings and samples since each unit last looked alive."""

    first_step: int
    first_preflight: bool
    firings: np.ndarray
    samples: np.ndarray
    silent_since: np.ndarray  # step of the first window of the current silent run (-1: none)
    alive_at: np.ndarray  # step of the last window the unit looked alive in (-1: never)
    # The current run's samples are all data rows (one per row, a finite training set): the run
    # may use the finite-population bound; and the epoch it may have started in.
    rows_only: np.ndarray
    run_epoch: np.ndarray

    @classmethod
    def new(cls, units: int, step: int, preflight: bool) -> _Evidence:
        z = np.zeros(units)
        return cls(step, preflight, z, z.copy(), np.full(units, -1), np.full(units, -1), np.zeros(units, bool), np.zeros(units, np.int64))


class DeadUnits(Rule):
    id = "dead-units"
    resolvable = True
    reads_rows = True
    defaults = {
        "unit_rate": DEAD_UNIT_RATE,
        "evidence": EVIDENCE,
        "preflight_unit_rate": PREFLIGHT_UNIT_RATE,
        "warn_fraction": WARN_FRACTION,
        "error_fraction": ERROR_FRACTION,
        "min_dead_units": MIN_DEAD_UNITS,
        "dense_windows": DENSE_WINDOWS,
        "dense_every": DENSE_EVERY,
    }
    ranges = {
        "unit_rate": PROBABILITY, "evidence": PROBABILITY, "preflight_unit_rate": PROBABILITY,
        "warn_fraction": FRACTION, "error_fraction": FRACTION, "min_dead_units": COUNT,
        "dense_windows": Range(0.0, integer=True), "dense_every": COUNT,
    }
    windows = 1  # the evidence test is the debounce: a window decides once its statistics do
    primary = "dead_fraction"

    def __init__(self, thresholds: Mapping[str, float] | None = None) -> None:
        super().__init__(thresholds)
        self._evidence: dict[str, _Evidence] = {}
        self._windows_judged = 0
        self._dense_asked = 0
        self._window_epoch: int | None = None  # the epoch the current window started in (None: unknown)

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        out: list[Finding] = []
        held: list[str] = []
        if not ctx.preflight:
            self._windows_judged += 1
        elif self._window_epoch is None:  # the pre-flight window is the fit's first step
            self._window_epoch = ctx.snapshot.epoch
        for site, stats in ctx.snapshot.ordered():
            if site.kind not in DEAD_KINDS or not stats.unit_firing or stats.nonfinite:  # NaN never fires
                continue
            rows = one_sample_per_row(site, stats, ctx.snapshot.window_steps)
            verdict = self._judge(ctx, site.name, np.asarray(stats.unit_firing, dtype=np.float64), samples_per_unit(stats), rows)
            if verdict is None:
                ctx.hold(site.name)
                held.append(site.name)
            elif isinstance(verdict, tuple):  # else False: the layer is clear
                out.append(self._finding(ctx, site, *verdict))
        self._ask_for_samples(ctx, held)
        self._window_epoch = ctx.snapshot.epoch  # the next window starts in this epoch or later
        return out

    def _ask_for_samples(self, ctx: RuleContext, held: list[str]) -> None:
        """Ask for the next window to be measured on every step for the held sites (one dense
        window serves them all), within the budget; not after the pre-flight check: the first
        window is measured on every step anyway."""
        if not held or ctx.preflight:
            return
        if self._dense_asked < self.t["dense_windows"] + self._windows_judged // self.t["dense_every"]:
            self._dense_asked += 1
            for site in held:
                ctx.request_dense(site)

    def _judge(
        self, ctx: RuleContext, name: str, rates: np.ndarray, n: float, rows_are_samples: bool
    ) -> tuple[_Evidence, np.ndarray, int] | bool | None:
        """Add one window's evidence; the dead units' verdict, False when the layer is clear, None
        while undecided units could still reach the warning fraction."""
        ev = self._evidence.get(name)
        if ev is None or ev.firings.shape != rates.shape:  # new site, or it changed width
            ev = self._evidence[name] = _Evidence.new(rates.size, ctx.step, ctx.preflight)
        if n <= 0:
            return None
        alive_rate = self.t["preflight_unit_rate"] if ctx.preflight else self.t["unit_rate"]
        alive = rates >= self.t["unit_rate"]
        ev.alive_at[alive] = ctx.step
        ev.firings[alive], ev.samples[alive], ev.silent_since[alive] = 0.0, 0.0, -1
        quiet = ~alive
        starts = quiet & (ev.silent_since < 0)
        ev.silent_since[starts] = ctx.step
        ev.rows_only[starts] = True
        ev.run_epoch[starts] = self._window_epoch if self._window_epoch is not None else -1
        ev.rows_only &= rows_are_samples
        ev.firings[quiet] += np.round(rates[quiet] * n)
        ev.samples[quiet] += n
        tails = np.where(quiet, log_tail(ev.firings, ev.samples, alive_rate), 0.0)
        population, epoch = ctx.snapshot.dataset_rows, ctx.snapshot.epoch
        finite = quiet & ev.rows_only & (ev.firings == 0) & (ev.run_epoch >= 0)
        if population and epoch is not None and finite.any():
            segments = epoch - ev.run_epoch + 1  # epochs the run may span
            bound = log_silence_finite(ev.samples, segments, population, alive_rate)
            tails = np.where(finite, np.minimum(tails, bound), tails)
        dead = tails < math.log(self.t["evidence"])
        dead |= layer_dead(tails, self.t["warn_fraction"], self.t["evidence"])
        dead &= quiet
        undecided = quiet & ~dead
        units = rates.size
        if np.count_nonzero(dead) >= self.t["warn_fraction"] * units and np.count_nonzero(dead):
            return (ev, np.flatnonzero(dead), units)
        if np.count_nonzero(dead | undecided) >= self.t["warn_fraction"] * units and np.count_nonzero(undecided):
            return None
        return False

    def _finding(self, ctx: RuleContext, site: Any, ev: _Evidence, dead: np.ndarray, units: int) -> Finding:
        fraction = dead.size / units
        born_mask = ev.silent_since[dead] == ev.first_step
        born, later = int(born_mask.sum()), int((~born_mask).sum())
        evidence_n = int(ev.samples[dead].min())
        if born >= later:
            if ev.first_preflight:
                when = f"{born} dead at initialisation: born dead"
            else:  # no pre-flight window: the first judged one is the earliest evidence
                when = f"{born} dead already in the first window, at step {ev.first_step}: likely born dead"
            if later:
                since = int(ev.alive_at[dead][~born_mask].min())
                when += f"; {later} more died after step {since}"
            msg = f"{pct(fraction)} of {units} units never fire ({when})"
            fix = BORN_DEAD_FIX
        else:
            since = int(ev.alive_at[dead][~born_mask].min())
            also = f"; {was_were(born)} dead from the start" if born else ""
            msg = f"{pct(fraction)} of {units} units never fire ({later} died after step {since}{also})"
            fix = DIED_LATER_FIX
        if ev.firings[dead].max() == 0:
            msg += f"; each silent on at least its last {evidence_n} samples"
            population = ctx.snapshot.dataset_rows
            if population and ev.rows_only[dead].all():
                msg += f" (rows of a {population}-row training set)"
        else:
            msg += f"; each fired on under {pct(self.t['unit_rate'])} of at least its last {evidence_n} samples"
        severity: Severity = "error" if fraction >= self.t["error_fraction"] else "warning"
        why = []
        if site.name in ctx.notions.gate_bottlenecks:
            # The gate still modulates the main path with the units left; with none left it is a
            # constant scale: the block is wasted, the model still trains.
            why.append("a gate's bottleneck, a side path that only modulates the main signal")
            severity = "warning" if dead.size == units else "info"
        if dead.size < self.t["min_dead_units"]:
            why.append(f"only {count(int(dead.size), 'unit')}")
            severity = SEVERITIES[max(0, SEVERITIES.index(severity) - 1)]
        if why:
            fix += LOW_IMPACT_NOTE.format(why="; ".join(why))
        return self.finding(
            ctx, site.name, severity, msg, fix,
            dead_fraction=round(fraction, 4), dead_units=int(dead.size), units=units,
            born_dead=born, died_later=later, samples_per_unit=evidence_n,
        )

    def state_dict(self) -> dict[str, Any]:
        # The evidence of units in a silent run (sparse: only those units), so a resume keeps it.
        out = {}
        for name, ev in self._evidence.items():
            idx = np.flatnonzero(ev.samples > 0)
            out[name] = {
                "units": int(ev.samples.size), "first_step": ev.first_step, "first_preflight": ev.first_preflight,
                "index": idx.tolist(), "firings": ev.firings[idx].tolist(), "samples": ev.samples[idx].tolist(),
                "silent_since": ev.silent_since[idx].tolist(), "alive_at": ev.alive_at.tolist(),
                "rows_only": ev.rows_only[idx].tolist(), "run_epoch": ev.run_epoch[idx].tolist(),
            }
        return {
            "evidence": out, "window_epoch": self._window_epoch,
            "windows_judged": self._windows_judged, "dense_asked": self._dense_asked,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._evidence = {}
        self._windows_judged = int(state.get("windows_judged", 0))
        self._dense_asked = int(state.get("dense_asked", 0))
        epoch = state.get("window_epoch")
        self._window_epoch = int(epoch) if epoch is not None else None
        for name, d in (state.get("evidence", {}) or {}).items():
            ev = _Evidence.new(int(d["units"]), int(d["first_step"]), bool(d["first_preflight"]))
            idx = np.asarray(d["index"], dtype=np.int64)
            ev.firings[idx], ev.samples[idx] = d["firings"], d["samples"]
            ev.silent_since[idx] = d["silent_since"]
            ev.rows_only[idx] = d.get("rows_only", False)  # older checkpoints: independent draws only
            ev.run_epoch[idx] = d.get("run_epoch", -1)
            ev.alive_at[:] = d["alive_at"]
            self._evidence[name] = ev
