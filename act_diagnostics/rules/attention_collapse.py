"""attention-collapse: attention that puts nearly all its weight on one key (entropy collapse).

Reads the attention sites (the weights of ``F.scaled_dot_product_attention`` and of
``nn.MultiheadAttention``, recomputed for a sample on detail steps, and the softmax of attention
written by hand, measured where it runs; docs/statistics.md):
``SiteStats.saturation`` there is the share of query
rows whose largest weight exceeds ``1 - saturation_eps``. Zhai et al. (ICML 2023, "Stabilizing
Transformer Training by Preventing Attention Entropy Collapse") show attention entropy collapsing
before loss spikes and divergence; Dehghani et al. (ICML 2023, ViT-22B) and Wortsman et al. (ICLR
2024, "Small-scale proxies for large-scale Transformer training instabilities") trace it to growing
attention logits and fix it by normalising queries and keys. None gives a share to judge by: the
thresholds below are proposals. A row that sees at most one key (the first row under a causal mask)
is never counted as peaked: it has no choice to make.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from act_diagnostics.rules.base import COUNT, FRACTION, Rule, RuleContext, SamplePool, finite, pct
from act_diagnostics.rules.finding import Finding, Severity

# Share of query rows with one weight > 1 - saturation_eps before warning (proposal: most of the
# layer's queries attend to a single key, the collapsed state of Zhai et al. 2023).
WARN_SHARE = 0.5
# At or above this share it is an error (proposal: the layer has stopped mixing tokens).
ERROR_SHARE = 0.9
# Query rows needed to judge in training (proposal: a share over >= 256 rows has a standard error
# of at most 3 points); fewer are pooled over windows.
MIN_SAMPLES = 256
# The pre-flight check judges one batch's sample (proposal, as for dead-units).
PREFLIGHT_MIN_SAMPLES = 32

FIX = (
    "Normalise queries and keys before the dot product (QK-LayerNorm: Dehghani et al. 2023, Wortsman et al. 2023), "
    "lower the learning rate or lengthen the warm-up, and check that the scores are scaled by 1/sqrt(head_dim) "
    "(F.scaled_dot_product_attention's default)."
)


class AttentionCollapse(Rule):
    id = "attention-collapse"
    resolvable = True
    reads_rows = True
    defaults = {
        "warn_share": WARN_SHARE,
        "error_share": ERROR_SHARE,
        "min_samples": MIN_SAMPLES,
        "preflight_min_samples": PREFLIGHT_MIN_SAMPLES,
    }
    ranges = {"warn_share": FRACTION, "error_share": FRACTION, "min_samples": COUNT, "preflight_min_samples": COUNT}
    windows = 2
    primary = "peaked_rows"

    def __init__(self, thresholds: Mapping[str, float] | None = None) -> None:
        super().__init__(thresholds)
        self._pool = SamplePool()  # site -> pooled share of peaked rows

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        out: list[Finding] = []
        for site, stats in ctx.snapshot.ordered():
            if site.source != "attention":
                continue
            if stats.nonfinite or not finite(stats.saturation) or not stats.saturation_samples:
                ctx.hold(site.name)  # a window without a detail step has no attention sample
                continue
            means, rows = self._pool.judged(ctx.preflight, site.name, [stats.saturation], stats.saturation_samples, self.t)
            if means is None:
                ctx.hold(site.name)
                continue
            share = float(means[0])
            if share <= self.t["warn_share"]:
                continue
            severity: Severity = "error" if share >= self.t["error_share"] else "warning"
            when = " at initialisation" if ctx.preflight else ""
            msg = (
                f"{pct(share)} of the sampled query rows put nearly all their weight on a single key{when} "
                f"(over {site.n_units} keys): attention entropy has collapsed, which often precedes loss spikes and divergence"
            )
            out.append(self.finding(ctx, site.name, severity, msg, FIX, peaked_rows=round(share, 4), rows=int(rows), keys=site.n_units))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {}
