"""saturation: hidden sigmoid / tanh / hardtanh units stuck where their derivative is ~0.

Uses the core's per-unit test (a unit is saturated when f'(x) < ~0.01 on more than 99% of its
samples, SiteStats.saturated_units) and the share of saturated outputs (SiteStats.saturation).
Heads and gates are skipped: a confident sigmoid output or a closed gate is working as intended.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from act_diagnostics.rules.base import COUNT, FRACTION, Rule, RuleContext, SamplePool, finite, is_hidden, pct, samples_per_unit
from act_diagnostics.rules.finding import Finding, Severity

FAMILIES = ("sigmoid", "tanh", "bounded")
# Share of a layer's units saturated (on >99% of their samples) before warning: SageMaker
# SaturatedActivation / DeadRelu threshold_layer = 50% (rules.md: "layer share > 0.5").
WARN_FRACTION = 0.5
# Share of all outputs saturated before warning: DeepDiagnosis (ICSE 2022), "saturated if > 50% of
# sigmoid/tanh inputs beyond +-5"; here beyond the core's f'(x) < 0.01 bound.
WARN_SHARE = 0.5
# Either share at or above this is an error (proposal: the layer passes almost no gradient).
ERROR_FRACTION = 0.9
# Samples per unit needed to judge during training (rules.md: windows of >= 1k samples); smaller
# windows are pooled (sample-weighted) until this many were seen.
MIN_SAMPLES = 1000
# Pre-flight judges one batch (proposal, as for dead-units).
PREFLIGHT_MIN_SAMPLES = 32

FIX = (
    "Use ReLU/GELU/SiLU with Kaiming init in hidden layers, or normalise the pre-activation "
    "(BatchNorm/LayerNorm); for tanh use Xavier init with gain 5/3 (nn.init.calculate_gain('tanh')); "
    "check the input scale and the learning rate."
)


class Saturation(Rule):
    id = "saturation"
    resolvable = True
    reads_rows = True
    defaults = {
        "warn_fraction": WARN_FRACTION,
        "warn_share": WARN_SHARE,
        "error_fraction": ERROR_FRACTION,
        "min_samples": MIN_SAMPLES,
        "preflight_min_samples": PREFLIGHT_MIN_SAMPLES,
    }
    ranges = {
        "warn_fraction": FRACTION, "warn_share": FRACTION, "error_fraction": FRACTION,
        "min_samples": COUNT, "preflight_min_samples": COUNT,
    }
    windows = 2
    primary = "saturation"

    def __init__(self, thresholds: Mapping[str, float] | None = None) -> None:
        super().__init__(thresholds)
        self._pool = SamplePool()  # site -> pooled (saturated units, saturation share)

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        out: list[Finding] = []
        for site, stats in ctx.snapshot.ordered():
            if site.family not in FAMILIES or not is_hidden(site) or stats.nonfinite or not finite(stats.saturated_units):
                continue
            means, samples = self._pool.judged(
                ctx.preflight, site.name, [stats.saturated_units, stats.saturation or 0.0], samples_per_unit(stats), self.t
            )
            if means is None:
                ctx.hold(site.name)
                continue
            units, share = float(means[0]), float(means[1])
            if units <= self.t["warn_fraction"] and share <= self.t["warn_share"]:
                continue
            severity: Severity = "error" if max(units, share) >= self.t["error_fraction"] else "warning"
            when = " at initialisation" if ctx.preflight else ""
            msg = (
                f"{pct(share)} of the outputs of {site.n_units} {site.kind} units are saturated{when} "
                f"({pct(units)} of the units on >99% of samples), where the derivative is ~0 "
                "and almost no gradient passes"
            )
            out.append(
                self.finding(
                    ctx, site.name, severity, msg, FIX,
                    saturated_units=round(units, 4), saturation=round(share, 4), samples_per_unit=int(samples),
                )
            )
        return out

    def state_dict(self) -> dict[str, Any]:
        return {}
