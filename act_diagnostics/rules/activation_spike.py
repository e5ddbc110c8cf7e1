"""activation-spike: a site's activation RMS or gradient RMS jumps far above its own recent history.

A robust score per site and quantity over a rolling window of its log-step values, in the spirit of
OLMo-core's loss and gradient-norm spike detection (a value more than 6 standard deviations above
the mean of the last 128 steps): here the median and the median absolute deviation (MAD, scaled by
1.4826 to estimate a standard deviation under a normal distribution) of the last ``history`` log-step
values, so one earlier spike does not mask the next. Activation spikes usually precede loss spikes
(Wortsman et al. 2023; Takase et al., "Spike No More"); the earliest site in forward order that
spiked is where it starts, and the finding names it.

Only the signal path is judged: not gates (their output multiplies another tensor: a GLU's or a
shared expert's sigmoid gate), not softmaxes (probabilities: attention, outputs, a mixture-of-experts
router) and not the sigmoid of a router (the site a ``topk`` reads, see core/routers.py). Their
gradients are small and swing legitimately while the routing and gating learn (a healthy Mixtral's
router softmax moves its gradient RMS ~2e-5 by 3.8x in early training); a real spike shows on the
signal path they modulate.

On a spike the rule asks for detail (``ctx.request_detail``; the engine's ``requests.detail`` lists
the sites), so the training loop makes its next log step a detail step (histograms of every site,
the spiked ones included).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from act_diagnostics.core.sites import Site
from act_diagnostics.rules.base import FACTOR, POSITIVE, Range, Rule, RuleContext, finite
from act_diagnostics.rules.finding import Finding

# Score above which a value is a spike: OLMo-core's 6 sigma (loss and grad-norm spike score).
SCORE = 6.0
# The value must also be this many times the window's median (proposal: a spike is a jump by a
# factor; a steady series has a tiny MAD, and a few percent would otherwise score high).
MIN_RATIO = 2.0
# Log-step values kept per site and quantity (proposal: OLMo-core keeps 128 steps; log steps are
# sparser, so 32 of them cover a longer stretch of training at intervals of 10-50).
HISTORY = 32
# Values needed before judging (proposal: a median and MAD over fewer are too noisy).
MIN_HISTORY = 8
# The MAD is floored at this share of the median (a constant history would make any change infinite).
MAD_FLOOR = 0.01
_MAD_TO_SIGMA = 1.4826

# Activation families a mixture-of-experts router applies before its top-k (core/routers.py).
ROUTER_FAMILIES = ("softmax", "sigmoid")

QUANTITIES = (("rms", "activation RMS"), ("grad_rms", "gradient RMS"))

FIX = (
    "Lower the learning rate or lengthen the warm-up, clip gradients (torch.nn.utils.clip_grad_norm_, "
    "Trainer(gradient_clip_val=1.0)), and look first at the site where the spike starts and the layer feeding it "
    "(its histograms are captured at the next log step); check the batch of that step for outliers."
)


def spike_score(history: np.ndarray | list[float], value: float) -> tuple[float, float]:
    """(robust score, ratio to the median) of ``value`` against ``history``."""
    h = np.asarray(history, dtype=np.float64)
    median = float(np.median(h))
    mad = float(np.median(np.abs(h - median))) * _MAD_TO_SIGMA
    scale = max(mad, MAD_FLOOR * abs(median), 1e-30)
    ratio = value / median if median > 0 else float("inf")
    return (value - median) / scale, ratio


class ActivationSpike(Rule):
    id = "activation-spike"
    defaults = {"score": SCORE, "min_ratio": MIN_RATIO, "history": HISTORY, "min_history": MIN_HISTORY}
    ranges = {"score": POSITIVE, "min_ratio": FACTOR, "history": Range(2.0, integer=True), "min_history": Range(2.0, integer=True)}
    windows = 1  # a spike is an event: one window
    primary = "score"
    in_preflight = False

    def __init__(self, thresholds: Mapping[str, float] | None = None) -> None:
        super().__init__(thresholds)
        self._history: dict[str, deque[float]] = {}  # "<site>|<quantity>" -> recent values
        self._router_owners: set[str] = set()  # modules seen routing with a top-k (snapshot.routers)

    def on_signal_path(self, site: Site) -> bool:
        """Judged: not attention, a gate, a softmax, or a router's sigmoid (see module docstring)."""
        if site.source == "attention" or site.is_gate or site.family == "softmax":
            return False
        return not (site.family in ROUTER_FAMILIES and site.owner in self._router_owners)

    def _series(self, key: str) -> deque[float]:
        series = self._history.get(key)
        if series is None:
            series = self._history[key] = deque(maxlen=max(1, int(self.t["history"])))
        return series

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        spiked: list[tuple[str, str, float, float, float]] = []  # site, quantity, value, score, ratio
        # "<owner>:router" or "<owner>:router#k"; routers are measured on the steps the tracer runs.
        self._router_owners.update(key.rpartition(":")[0] for key in getattr(ctx.snapshot, "routers", {}) or {})
        for site, stats in ctx.snapshot.ordered():
            if not stats.calls or not self.on_signal_path(site):
                continue
            for quantity, _ in QUANTITIES:
                value = getattr(stats, quantity)
                if not finite(value):
                    continue
                series = self._series(f"{site.name}|{quantity}")
                if len(series) >= self.t["min_history"]:
                    score, ratio = spike_score(list(series), value)
                    if score >= self.t["score"] and ratio >= self.t["min_ratio"]:
                        spiked.append((site.name, quantity, float(value), score, ratio))
                series.append(float(value))
        if not spiked:
            return []
        first_site = spiked[0][0]  # ordered(): forward order, input side first
        sites = list(dict.fromkeys(s for s, *_ in spiked))
        for name in sites:
            ctx.request_detail(name)
        first = max((s for s in spiked if s[0] == first_site), key=lambda s: s[3])
        _, quantity, value, score, ratio = first
        label = dict(QUANTITIES)[quantity]
        more = ", ..." if len(sites) > 4 else ""
        others = f"; {len(sites) - 1} later site(s) spiked too ({', '.join(sites[1:4])}{more})" if len(sites) > 1 else ""
        msg = (
            f"the {label} jumped to {value:.3g}, {ratio:.3g}x its median over the last log steps ({score:.3g} robust "
            f"standard deviations above it): the spike starts here, the earliest site in forward order{others}. "
            "Histograms of these sites are captured at the next log step"
        )
        evidence: dict[str, Any] = dict(
            quantity=quantity, value=round(value, 6), ratio=round(ratio, 3), score=round(score, 2), spiked_sites=len(sites)
        )
        return [self.finding(ctx, first_site, "warning", msg, FIX, **evidence)]

    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self._history.items()}, "router_owners": sorted(self._router_owners)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._history = {}
        self._router_owners = {str(o) for o in state.get("router_owners", ()) or ()}
        for key, values in (state.get("history", {}) or {}).items():
            self._series(str(key)).extend(float(v) for v in values)
