"""saturating-hidden-activation: sigmoid or tanh stacked in the hidden layers of a deep network.

Glorot & Bengio (2010) showed the top hidden layer of a deep sigmoid network saturating and
stalling training; tanh suffers less (zero-centred) but still loses gradient with depth. What is
counted is the stack of saturating layers itself: consecutive sigmoid (or tanh) layers in the
network's depth (rules/notions.py: hidden stack and heads, one per depth position), not every
activation of the model. So:

* a head is not a hidden stack: one tanh on BERT's [CLS] vector before the classifier, or a
  sigmoid or tanh head of its own after ReLU/GELU layers, is no finding;
* two- and three-layer sigmoid or tanh MLPs (one or two hidden layers, the textbook nets) get an
  info note at most, unless the statistics show the layers saturating or starving the gradient;
* a deep stack (``sigmoid_min_depth`` / ``tanh_min_depth`` layers) is a warning, as is a shallower
  one measured saturating (``saturated_share``) or shrinking the gradient across it (``starve_ratio``).

Sigmoid stays the right choice for a binary output and for gates (LSTM, squeeze-excitation,
attention gates), so those are never counted.
"""

from __future__ import annotations

from act_diagnostics.core.sites import Site
from act_diagnostics.core.snapshot import SiteStats
from act_diagnostics.rules.base import (
    FRACTION,
    PROBABILITY,
    Range,
    Rule,
    RuleContext,
    count,
    finite,
)
from act_diagnostics.rules.finding import Finding, Severity

# Layers in the stack (consecutive hidden sigmoid layers + 1) from which it is a warning whatever
# the statistics: three hidden sigmoid layers (Glorot & Bengio 2010 trained 4-5); two (the
# three-layer textbook MLP) train fine unless they saturate (issue: shallow sigmoid nets).
SIGMOID_MIN_DEPTH = 4
# tanh is zero-centred and trains well in shallow nets (Karpathy, makemore part 3): warn only in
# deeper stacks (proposal).
TANH_MIN_DEPTH = 5
# A shallower stack is a warning when a layer of it has this share of its outputs (or of its units)
# saturated: the saturation rule's warning share (SageMaker SaturatedActivation, 50%).
SATURATED_SHARE = 0.5
# ... or when the gradient shrinks more than 100x across it, against ~0.15x per healthy sigmoid
# layer (derivative <= 0.25 times the weights' gain); proposal.
STARVE_RATIO = 0.01

# LogSigmoid is -softplus(-x): linear on one side, flat on the other, like softplus (not flagged
# statically); its flat side is measured by the saturation rule.
ONE_SIDED_KINDS = ("logsigmoid",)
FAMILIES = ("sigmoid", "tanh")

FIX = (
    "Use ReLU, GELU or SiLU (with Kaiming init) between layers; keep sigmoid for binary outputs "
    "and gates, and prefer logits + BCEWithLogitsLoss at the output."
)


class SaturatingHiddenActivation(Rule):
    id = "saturating-hidden-activation"
    per_site = False
    defaults = {
        "sigmoid_min_depth": SIGMOID_MIN_DEPTH,
        "tanh_min_depth": TANH_MIN_DEPTH,
        "saturated_share": SATURATED_SHARE,
        "starve_ratio": STARVE_RATIO,
    }
    ranges = {
        "sigmoid_min_depth": Range(2.0, integer=True), "tanh_min_depth": Range(2.0, integer=True),
        "saturated_share": FRACTION, "starve_ratio": PROBABILITY,
    }
    primary = None

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        snap, notions = ctx.snapshot, ctx.notions
        # The network's depth: hidden activations that feed a layer (stack and heads), one per depth
        # position (a shared encoder applied twice or a cell unrolled over time is not deeper; one
        # activation module shared by a stack's layers is as deep as its layers).
        chain: dict[tuple[str, str | None], Site] = {}
        for s, _ in snap.ordered():
            if s.feeds_layer and not s.is_gate and not s.is_output and s.family != "softmax" and s.name not in notions.gate_bottlenecks:
                chain.setdefault(s.depth_position, s)
        layers = list(chain.values())
        measured = not (ctx.preflight and notions.degenerate_batch)
        out: list[Finding] = []
        for family in FAMILIES:
            runs = self._runs(layers, family)
            runs = [r for r in runs if not all(s.name in notions.heads for s in r)]  # a head is no stack
            if not runs:
                continue
            run = max(runs, key=len)
            depth = len(run) + 1
            limit = self.t[f"{family}_min_depth"]
            why = self._measured(run, snap.stats) if measured else ""
            severity: Severity = "warning" if depth >= limit or why else "info"
            names = ", ".join(s.name for s in run)
            kinds = sorted({s.kind for s in run})
            # Name what the model uses: softsign is of the tanh family, not tanh.
            label = family if kinds == [family] else f"{'/'.join(kinds)} (the {family} family)"
            which = family if kinds == [family] else f"the {family} family"
            if depth >= limit:
                msg = (
                    f"{label} is used in {count(len(run), 'hidden layer')} in a row ({names}), a stack {depth} layers deep; "
                    f"{which} saturates and shrinks gradients with depth"
                )
            elif why:
                msg = f"{label} in {count(len(run), 'hidden layer')} ({names}) {why}"
            else:
                msg = (
                    f"{label} is used in {count(len(run), 'hidden layer')} ({names}) of a shallow stack ({depth} layers) "
                    "and does not saturate: fine here; in deeper stacks it would shrink gradients"
                )
            out.append(self.finding(ctx, run[0].name, severity, msg, FIX, family=family, sites=len(run), depth=depth))
        return out

    @staticmethod
    def _runs(layers: list[Site], family: str) -> list[list[Site]]:
        """Maximal runs of consecutive layers of ``family`` (one-sided kinds break a run)."""
        runs: list[list[Site]] = []
        current: list[Site] = []
        for s in layers:
            if s.family == family and s.kind not in ONE_SIDED_KINDS:
                current.append(s)
            elif current:
                runs.append(current)
                current = []
        if current:
            runs.append(current)
        return runs

    def _measured(self, run: list[Site], stats: dict[str, SiteStats]) -> str:
        """Why the statistics make a shallow stack a problem ("" when they do not)."""
        for s in run:
            st = stats.get(s.name)
            share = max((v for v in (st.saturation, st.saturated_units) if finite(v)), default=0.0) if st else 0.0
            if share >= self.t["saturated_share"]:
                return f"saturates: {share:.0%} of the outputs of '{s.name}' sit where the derivative is ~0"
        grads = [stats[s.name].grad_rms for s in run if s.name in stats]
        finite_grads = [g for g in grads if finite(g)]
        if len(grads) >= 2 and len(finite_grads) == len(grads) and finite_grads[-1] > 0:
            ratio = finite_grads[0] / finite_grads[-1]
            if ratio < self.t["starve_ratio"]:
                smaller = f"{1 / ratio:.3g}x smaller" if ratio > 0 else "0"
                return f"starves the gradient: it is {smaller} at '{run[0].name}' against '{run[-1].name}'"
        return ""

    def topic(self, finding: Finding) -> str:
        # Sigmoid and tanh layers of one model are two findings, each reported once.
        return f"*{finding.evidence.get('family', '')}"
