"""output-activation-mismatch: an output activation whose range cannot fit the task or the loss.

Sources: DeepDiagnosis (ICSE 2022) and AUTOTRAINER check the output activation against the labels;
softmax over one element is always 1.0 (PyTorch docs: softmax normalises along ``dim``). The
range check reads ``SiteStats.target_outside``: the share of a regression loss's targets that the
output activation can never produce; the multi-label check reads ``SiteStats.target_rows_off``:
the share of dense target rows that do not sum to 1, which no softmax can output (both counted on
the device while the monitor tracks structure). Losses are matched whatever was applied on the way
(clamps, epsilons, logs: core/following.py) and hand-written ones by what they compute.
"""

from __future__ import annotations

import math

from act_diagnostics.core.following import HANDWRITTEN_BCE, HANDWRITTEN_CE, LOG, NORMALISED, loss_parts
from act_diagnostics.core.kinds import output_range
from act_diagnostics.core.snapshot import SiteStats
from act_diagnostics.core.tracer import REGRESSION_LOSSES
from act_diagnostics.rules.base import FRACTION, Rule, RuleContext, pct
from act_diagnostics.rules.finding import Finding, Severity

MULTICLASS = ("cross_entropy", "nll_loss", HANDWRITTEN_CE)
# Losses that read their input as probabilities (a log of it, or 1 - it).
PROBABILITY_LOSSES = ("binary_cross_entropy", HANDWRITTEN_BCE, HANDWRITTEN_CE)
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
# Share of a softmax output's dense target rows that do not sum to 1 (multi-label) before warning,
# and before it is an error: the same proposal as the range check.
MULTI_LABEL_WARN = 0.01
MULTI_LABEL_ERROR = 0.1
# Losses whose pairing with a softmax activation-loss-mismatch already judges (softmax into BCE).
_BCE_LOSSES = ("binary_cross_entropy", HANDWRITTEN_BCE)


