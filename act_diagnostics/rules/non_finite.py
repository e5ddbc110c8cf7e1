"""non-finite: NaN or Inf in activations or in their gradients, named where it first appears.

Forward values go input to output, so the first site in forward order with a non-finite output is
where NaN/Inf entered. Gradients flow the other way: when only gradients are non-finite, the origin
is the site nearest the output (last in forward order) whose gradient is non-finite.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from act_diagnostics.rules.base import Rule, RuleContext
from act_diagnostics.rules.finding import Finding

# float16 AMP: measured steps in a row whose gradients a GradScaler skipped at every site before
# that is a finding. Each skip halves the scale: from 2**16 it reaches 1 after 16, so its calibration
# at the start of a run is over long before; past 32, no scale gives a finite gradient (proposal).
SKIPPED_STEPS = 32

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
    defaults: dict[str, float] = {"skipped_steps": SKIPPED_STEPS}
    windows = 1  # immediate: one NaN poisons every weight it touches

    def __init__(self, thresholds: Mapping[str, float] | None = None) -> None:
        super().__init__(thresholds)
        self._skipped_run = 0  # measured steps in a row whose gradients the GradScaler skipped everywhere

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        ordered = ctx.snapshot.ordered()
        forward = [s for s, st in ordered if st.nonfinite]
        backward = [s for s, st in ordered if st.grad_nonfinite]
        if forward:
            site = forward[0]
            share = ctx.snapshot.stats[site.name].nonfinite_share
            steps = ctx.snapshot.window_steps
            evidence = dict(sites_affected=len(forward), sites=len(ordered), grad_sites_affected=len(backward), window_steps=steps)
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
                self.finding(ctx, site.name, "error", msg, BACKWARD_FIX, sites_affected=0, sites=len(ordered), grad_sites_affected=len(backward))
            ]
        return self._always_skipped(ctx, ordered)

    def _always_skipped(self, ctx: RuleContext, ordered: list) -> list[Finding]:
        """float16 AMP: a GradScaler skips a step whose gradients are not finite, so they never reach
        the statistics (SiteStats.grad_skipped_share). Skipped at every site, step after step, they
        are the model's own NaN/Inf (a NaN label, log(0) in the loss), and training has stopped."""
        skipped = [s for s, st in ordered if st.grad_skipped_share is not None]
        kept = [s for s, st in ordered if st.grad_rms is not None]
        if not skipped or kept:
            if kept:
                self._skipped_run = 0
            return []
        self._skipped_run += ctx.snapshot.window_steps
        if self._skipped_run < self.t["skipped_steps"]:
            return []
        site = skipped[-1]
        msg = (
            f"the gradients are NaN/Inf at every site on each of the last {self._skipped_run} measured steps "
            "(forward values are finite): the GradScaler skipped every optimizer step, so training has stopped"
        )
        evidence = dict(sites_affected=0, sites=len(ordered), grad_sites_affected=len(skipped), skipped_steps=self._skipped_run)
        return [self.finding(ctx, site.name, "error", msg, BACKWARD_FIX, **evidence)]

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_run": self._skipped_run}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._skipped_run = int(state.get("skipped_run", 0) or 0)
