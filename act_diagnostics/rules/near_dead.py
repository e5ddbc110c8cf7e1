"""near-dead-units: GELU / SiLU / ELU-family units stuck in their flat negative tail.

GELU, SiLU, Mish, ELU and softplus never output exactly 0, so "output > 0" is not their firing
test and the dead-units rule (ReLU family) cannot see them die (rules.md, "GELU/SiLU
near-dead"). The core counts, per unit, the samples whose input lies where the derivative is
below ``saturation_eps`` (0.01: x < -3.1 for GELU, x < -6.3 for SiLU and Mish, the ELU family's
alpha*exp(x) < 0.01; Hardswish's x <= -3 has no gradient at all). A unit in that tail on more than
99% of its samples passes almost no gradient: it is as good as dead
(``SiteStats.saturated_units``). For GELU, SiLU, Mish and Hardswish the tail is read on detail
steps only, so windows are pooled until ``min_samples`` tail tests per unit were seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from act_diagnostics.rules.base import COUNT, FRACTION, Rule, RuleContext, SamplePool, finite, is_hidden, pct
from act_diagnostics.rules.finding import Finding, Severity

FAMILIES = ("smooth",)
# Share of a layer's units in the flat tail (on >99% of their samples) before reporting: the
# dead-units rule's warning fraction (rules.md, dead units: "warn d > 0.10-0.25"). rules.md
# proposes this rule at info level: a smooth unit in its tail still passes a little gradient.
INFO_FRACTION = 0.25
# At or above this share the finding is a warning (proposal, as dead-units' error fraction 0.5:
# half the layer learns almost nothing).
WARN_FRACTION = 0.5
# Tail tests per unit needed to judge during training (rules.md: windows of >= 1k samples);
# smaller windows are pooled (sample-weighted) until this many were seen.
MIN_SAMPLES = 1000
# Pre-flight judges one batch (proposal, as for dead-units).
PREFLIGHT_MIN_SAMPLES = 32

FIX = (
    "These units almost only see inputs far below zero. Check the initialisation (Kaiming, "
    "nn.init.kaiming_normal_) and that the feeding layer's bias is not strongly negative; normalise "
    "the pre-activation (LayerNorm/BatchNorm); lower the learning rate if the units drifted there "
    "during training."
)


class NearDeadUnits(Rule):
    id = "near-dead-units"
    resolvable = True
    reads_rows = True
    defaults = {
        "info_fraction": INFO_FRACTION,
        "warn_fraction": WARN_FRACTION,
        "min_samples": MIN_SAMPLES,
        "preflight_min_samples": PREFLIGHT_MIN_SAMPLES,
    }
    ranges = {"info_fraction": FRACTION, "warn_fraction": FRACTION, "min_samples": COUNT, "preflight_min_samples": COUNT}
    windows = 2
    primary = "near_dead_fraction"

    def __init__(self, thresholds: Mapping[str, float] | None = None) -> None:
        super().__init__(thresholds)
        self._pool = SamplePool()  # site -> pooled share of units in the tail

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        out: list[Finding] = []
        for site, stats in ctx.snapshot.ordered():
            if site.family not in FAMILIES or not is_hidden(site) or stats.nonfinite or not finite(stats.saturated_units):
                continue
            per_unit = stats.saturation_samples / stats.units if stats.units else 0.0
            means, samples = self._pool.judged(ctx.preflight, site.name, [stats.saturated_units], per_unit, self.t)
            if means is None:
                ctx.hold(site.name)
                continue
            share = float(means[0])
            if share <= self.t["info_fraction"]:
                continue
            severity: Severity = "warning" if share >= self.t["warn_fraction"] else "info"
            when = " at initialisation" if ctx.preflight else ""
            msg = (
                f"{pct(share)} of {site.n_units} {site.kind} units sit in the flat negative tail{when} "
                "on >99% of their samples (|f'(x)| < 0.01): near-dead, they pass almost no gradient"
            )
            out.append(
                self.finding(
                    ctx, site.name, severity, msg, FIX,
                    near_dead_fraction=round(share, 4), near_dead_units=round(share * site.n_units),
                    units=site.n_units, samples_per_unit=int(samples),
                )
            )
        return out

    def state_dict(self) -> dict[str, Any]:
        return {}
