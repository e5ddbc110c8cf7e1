"""non-finite: NaN or Inf in activations or in their gradients, named where it first appears.

Forward values go input to output, so the first site in forward order with a non-finite output is
where NaN/Inf entered. Gradients flow the other way: when only gradients are non-finite, the origin
is the site nearest the output (last in forward order) whose gradient is non-finite.
"""

from __future__ import annotations

from act_diagnostics.rules.base import POSITIVE, Rule, RuleContext
from act_diagnostics.rules.finding import Finding

# float16 AMP: the GradScaler halves its scale at every step it skips for NaN/Inf gradients, from
# 2**16. Below 1, the gradients are not finite even unscaled: the model's own NaN/Inf, not float16
# overflow (torch.amp.GradScaler docs; proposal).
MIN_GRAD_SCALE = 1.0

FORWARD_FIX = (
    "Find what overflows just before this activation: lower the learning rate, clip gradients, check "
    "the input data for NaN/Inf, guard log/sqrt/division with an epsilon, and with float16 AMP use a "
    "GradScaler or bfloat16. torch.autograd.set_detect_anomaly(True) pinpoints the op."
)
# When a window of several steps cannot place it.
LOCATE = (
    " To find where it starts, rerun with log_every_n_steps=1 (each window one step) up to the step it "
    "appears, or with torch.autograd.set_detect_anomaly(True)."
)
BACKWARD_FIX = (
    "Check the targets and every other input of the loss for NaN/Inf first (one NaN label leaves the "
    "forward finite and makes every gradient NaN; clipping cannot repair it), and avoid log(0) / "
    "sqrt(0) / division by ~0 in the loss. If the backward pass overflows, lower the learning rate or "
    "clip gradients (gradient_clip_val), and with float16 AMP use a GradScaler."
)


class NonFinite(Rule):
    id = "non-finite"
    per_site = False
    resolvable = True
    defaults = {"min_grad_scale": MIN_GRAD_SCALE}
    ranges = {"min_grad_scale": POSITIVE}
    windows = 1  # immediate: one NaN poisons every weight it touches

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        ordered = ctx.snapshot.ordered()
        forward = [s for s, st in ordered if st.nonfinite]
        backward = [s for s, st in ordered if st.grad_nonfinite]
        if forward:
            site = forward[0]
            share = ctx.snapshot.stats[site.name].nonfinite_share
            steps = ctx.snapshot.window_steps
            evidence: dict[str, float] = dict(
                sites_affected=len(forward), sites=len(ordered), grad_sites_affected=len(backward), window_steps=steps
            )
            if share is not None:
                evidence["nonfinite_share"] = share
            if steps > 1 and len(forward) > 1:
                # Once NaN reaches the weights every later step is NaN at every site: a window of
                # several steps cannot say which site, or which pass, it started in.
                grads = f", and in the gradients at {len(backward)}" if backward else ""
                msg = (
                    f"NaN/Inf in the outputs of {len(forward)} of {len(ordered)} sites{grads} over this window of {steps} "
                    f"steps, the first in forward order at '{site.name}'; the window cannot tell where it started"
                )
                return [self.finding(ctx, site.name, "error", msg, FORWARD_FIX + LOCATE, **evidence)]
            msg = f"NaN/Inf first appears in the output of '{site.name}' ({len(forward)} of {len(ordered)} sites affected)"
            return [self.finding(ctx, site.name, "error", msg, FORWARD_FIX, **evidence)]
        if backward:
            site = backward[-1]
            msg = (
                f"NaN/Inf first appears in the gradient at '{site.name}' during backward "
                f"({len(backward)} of {len(ordered)} sites affected; forward values are finite)"
            )
            return [
                self.finding(
                    ctx, site.name, "error", msg, BACKWARD_FIX, sites_affected=0, sites=len(ordered), grad_sites_affected=len(backward)
                )
            ]
        return self._scaler_gave_up(ctx, ordered) or self._loss_only(ctx, ordered)

    def _loss_only(self, ctx: RuleContext, ordered: list) -> list[Finding]:
        """The loss itself was NaN/Inf in a model with no activation site to show it (a stack of Linear
        layers). Snapshot.network counts the loss values. With sites, their gradients (or a float16
        GradScaler giving up) say it, and name where."""
        net = ctx.snapshot.network
        if not net.losses_nonfinite or ordered:
            return []
        msg = (
            f"the loss was NaN/Inf in this window ({net.losses_nonfinite} non-finite loss value(s) seen); "
            "the model has no activation site to show where it starts"
        )
        evidence = dict(sites_affected=0, sites=len(ordered), losses_nonfinite=net.losses_nonfinite, losses=net.losses)
        return [self.finding(ctx, "<loss>", "error", msg, FORWARD_FIX, **evidence)]

    def _scaler_gave_up(self, ctx: RuleContext, ordered: list) -> list[Finding]:
        """float16 AMP: a GradScaler skips each step whose gradients are not finite, so they never
        reach the statistics (SiteStats.grad_skipped_share); its calibration at the start of a run
        skips a few. A scale fallen below ``min_grad_scale`` means they are the model's own NaN/Inf,
        on every step or on some (a NaN label in some batches)."""
        scale = ctx.snapshot.grad_scale
        skipped = [s for s, st in ordered if st.grad_skipped_share]
        if scale is None or scale >= self.t["min_grad_scale"] or not skipped:
            return []
        site = skipped[-1]
        msg = (
            f"the GradScaler's scale fell to {scale:.3g}: it skips every step whose gradients are NaN/Inf, which "
            f"then trains nothing, and halves the scale each time; below {self.t['min_grad_scale']:g} they are not "
            f"finite even unscaled (left out at {len(skipped)} of {len(ordered)} sites, the nearest the output "
            f"'{site.name}'; forward values are finite)"
        )
        evidence = dict(sites_affected=0, sites=len(ordered), grad_sites_affected=len(skipped), grad_scale=scale)
        return [self.finding(ctx, site.name, "error", msg, BACKWARD_FIX, **evidence)]