class OutputActivationMismatch(Rule):
    id = "output-activation-mismatch"
    defaults = {
        "target_outside_warn": TARGET_OUTSIDE_WARN,
        "target_outside_error": TARGET_OUTSIDE_ERROR,
        "multi_label_warn": MULTI_LABEL_WARN,
        "multi_label_error": MULTI_LABEL_ERROR,
    }
    ranges = {
        "target_outside_warn": FRACTION,
        "target_outside_error": FRACTION,
        "multi_label_warn": FRACTION,
        "multi_label_error": FRACTION,
    }
    # Targets are counted on the structure steps only: later windows cannot clear a finding.
    resolvable = False

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        out: list[Finding] = []
        for site, stats in ctx.snapshot.ordered():
            parts = [loss_parts(loss) for loss in site.losses]
            losses = [name for name, _ in parts]
            f = (
                self._check(ctx, site, losses, parts)
                or self._multi_label(ctx, site, stats, losses)
                or self._target_range(ctx, site, stats, losses)
            )
            if f is not None:
                out.append(f)
        return out

    def _multi_label(self, ctx: RuleContext, site, stats: SiteStats, losses: list[str]) -> Finding | None:
        """A softmax output trained towards target rows that do not sum to 1 (several classes true
        at once, or none): its rows always sum to 1, so it cannot fit them, whatever the loss."""
        share = stats.target_rows_off
        if site.kind not in ("softmax", "softmin") or site.n_units < 2 or share is None or not share > self.t["multi_label_warn"]:
            return None
        others = [loss for loss in losses if loss not in _BCE_LOSSES]
        if not others:
            return None  # softmax into BCE: activation-loss-mismatch says it
        severity: Severity = "error" if share >= self.t["multi_label_error"] else "warning"
        msg = (
            f"{pct(share)} of the target rows fed to {others[0]} do not sum to 1 (multi-label targets: several "
            f"classes true at once, or none), but {site.kind} rows always sum to 1: the model cannot fit them"
        )
        fix = (
            "For multi-label targets output one logit per class and use BCEWithLogitsLoss (a sigmoid per class); "
            "if each sample has exactly one class, fix the targets (one-hot rows)."
        )
        return self.finding(ctx, site.name, severity, msg, fix, target_rows_off=round(share, 4), classes=site.n_units, loss=others[0])

    def _target_range(self, ctx: RuleContext, site, stats: SiteStats, losses: list[str]) -> Finding | None:
        share = stats.target_outside
        loss = next((loss for loss in losses if loss in REGRESSION_LOSSES), None)
        bounds = output_range(site.kind, site.params)
        if share is None or loss is None or bounds is None or not share > self.t["target_outside_warn"]:
            return None
        low, high = bounds
        severity: Severity = "error" if share >= self.t["target_outside_error"] else "warning"
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
        )

    def _check(self, ctx: RuleContext, site, losses: list[str], parts: list[tuple[str, tuple[str, ...]]]) -> Finding | None:
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
        # A sigmoid normalised over its row is a distribution: its log feeds nll_loss or -(y log p) soundly.
        multiclass = [n for n, steps in parts if n in MULTICLASS and not (NORMALISED in steps and n != "cross_entropy")]
        if site.family == "sigmoid" and site.kind != "logsigmoid" and multiclass:
            loss = multiclass[0]
            if loss == HANDWRITTEN_CE:
                msg = (
                    "sigmoid outputs feed a hand-written categorical cross-entropy -(y * log p): sigmoids do not compete "
                    "(rows need not sum to 1), so the loss only pushes the true class up and is minimised by predicting 1 everywhere"
                )
                fix = (
                    "For one class per sample use softmax (or logits with F.cross_entropy); for binary or multi-label "
                    "targets keep the sigmoid and add the (1 - y) * log(1 - p) term (better: logits with BCEWithLogitsLoss)."
                )
            else:
                msg = f"sigmoid outputs in [0, 1] feed the multi-class loss {loss}, which expects logits (or log-probabilities)"
                fix = (
                    "Pass raw logits to cross_entropy (or log_softmax to nll_loss); use sigmoid only with BCE for "
                    "binary/multi-label targets."
                )
            return self.finding(ctx, site.name, "error", msg, fix, units=site.n_units)
        probability = [(n, steps) for n, steps in parts if n in PROBABILITY_LOSSES or (LOG in steps and n != "kl_div")]
        if site.kind in NON_NEGATIVE_KINDS and probability:
            loss, steps = probability[0]
            bound = "divided by its row sum it" if NORMALISED in steps else f"a {site.kind} is not bounded by 1 and"
            msg = (
                f"{site.kind} outputs feed {loss}, which reads them as probabilities: {bound} outputs exactly 0 "
                "wherever it is off, whose log is -inf (or an epsilon's), and those classes get no gradient"
            )
            fix = (
                "End the model with a sigmoid for binary or multi-label targets (softmax for one class per sample); "
                "better, output logits and use BCEWithLogitsLoss (F.cross_entropy)."
            )
            return self.finding(ctx, site.name, "error", msg, fix, units=site.n_units, loss=loss)
        if site.kind in NON_NEGATIVE_KINDS and any(loss in LOGIT_LOSSES for loss in losses):
            loss = next(loss for loss in losses if loss in LOGIT_LOSSES)
            bce = loss == "binary_cross_entropy_with_logits"
            msg = f"{site.kind} is applied to the logits fed to {loss}: logits cannot go negative" + (
                ", so predicted probabilities never fall below 0.5" if bce else ", and units stuck at 0 stop learning"
            )
            fix = "Remove the activation after the last layer: the loss expects unbounded logits."
            return self.finding(ctx, site.name, "error" if bce else "warning", msg, fix, units=site.n_units)
        probability_loss = next((loss for loss in losses if loss in PROBABILITY_LOSSES), None)
        if site.family == "tanh" and probability_loss is not None:
            msg = f"tanh outputs in [-1, 1] feed {probability_loss}, which needs probabilities in [0, 1] (log of a negative is NaN)"
            fix = "Use a sigmoid, or better logits with BCEWithLogitsLoss."
            return self.finding(ctx, site.name, "error", msg, fix, units=site.n_units)
        return None
