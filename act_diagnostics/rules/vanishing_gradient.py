"""vanishing-gradient: the gradient at activation outputs shrinks across depth toward the input.

Compares the RMS of d(loss)/d(activation output) at the first and the last site of the network's
gradient chain (rules/notions.py: hidden activations and heads, plus the output activation unless it
is a sigmoid, tanh or softmax, forward order; gates, gate bottlenecks and activations inside a
residual branch scaled by a ~zero-initialised parameter left out).

The judgement is relative: a gradient's absolute size says nothing about what a layer can learn
from it (a mean-reduced loss shrinks every per-element gradient with the batch, Adam divides the
scale away, and a LayerScale of 1e-6 puts ~1e-10 gradients on a ConvNeXt block's GELU while the
block learns). What matters is how much of the gradient that reaches the top of the stack still
reaches its bottom.
"""

from __future__ import annotations

from act_diagnostics.rules.base import (
    POSITIVE,
    PROBABILITY,
    Range,
    Rule,
    RuleContext,
    count,
    finite,
)
from act_diagnostics.rules.finding import Finding

# AUTOTRAINER (ICSE 2021): vanishing when ||g_first|| / ||g_last|| < 1e-3 and ||g_first|| < 1e-4.
RATIO = 1e-3
# AUTOTRAINER: ... and the first gradient below 1e-4. Only ever narrows the ratio test (an absolute
# size never flags on its own).
FIRST_ABS = 1e-4
# Sites in the chain before "depth" means anything (proposal: three activations).
MIN_SITES = 3

FIX = (
    "Use non-saturating activations (ReLU/GELU/SiLU) with Kaiming init, add residual connections "
    "or normalisation (BatchNorm/LayerNorm), or reduce the depth."
)


class VanishingGradient(Rule):
    id = "vanishing-gradient"
    per_site = False
    resolvable = True
    reads_rows = True
    defaults = {"ratio": RATIO, "first_abs": FIRST_ABS, "min_sites": MIN_SITES}
    ranges = {"ratio": PROBABILITY, "first_abs": POSITIVE, "min_sites": Range(2.0, integer=True)}
    windows = 2
    primary = "shrink_factor"

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        chain = [(s, st.grad_rms) for s, st in ctx.notions.gradient_chain(ctx.snapshot) if finite(st.grad_rms)]
        if len(chain) < self.t["min_sites"]:
            return []
        (first, g_first), (last, g_last) = chain[0], chain[-1]
        if g_last <= 0.0:
            return []  # nothing reaches the output site: not a depth effect
        ratio = g_first / g_last
        if not (ratio < self.t["ratio"] and g_first < self.t["first_abs"]):
            return []
        shrink = g_last / g_first if g_first > 0 else float("inf")
        layers = count(len(chain), "activation layer")
        if g_first > 0:
            msg = (
                f"the gradient at '{first.name}' is {shrink:.3g}x smaller than at '{last.name}' "
                f"(RMS {g_first:.2e} vs {g_last:.2e}, {layers}): early layers barely learn"
            )
        else:  # "infx smaller" says less than this
            msg = f"no gradient reaches '{first.name}' (RMS 0 there, {g_last:.2e} at '{last.name}', {layers}): early layers do not learn"
        return [
            self.finding(
                ctx, first.name, "warning", msg, FIX,
                shrink_factor=shrink, grad_rms_first=g_first, grad_rms_last=g_last, sites=len(chain),
            )
        ]
