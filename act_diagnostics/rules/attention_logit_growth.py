"""attention-logit-growth: the largest pre-softmax attention logit of a site grows until the softmax
can only pick one key.

Reads ``SiteStats.max_logit`` of the attention sites: the largest ``q.k * scale`` over the heads of
the sample the monitor recomputes on detail steps for attention entropy, or, for attention written
by hand, the largest value of its softmax's input (core/attention.py).
Dehghani et al. (ICML 2023, ViT-22B) and Wortsman et al. (ICLR 2024, "Small-scale proxies for
large-scale Transformer training instabilities") show attention logits growing without bound at
high learning rates when queries and keys are not normalised, the attention entropy collapsing and
the loss diverging; QK-LayerNorm keeps the logits bounded. Neither gives a number to judge by: the
thresholds below follow from the softmax's arithmetic and are proposals. A key whose logit lies
``g`` below the row's largest gets at most ``e^-g`` of its weight: at a gap of 30 (1e-13) any
practical number of keys leaves the top key above 0.99, and beyond about 87 the other weights
underflow to exactly 0 in float32 and bfloat16 (their smallest normal is e^-87.3), so no gradient
reaches them. The largest logit bounds the gap a row can reach from above (with logits around 0,
the gap is up to about twice it). Growth is required as well: a model whose logits started large
(a missing 1/sqrt(d) scale) is a different fault, and the finding is about a trend the run shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from act_diagnostics.rules.base import FACTOR, POSITIVE, Rule, RuleContext, finite, pct
from act_diagnostics.rules.finding import Finding, Severity

# Largest logit before warning (proposal, see the module docstring: a gap of 30 leaves other keys
# below 1e-13 of the top key's weight, one-hot for any practical context length).
WARN_LOGIT = 30.0
# Largest logit for an error (proposal: gaps past ~87 underflow to exact zeros in float32/bfloat16;
# a largest logit of 100 reaches such gaps against keys near 0 or below).
ERROR_LOGIT = 100.0
# The largest logit must also have grown this many times over the site's smallest window value so
# far (its value at initialisation on a healthy run; proposal: logit growth is a trend, and
# doubling separates it from the window-to-window noise of a sampled maximum).
MIN_GROWTH = 2.0
# Below this baseline, growth is measured from 1.0 (a logit near 0 at initialisation makes any
# ratio huge; proposal).
BASELINE_FLOOR = 1.0

FIX = (
    "Normalise queries and keys before the dot product (QK-LayerNorm: Dehghani et al. 2023; Wortsman et al. 2023), "
    "lower the learning rate or lengthen the warm-up; keep the 1/sqrt(head_dim) scale of the scores."
)


class AttentionLogitGrowth(Rule):
    id = "attention-logit-growth"
    defaults = {"warn_logit": WARN_LOGIT, "error_logit": ERROR_LOGIT, "min_growth": MIN_GROWTH}
    ranges = {"warn_logit": POSITIVE, "error_logit": POSITIVE, "min_growth": FACTOR}
    windows = 2
    primary = "max_logit"

    def __init__(self, thresholds: Mapping[str, float] | None = None) -> None:
        super().__init__(thresholds)
        self._baseline: dict[str, float] = {}  # site -> smallest window max logit seen so far

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        out: list[Finding] = []
        for site, stats in ctx.snapshot.ordered():
            if site.source != "attention":
                continue
            logit = stats.max_logit
            if not finite(logit):
                ctx.hold(site.name)  # no detail step in this window (or non-finite: non-finite's)
                continue
            assert logit is not None
            baseline = min(self._baseline.get(site.name, math.inf), logit)
            self._baseline[site.name] = baseline
            growth = logit / max(baseline, BASELINE_FLOOR)
            if ctx.preflight or logit < self.t["warn_logit"] or growth < self.t["min_growth"]:
                continue
            severity: Severity = "error" if logit >= self.t["error_logit"] else "warning"
            heads = stats.max_logit_heads
            head = max(range(len(heads)), key=lambda h: heads[h]) if heads else 0
            peaked = stats.saturation if finite(stats.saturation) else None
            now = f"; {pct(peaked)} of the sampled query rows are already peaked" if peaked is not None else ""
            msg = (
                f"the largest pre-softmax attention logit grew to {logit:.3g} (head {head}), {growth:.3g}x its smallest "
                f"value so far ({baseline:.3g}): at logits this large the softmax puts nearly all of a row's weight on "
                f"one key, and attention entropy collapses{now}"
            )
            evidence: dict[str, Any] = dict(
                max_logit=round(logit, 3), baseline=round(baseline, 3), growth=round(growth, 3), head=head, heads=len(heads)
            )
            if peaked is not None:
                evidence["peaked_rows"] = round(peaked, 4)
            out.append(self.finding(ctx, site.name, severity, msg, FIX, **evidence))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": dict(self._baseline)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._baseline = {str(k): float(v) for k, v in (state.get("baseline", {}) or {}).items()}
