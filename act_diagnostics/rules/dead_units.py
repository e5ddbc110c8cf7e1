"""dead-units: ReLU-family units that (almost) never fire, told apart by when they died.

Units born dead (already dead in the pre-flight snapshot or the first judged window) point at the
initialisation, the bias or the depth; units that fired at first and stopped later point at the
learning rate (rules.md, "dead units"; Lu et al. 2020 for born-dead ReLU networks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from act_diagnostics.rules.base import COUNT, FRACTION, PROBABILITY, Rule, RuleContext, SamplePool, pct, samples_per_unit, was_were
from act_diagnostics.rules.finding import Finding

# Kinds whose output and gradient are exactly zero below the threshold: a unit that never fires
# learns nothing. Leaky variants (leaky_relu, prelu, rrelu) keep a gradient and are left out.
DEAD_KINDS = ("relu", "relu6", "threshold")

# A unit is dead when it fired on fewer than 1% of its samples (SageMaker Debugger DeadRelu,
# threshold_inactivity = 1%).
UNIT_RATE = 0.01
# Share of a layer's units dead before warning: proposal within rules.md's 0.10-0.25 range, set at
# the top so small healthy layers (a few percent of units idle on synthetic data) stay quiet.
WARN_FRACTION = 0.25
# Share of dead units that is an error: SageMaker DeadRelu threshold_layer = 50%.
ERROR_FRACTION = 0.5
# Samples per unit a judged window needs (rules.md: "over a window of >= 1k samples"). Windows
# with fewer are pooled with the next ones until this many were seen.
MIN_SAMPLES = 1000
# Pre-flight looks at one batch: a unit that fires on a typical ~50% of inputs misses all 32
# samples with probability 2**-32, so 32 samples already separate born-dead units (proposal).
PREFLIGHT_MIN_SAMPLES = 32

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


class DeadUnits(Rule):
    id = "dead-units"
    resolvable = True
    reads_rows = True
    defaults = {
        "unit_rate": UNIT_RATE,
        "warn_fraction": WARN_FRACTION,
        "error_fraction": ERROR_FRACTION,
        "min_samples": MIN_SAMPLES,
        "preflight_min_samples": PREFLIGHT_MIN_SAMPLES,
    }
    ranges = {
        "unit_rate": PROBABILITY, "warn_fraction": FRACTION, "error_fraction": FRACTION,
        "min_samples": COUNT, "preflight_min_samples": COUNT,
    }  # fmt: skip
    windows = 2
    primary = "dead_fraction"

    def __init__(self, thresholds: Mapping[str, float] | None = None) -> None:
        super().__init__(thresholds)
        self._pool = SamplePool()  # site -> pooled per-unit firing rates
        # site -> (step, dead unit indices) of the first judged window: the born-dead reference
        self._early: dict[str, tuple[int, list[int]]] = {}

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        out: list[Finding] = []
        for site, stats in ctx.snapshot.ordered():
            if site.kind not in DEAD_KINDS or not stats.unit_firing or stats.nonfinite:  # NaN never fires
                continue
            rates, samples = self._pool.judged(ctx.preflight, site.name, stats.unit_firing, samples_per_unit(stats), self.t)
            if rates is None:
                ctx.hold(site.name)
                continue
            dead = np.flatnonzero(rates < self.t["unit_rate"]).tolist()
            early_step, early = self._early.setdefault(site.name, (ctx.step, dead))
            fraction = len(dead) / len(rates)
            if fraction < self.t["warn_fraction"]:
                continue
            early_set = set(early)
            born = sum(1 for j in dead if j in early_set)
            later = len(dead) - born
            severity = "error" if fraction >= self.t["error_fraction"] else "warning"
            if born >= later:
                if ctx.preflight or early_step == 0:
                    when = f"{born} dead at initialisation: born dead"
                else:  # no pre-flight window: the first judged one is the earliest evidence
                    when = f"{born} dead already in the first judged window, at step {early_step}: likely born dead"
                if later:
                    when += f"; {later} more died after step {early_step}"
                msg = f"{pct(fraction)} of {len(rates)} units never fire ({when})"
                fix = BORN_DEAD_FIX
            else:
                also = f"; {was_were(born)} dead from the start" if born else ""
                msg = f"{pct(fraction)} of {len(rates)} units never fire ({later} died after step {early_step}{also})"
                fix = DIED_LATER_FIX
            out.append(
                self.finding(
                    ctx, site.name, severity, msg, fix,
                    dead_fraction=round(fraction, 4), dead_units=len(dead), units=len(rates),
                    born_dead=born, died_later=later, samples_per_unit=int(samples),
                )
            )  # fmt: skip
        return out

    def state_dict(self) -> dict[str, Any]:
        # Pools are a partial window and are dropped; the born-dead reference must survive resume.
        return {"early": {k: [s, list(v)] for k, (s, v) in self._early.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        early = state.get("early", {}) or {}
        self._early = {k: (int(v[0]), [int(j) for j in v[1]]) for k, v in early.items()}
