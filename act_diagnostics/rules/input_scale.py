"""input-scale: the model's input far from unit scale where it enters the first layer.

Raw features in the thousands (prices, years, pixel values 0-255) multiply the first layer's
weights, which are initialised for inputs of unit scale (Glorot & Bengio 2010; He et al. 2015):
pre-activations come out hundreds of times too large, sigmoid and tanh units saturate at once,
ReLU activations and their gradients blow up, and the learning rate that suits the other layers
is far too large for the first (LeCun et al., Efficient BackProp, 1998: "the inputs should be
normalised", zero mean and unit variance). UMLAUT (CHI 2021) flags inputs outside [-1, 1]; this
rule is laxer, since standardised features have an RMS of 1 and a few units of max |x|.

The core measures the input of the first parametrised layer the forward feeds floating values
(sum, sum of squares and max |x| on the device, on structure and detail steps:
``Snapshot.network``); after an Embedding (raw numeric columns concatenated to embedded
categories) the threshold is EMBEDDED_RMS. A first layer that normalises its input itself
(BatchNorm, LayerNorm, ...) is not judged. The finding names the
symptoms it explains (saturation, exploding activations) at the first sites, when they show.
"""

from __future__ import annotations

import math

from act_diagnostics.rules.base import COUNT, POSITIVE, Rule, RuleContext, finite, pct
from act_diagnostics.rules.finding import Finding

# RMS of the input above which it is far from unit scale (proposal: 10x a standardised input's 1).
LARGE_RMS = 10.0
# The same after an Embedding, whose vectors are often scaled by sqrt(d_model) on purpose (Vaswani
# et al. 2017: RMS 23 for d = 512, 32 for 1024): raw columns concatenated to them are judged above
# this (proposal).
EMBEDDED_RMS = 100.0
# Max |x| below which every input value is tiny (proposal: 100x below unit scale).
SMALL_MAX_ABS = 0.01
# Input elements measured in the window before judging.
MIN_ELEMENTS = 64
# First layers that standardise their input themselves: any "...Norm..." layer (BatchNorm1d,
# LayerNorm, GroupNorm, InstanceNorm2d, RMSNorm, and libraries' own: LlamaRMSNorm, T5LayerNorm).
NORMALISING = "Norm"
# Symptoms looked for at the first sites: sigmoid/tanh saturation share, and max |activation|.
SATURATED_SHARE = 0.5
LARGE_ACTIVATION = 100.0

FIX = (
    "Standardise the features before the model: subtract each feature's mean and divide by its std, "
    "computed on the training set (sklearn's StandardScaler, or (x - mean) / std in the Dataset); scale "
    "images to [0, 1] (divide by 255) and normalise per channel."
)


class InputScale(Rule):
    id = "input-scale"
    defaults = {"large_rms": LARGE_RMS, "embedded_rms": EMBEDDED_RMS, "small_max_abs": SMALL_MAX_ABS, "min_elements": MIN_ELEMENTS}
    ranges = {"large_rms": POSITIVE, "embedded_rms": POSITIVE, "small_max_abs": POSITIVE, "min_elements": COUNT}
    # The data pipeline's scale, not a state training moves through; and windows without input
    # measured (no detail step) say nothing: a finding stays open.
    resolvable = False

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        net = ctx.snapshot.network
        if net.first_layer is None or net.input_elements < self.t["min_elements"]:
            return []
        if net.first_layer_type is not None and NORMALISING in net.first_layer_type:
            return []
        rms, max_abs = net.input_rms, net.input_max_abs
        if not finite(rms) or not finite(max_abs):
            return []  # NaN/Inf inputs: non-finite says it
        limit = self.t["embedded_rms"] if net.after_embedding else self.t["large_rms"]
        large = rms > limit
        small = max_abs < self.t["small_max_abs"] and max_abs > 0
        if not (large or small):
            return []
        stats = f"mean {net.input_mean:.3g}, std {net.input_std:.3g}, max |x| {max_abs:.3g}"
        where = f"the input of '{net.first_layer}' ({net.first_layer_type}), the first layer"
        if large:
            msg = f"{where}, is far from unit scale ({stats}; RMS {rms:.3g}, over {limit:g})"
        else:
            msg = f"{where}, is far below unit scale ({stats}): every value is under {self.t['small_max_abs']:g}"
        symptoms = self._symptoms(ctx) if large else []
        if symptoms:
            msg += f". It explains {' and '.join(symptoms)} (saturation, exploding-activations findings)"
        elif large:
            msg += (
                ". Inputs this large saturate sigmoid/tanh units and blow up activations and gradients"
                " (saturation, exploding-activations)"
            )
        evidence = dict(input_rms=round(rms, 4), input_max_abs=max_abs, input_mean=net.input_mean, input_std=net.input_std)
        return [self.finding(ctx, net.first_layer, "warning", msg, FIX, **evidence)]

    def _symptoms(self, ctx: RuleContext) -> list[str]:
        """What the first two sites show that a large input explains."""
        out = []
        for site, st in ctx.snapshot.ordered()[:2]:
            if site.family in ("sigmoid", "tanh") and st.saturation is not None and st.saturation > SATURATED_SHARE:
                out.append(f"the saturation at '{site.name}' ({pct(st.saturation)} of its outputs)")
            elif st.max_abs is not None and math.isfinite(st.max_abs) and st.max_abs > LARGE_ACTIVATION:
                out.append(f"the activations up to {st.max_abs:.3g} at '{site.name}'")
        return out
