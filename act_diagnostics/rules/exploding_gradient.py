"""exploding-gradient: the gradient at activation outputs grows toward the input, or is huge."""

from __future__ import annotations

from act_diagnostics.rules.base import FACTOR, POSITIVE, Range, Rule, RuleContext, finite, growth_fix
from act_diagnostics.rules.finding import Finding, Severity

# AUTOTRAINER (ICSE 2021): exploding when ||g_first|| / ||g_last|| > 70.
GROWTH = 70.0
# Growth that is an error (proposal: two more orders of magnitude; the next steps overflow).
ERROR_GROWTH = 1e4
# ... and per activation layer at least this much (the geometric mean of the growth): AUTOTRAINER's
# 70x was set on shallow nets, where it is 4x per layer; across a healthy 17-activation BatchNorm
# ResNet gradients grow 90x, 1.3x per layer (proposal).
LAYER_GROWTH = 1.5
# Per-element gradient RMS that is huge whatever the depth (proposal: mean-reduced losses give
# per-element gradients far below 1; 1e3 means updates that wipe out the weights).
HUGE = 1e3
# Activations in the chain before growth across depth is judged (proposal).
MIN_SITES = 3

FIX = (
    "Clip gradients (Trainer(gradient_clip_val=1.0) or torch.nn.utils.clip_grad_norm_; Pascanu et al. "
    "2013), lower the learning rate, use init matched to the nonlinearity, and add normalisation."
)


class ExplodingGradient(Rule):
    id = "exploding-gradient"
    per_site = False
    resolvable = True
    reads_rows = True
    defaults = {"growth": GROWTH, "error_growth": ERROR_GROWTH, "layer_growth": LAYER_GROWTH, "huge": HUGE, "min_sites": MIN_SITES}
    ranges = {"growth": FACTOR, "error_growth": FACTOR, "layer_growth": FACTOR, "huge": POSITIVE, "min_sites": Range(2.0, integer=True)}
    windows = 2
    primary = "growth_factor"

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        chain = [(s, st.grad_rms) for s, st in ctx.notions.gradient_chain(ctx.snapshot) if finite(st.grad_rms)]
        if not chain:
            return []
        fix = growth_fix(ctx.snapshot, FIX)
        biggest, g_big = max(chain, key=lambda p: p[1])
        growth = 0.0
        if len(chain) >= self.t["min_sites"] and chain[-1][1] > 0:
            growth = chain[0][1] / chain[-1][1]
        per_layer = growth ** (1.0 / (len(chain) - 1)) if growth > 0 else 0.0
        if growth > self.t["growth"] and per_layer > self.t["layer_growth"]:
            first, last = chain[0][0], chain[-1][0]
            severity: Severity = "error" if growth > self.t["error_growth"] else "warning"
            msg = (
                f"the gradient at '{first.name}' is {growth:.3g}x larger than at '{last.name}' "
                f"({len(chain)} activation layers, {per_layer:.2g}x per layer): it grows toward the input"
            )
            evidence = dict(growth_factor=growth, layer_growth=per_layer, grad_rms_max=g_big, sites=len(chain))
            return [self.finding(ctx, first.name, severity, msg, fix, **evidence)]
        if g_big > self.t["huge"]:
            msg = f"gradient RMS {g_big:.3g} at this activation's output is huge"
            return [self.finding(ctx, biggest.name, "warning", msg, fix, growth_factor=growth, grad_rms_max=g_big, sites=len(chain))]
        return []
