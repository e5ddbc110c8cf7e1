"""saturating-hidden-activation (static): sigmoid or tanh between layers of a deep stack.

Glorot & Bengio (2010) showed the top hidden layer of a deep sigmoid network saturating and
stalling training; tanh suffers less (zero-centred) but still loses gradient with depth. Sigmoid
stays the right choice for a binary output and for gates (LSTM, squeeze-excitation, attention
gates), so those are never flagged.
"""

from __future__ import annotations

from act_diagnostics.core.sites import Site
from act_diagnostics.rules.base import Range, Rule, RuleContext
from act_diagnostics.rules.finding import Finding

# Layers in the stack (hidden activations + 1) from which a hidden sigmoid is a warning:
# rules.md, "in a stack >= 3 deep" (Glorot & Bengio 2010).
SIGMOID_MIN_DEPTH = 3
# tanh is zero-centred and trains well in shallow nets (Karpathy, makemore part 3): warn only in
# deeper stacks (proposal); shallower nets get an info finding at most.
TANH_MIN_DEPTH = 5

# LogSigmoid is -softplus(-x): linear on one side, flat on the other, like softplus (not flagged
# statically); its flat side is measured by the saturation rule.
ONE_SIDED_KINDS = ("logsigmoid",)

FIX = (
    "Use ReLU, GELU or SiLU (with Kaiming init) between layers; keep sigmoid for binary outputs "
    "and gates, and prefer logits + BCEWithLogitsLoss at the output."
)


class SaturatingHiddenActivation(Rule):
    id = "saturating-hidden-activation"
    per_site = False
    defaults = {"sigmoid_min_depth": SIGMOID_MIN_DEPTH, "tanh_min_depth": TANH_MIN_DEPTH}
    ranges = {"sigmoid_min_depth": Range(2.0, integer=True), "tanh_min_depth": Range(2.0, integer=True)}
    primary = None

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        ordered = ctx.snapshot.ordered()
        # A hidden activation here: its output feeds a parametrised layer, it is no gate, no head.
        hidden = [s for s, _ in ordered if s.feeds_layer and not s.is_gate and not s.is_output and s.family != "softmax"]
        saturating = {s.name for s in hidden if s.kind not in ONE_SIDED_KINDS}
        # Depth counts call positions: a shared encoder applied twice (Siamese nets, a GAN's
        # discriminator on real and fake) or a cell unrolled over time is not a deeper stack, but
        # one activation module shared by the layers of a stack is as deep as its layers.
        positions: dict[tuple[str, str | None], Site] = {}
        for s in hidden:
            positions.setdefault(s.depth_position, s)
        hidden = list(positions.values())
        depth = len(hidden) + 1
        out: list[Finding] = []
        for family, limit in (("sigmoid", "sigmoid_min_depth"), ("tanh", "tanh_min_depth")):
            sites = [s for s in hidden if s.family == family and s.name in saturating]
            if not sites:
                continue
            severity = "warning" if depth >= self.t[limit] else "info"
            names = ", ".join(s.name for s in sites)
            kinds = sorted({s.kind for s in sites})
            # Name what the model uses: softsign is of the tanh family, not tanh.
            label = family if kinds == [family] else f"{'/'.join(kinds)} (the {family} family)"
            msg = (
                f"{label} is used in {len(sites)} hidden layer(s) of a {depth}-layer stack ({names}); "
                f"{family if kinds == [family] else 'the ' + family + ' family'} saturates and shrinks gradients with depth"
            )
            out.append(self.finding(ctx, sites[0].name, severity, msg, FIX, family=family, sites=len(sites), depth=depth))
        return out

    def topic(self, finding: Finding) -> str:
        # Sigmoid and tanh layers of one model are two findings, each reported once.
        return f"*{finding.evidence.get('family', '')}"
