"""signal-propagation (pre-flight only): pre-activation scale blowing up or collapsing with depth.

Reads SiteStats.input_std (the standard deviation of each activation's input, measured on the
first training step's detail pass) across the hidden stack (rules/notions.py) in forward order:
heads (a classifier deliberately initialised small, as torchvision's MobileNet N(0, 0.01) Linear),
gates and gate bottlenecks keep their own scales and are no part of the depth. A pre-flight batch of
one row, or of identical rows, is not judged (the engine skips it).
"""

from __future__ import annotations

from act_diagnostics.rules.base import FACTOR, Range, Rule, RuleContext, count, finite
from act_diagnostics.rules.finding import Finding

# SageMaker Debugger PoorWeightInitialization: max/min variance of ReLU inputs across layers > 10.
# Applied to the standard deviation (a variance ratio of 100) so that the mild, healthy drift of
# default-initialised layers stays quiet (proposal: threshold on std, source's value).
RATIO = 10.0
# Layers compared: at least two (proposal).
MIN_SITES = 2

FIX = (
    "Use initialisation matched to the nonlinearity (nn.init.kaiming_normal_ for ReLU-family, "
    "nn.init.xavier_normal_ with gain 5/3 for tanh), LSUV, or normalisation layers so each layer's "
    "pre-activations keep unit scale."
)


class SignalPropagation(Rule):
    id = "signal-propagation"
    per_site = False
    reads_rows = True
    defaults = {"ratio": RATIO, "min_sites": MIN_SITES}
    ranges = {"ratio": FACTOR, "min_sites": Range(2.0, integer=True)}
    in_training = False
    primary = "ratio"

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        chain = [(s, st.input_std) for s, st in ctx.notions.stack_pairs(ctx.snapshot) if finite(st.input_std)]
        if len(chain) < self.t["min_sites"]:
            return []
        lo_i = min(range(len(chain)), key=lambda i: chain[i][1])
        hi_i = max(range(len(chain)), key=lambda i: chain[i][1])
        lo, hi = chain[lo_i][1], chain[hi_i][1]
        ratio = hi / lo if lo > 0 else float("inf")
        if ratio <= self.t["ratio"]:
            return []
        grows = hi_i > lo_i
        deep = chain[max(lo_i, hi_i)][0]
        # Quote the two sites the ratio compares, in forward order (not the chain's ends).
        first, last = (lo_i, hi_i) if grows else (hi_i, lo_i)
        ends = " to ".join(f"{chain[i][1]:.3g} at '{chain[i][0].name}'" for i in (first, last))
        if lo > 0:
            change = "grows" if grows else "collapses"
            msg = f"pre-activation std {change} {ratio:.3g}x across {count(len(chain), 'layer')} at initialisation (from {ends})"
        else:  # a constant pre-activation: no ratio to quote
            msg = (
                f"the pre-activation of '{chain[lo_i][0].name}' is constant (std 0) at initialisation, against "
                f"{hi:.3g} at '{chain[hi_i][0].name}' ({count(len(chain), 'layer')}): no signal passes that layer"
            )
        return [
            self.finding(
                ctx, deep.name, "warning", msg, FIX,
                ratio=ratio, min_std=lo, max_std=hi, direction=1 if grows else -1, sites=len(chain),
            )
        ]
