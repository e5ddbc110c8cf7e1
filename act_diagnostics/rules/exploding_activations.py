"""exploding-activations: activation magnitudes grow across depth, or reach overflow territory."""

from __future__ import annotations

from act_diagnostics.rules.base import FACTOR, POSITIVE, Range, Rule, RuleContext, finite, growth_fix, is_hidden
from act_diagnostics.rules.finding import Finding

# Bounded families (sigmoid, tanh, hardtanh) cannot grow: only unbounded ones are compared.
UNBOUNDED = ("relu", "smooth", "other")
# rules.md: "activation RMS grows > 100x across depth" (AUTOTRAINER / SageMaker style).
GROWTH = 100.0
# |activation| beyond this is within ~6x of float16's maximum 65504: AMP overflows next (proposal).
HUGE = 1e4
# Activations compared for growth: at least a first and a last (proposal).
MIN_SITES = 2

# When the largest activations are at the first measured activation, the scale comes in with what
# feeds it: the inputs, or the layers before it (the statistics cannot tell which; a selection may
# leave earlier activations unmeasured).
INPUT_FIX = (
    "Check the scale of what feeds it first: standardise the input features (subtract the mean, "
    "divide by the std per feature, e.g. in the dataset's transform) and check the init of the "
    "layers before it. "
)
FIX = (
    "Use init matched to the nonlinearity (Kaiming for ReLU, Xavier for tanh), add normalisation "
    "(BatchNorm/LayerNorm) or scale residual branches, and lower the learning rate."
)


class ExplodingActivations(Rule):
    id = "exploding-activations"
    per_site = False
    resolvable = True
    reads_rows = True
    defaults = {"growth": GROWTH, "huge": HUGE, "min_sites": MIN_SITES}
    ranges = {"growth": FACTOR, "huge": POSITIVE, "min_sites": Range(2.0, integer=True)}
    windows = 2
    primary = "growth_factor"

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        chain = [
            (s, st.rms, st.max_abs)
            for s, st in ctx.snapshot.ordered()
            if is_hidden(s) and s.family in UNBOUNDED and finite(st.rms) and finite(st.max_abs)
        ]
        if not chain:
            return []
        (first, rms_first, _), (last, rms_last, _) = chain[0], chain[-1]
        growth = rms_last / rms_first if len(chain) >= self.t["min_sites"] and rms_first else 0.0
        biggest, rms_big, max_big = max(chain, key=lambda p: p[2])
        evidence = dict(growth_factor=growth, rms_first=rms_first, rms_last=rms_last, max_abs=max_big)
        fix = growth_fix(ctx.snapshot, FIX)
        if growth > self.t["growth"]:
            msg = f"activation RMS grows {growth:.3g}x from '{first.name}' to '{last.name}' ({len(chain)} layers)"
            return [self.finding(ctx, last.name, "warning", msg, fix, **evidence)]
        if max_big > self.t["huge"]:
            msg = f"activations reach |{max_big:.3g}| (RMS {rms_big:.3g}): overflow in float16 is near"
            if biggest.name == ctx.snapshot.ordered()[0][0].name:  # the first measured activation
                msg += f"; they are largest at the first measured activation '{biggest.name}': the scale comes in with what feeds it"
                fix = INPUT_FIX + fix
            return [self.finding(ctx, biggest.name, "warning", msg, fix, **evidence)]
        return []
