"""non-finite: NaN or Inf in activations or in their gradients, named where it first appears.

Forward values go input to output, so the first site in forward order with a non-finite output is
where NaN/Inf entered. Gradients flow the other way: when only gradients are non-finite, the origin
is the site nearest the output (last in forward order) whose gradient is non-finite.
"""

from __future__ import annotations

from act_diagnostics.rules.base import Rule, RuleContext
from act_diagnostics.rules.finding import Finding

FORWARD_FIX = (
    "Find what overflows just before this activation: lower the learning rate, clip gradients, check "
    "the input data for NaN/Inf, guard log/sqrt/division with an epsilon, and with float16 AMP use a "
    "GradScaler or bfloat16. torch.autograd.set_detect_anomaly(True) pinpoints the op."
)
BACKWARD_FIX = (
    "The backward pass overflows here: clip gradients (gradient_clip_val), lower the learning rate, "
    "avoid log(0) / sqrt(0) / division by ~0 in the loss, and with float16 AMP use a GradScaler."
)


class NonFinite(Rule):
    id = "non-finite"
    per_site = False
    defaults: dict[str, float] = {}
    windows = 1  # immediate: one NaN poisons every weight it touches

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        ordered = ctx.snapshot.ordered()
        forward = [s for s, st in ordered if st.nonfinite]
        backward = [s for s, st in ordered if st.grad_nonfinite]
        if forward:
            site = forward[0]
            share = ctx.snapshot.stats[site.name].nonfinite_share
            msg = f"NaN/Inf first appears in the output of '{site.name}' ({len(forward)} of {len(ordered)} sites affected)"
            evidence = dict(sites_affected=len(forward), sites=len(ordered), grad_sites_affected=len(backward))
            if share is not None:
                evidence["nonfinite_share"] = share
            return [self.finding(ctx, site.name, "error", msg, FORWARD_FIX, **evidence)]
        if backward:
            site = backward[-1]
            msg = (
                f"NaN/Inf first appears in the gradient at '{site.name}' during backward "
                f"({len(backward)} of {len(ordered)} sites affected; forward values are finite)"
            )
            return [
                self.finding(ctx, site.name, "error", msg, BACKWARD_FIX, sites_affected=0, sites=len(ordered), grad_sites_affected=len(backward))
            ]
        return []
