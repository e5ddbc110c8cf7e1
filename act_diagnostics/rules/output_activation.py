"""output-activation-mismatch: an output activation whose range cannot fit the task or the loss.

Sources: DeepDiagnosis (ICSE 2022) and AUTOTRAINER check the output activation against the labels;
softmax over one element is always 1.0 (PyTorch docs: softmax normalises along ``dim``). The
range check reads ``SiteStats.target_outside``: the share of a regression loss's targets that the
output activation can never produce (counted on the device while the monitor tracks structure).
"""

from __future__ import annotations

import math

from act_diagnostics.core.kinds import output_range
from act_diagnostics.core.snapshot import SiteStats
from act_diagnostics.core.tracer import REGRESSION_LOSSES
from act_diagnostics.rules.base import Rule, RuleContext, pct
from act_diagnostics.rules.finding import Finding

MULTICLASS = ("cross_entropy", "nll_loss")
LOGIT_LOSSES = ("cross_entropy", "binary_cross_entropy_with_logits")
# Activations whose output is never negative: on logits they cut off every negative score. Leaky
# variants (leaky_relu, prelu, rrelu) only scale negatives down, and threshold may map them to a
# negative value: neither is judged here.
NON_NEGATIVE_KINDS = ("relu", "relu6")
# Share of a regression head's targets outside its activation's output range before warning
# (rules.md, output activation mismatch: "output range vs target range", DeepDiagnosis and
# AUTOTRAINER; proposal: a few outliers are tolerated)...
TARGET_OUTSIDE_WARN = 0.01
# ... and before it is an error (proposal: a tenth of the targets out of reach is the wrong head).
TARGET_OUTSIDE_ERROR = 0.1


class OutputActivationMismatch(Rule):
    id = "output-activation-mismatch"
    defaults = {"target_outside_warn": TARGET_OUTSIDE_WARN, "target_outside_error": TARGET_OUTSIDE_ERROR}

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        out: list[Finding] = []
        for site, stats in ctx.snapshot.ordered():
            losses = [loss.split("(")[0] for loss in site.losses]
            f = self._check(ctx, site, losses) or self._target_range(ctx, site, stats, losses)
            if f is not None:
                out.append(f)
        return out

    def _target_range(self, ctx: RuleContext, site, stats: SiteStats, losses: list[str]) -> Finding | None:  # noqa: ANN001
        share = stats.target_outside
        loss = next((loss for loss in losses if loss in REGRESSION_LOSSES), None)
        bounds = output_range(site.kind, site.params)
        if share is None or loss is None or bounds is None or not share > self.t["target_outside_warn"]:
            return None
        low, high = bounds
        severity = "error" if share >= self.t["target_outside_error"] else "warning"
        msg = (
            f"{pct(share)} of the {loss} targets lie outside the {site.kind} output range "
            f"[{low:g}, {high:g}]: the model can never fit them"
        )
        fix = (
            "For unbounded regression targets end the model with the last layer (no activation); or "
            "scale the targets into the activation's range (e.g. min-max to [0, 1] for a sigmoid)."
        )
        return self.finding(
            ctx, site.name, severity, msg, fix,
            target_outside=round(share, 4), low=low, high=None if math.isinf(high) else high, loss=loss,
        )  # fmt: skip

    def _check(self, ctx: RuleContext, site, losses: list[str]) -> Finding | None:  # noqa: ANN001
        # Attention softmaxes (into matmul) over one key are degenerate but harmless: only outputs and
        # softmaxes feeding a layer are judged.
        if site.family == "softmax" and site.n_units == 1 and (site.is_output or site.feeds_layer):
            msg = (
                f"{site.kind} over dim {site.unit_dim} of size 1 always returns "
                f"{'0.0' if site.kind == 'log_softmax' else '1.0'}: the output carries no information"
            )
            fix = (
                "For one binary output use a sigmoid (or logits + BCEWithLogitsLoss); for C classes output "
                "C logits and normalise over the class dim (dim=-1 or dim=1)."
            )
            return self.finding(ctx, site.name, "error", msg, fix, units=site.n_units, dim=site.unit_dim)
        if site.family == "sigmoid" and site.kind != "logsigmoid" and any(loss in MULTICLASS for loss in losses):
            loss = next(loss for loss in losses if loss in MULTICLASS)
            msg = f"sigmoid outputs in [0, 1] feed the multi-class loss {loss}, which expects logits (or log-probabilities)"
            fix = "Pass raw logits to cross_entropy (or log_softmax to nll_loss); use sigmoid only with BCE for binary/multi-label targets."
            return self.finding(ctx, site.name, "error", msg, fix, units=site.n_units)
        if site.kind in NON_NEGATIVE_KINDS and any(loss in LOGIT_LOSSES for loss in losses):
            loss = next(loss for loss in losses if loss in LOGIT_LOSSES)
            bce = loss == "binary_cross_entropy_with_logits"
            msg = f"{site.kind} is applied to the logits fed to {loss}: logits cannot go negative" + (
                ", so predicted probabilities never fall below 0.5" if bce else ", and units stuck at 0 stop learning"
            )
            fix = "Remove the activation after the last layer: the loss expects unbounded logits."
            return self.finding(ctx, site.name, "error" if bce else "warning", msg, fix, units=site.n_units)
        if site.family == "tanh" and "binary_cross_entropy" in losses:
            msg = "tanh outputs in [-1, 1] feed binary_cross_entropy, which needs probabilities in [0, 1] (log of a negative is NaN)"
            fix = "Use a sigmoid, or better logits with BCEWithLogitsLoss."
            return self.finding(ctx, site.name, "error", msg, fix, units=site.n_units)
        return None
