"""dead-experts: experts of a mixture-of-experts layer that receive almost no tokens from the router.

Reads ``Snapshot.routers`` (core/routers.py): per router (a ``topk`` over a softmax or sigmoid
site's output), each expert's share of the token assignments and the load imbalance (largest share
over the uniform share 1/E). Without an auxiliary load-balancing loss a router tends to collapse onto
a few experts, which then get all the gradient while the others stop learning (Switch Transformer,
Fedus et al. 2021; ST-MoE, Zoph et al. 2022; Shazeer et al. 2017). Assignments are pooled over
windows until every expert could expect ``min_assignments`` of them under a uniform router, so a
share is never judged on a handful of tokens. The thresholds are proposals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from act_diagnostics.rules.base import COUNT, FRACTION, Rule, RuleContext, pct
from act_diagnostics.rules.finding import Finding, Severity

# An expert is dead when its share of the assignments is below this fraction of the uniform share
# 1/E (proposal: "almost no tokens": a tenth of its fair load; NeMo's dead-expert fraction counts
# experts with no token at all, which a sampled window cannot tell from a rare one).
DEAD_SHARE = 0.1
# Error when at least this share of the experts is dead (proposal: half the layer's capacity idle).
ERROR_EXPERTS = 0.5
# Assignments each expert would get under a uniform router before judging (proposal: a share of
# 1/(10 E) is then 10 expected assignments against 100, far outside Poisson noise).
MIN_ASSIGNMENTS = 100

FIX = (
    "Add an auxiliary load-balancing loss (Switch Transformer, Fedus et al. 2021; Hugging Face: "
    "output_router_logits=True with router_aux_loss_coef about 0.01), a router z-loss (ST-MoE, Zoph et al. 2022, "
    "about 1e-3), router jitter noise on its inputs, or set an expert capacity factor so overloaded experts drop "
    "tokens to the others; a lower router learning rate also slows the collapse."
)


class DeadExperts(Rule):
    id = "dead-experts"
    defaults = {"dead_share": DEAD_SHARE, "error_experts": ERROR_EXPERTS, "min_assignments": MIN_ASSIGNMENTS}
    ranges = {"dead_share": FRACTION, "error_experts": FRACTION, "min_assignments": COUNT}
    windows = 2
    primary = "dead"

    def __init__(self, thresholds: Mapping[str, float] | None = None) -> None:
        super().__init__(thresholds)
        self._pool: dict[str, tuple[np.ndarray, float]] = {}  # router -> (assignments per expert, tokens)
        self._seen: set[str] = set()

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        out: list[Finding] = []
        routers = getattr(ctx.snapshot, "routers", {}) or {}
        for name in self._seen - set(routers):
            ctx.hold(name)  # no routed token measured in this window
        loads: set[tuple[int, tuple[float, ...]]] = set()
        for name, r in routers.items():
            self._seen.add(name)
            load = (r.tokens, tuple(r.shares))
            if load in loads:  # the same routing recomputed (an auxiliary loss's own softmax and top-k)
                continue
            loads.add(load)
            counts = np.asarray(r.shares, dtype=np.float64) * r.top_k * r.tokens
            if not np.all(np.isfinite(counts)):
                ctx.hold(name)
                continue
            pooled, tokens = self._pool.get(name, (np.zeros_like(counts), 0.0))
            if pooled.shape != counts.shape:
                pooled, tokens = np.zeros_like(counts), 0.0
            pooled, tokens = pooled + counts, tokens + r.tokens
            experts = counts.size
            if ctx.preflight or pooled.sum() < self.t["min_assignments"] * experts:
                self._pool[name] = (pooled, tokens)
                ctx.hold(name)
                continue
            self._pool.pop(name, None)
            shares = pooled / pooled.sum()
            dead = [e for e in range(experts) if shares[e] < self.t["dead_share"] / experts]
            if not dead:
                continue
            imbalance = float(shares.max() * experts)
            severity: Severity = "error" if len(dead) >= self.t["error_experts"] * experts else "warning"
            busiest = int(shares.argmax())
            msg = (
                f"{len(dead)} of {experts} experts receive almost no tokens (expert(s) {', '.join(map(str, dead[:8]))}"
                f"{', ...' if len(dead) > 8 else ''}: under {pct(self.t['dead_share'] / experts)} of the assignments each) "
                f"while expert {busiest} takes {pct(float(shares[busiest]))}; load imbalance {imbalance:.3g}x the uniform "
                f"share, over {int(tokens)} tokens: the router has collapsed, and the idle experts stop learning"
            )
            evidence: dict[str, Any] = dict(
                dead=len(dead), experts=experts, dead_experts=" ".join(map(str, dead)), imbalance=round(imbalance, 3),
                shares=" ".join(f"{s:.3f}" for s in shares), tokens=int(tokens), top_k=round(r.top_k, 3),
            )
            out.append(self.finding(ctx, name, severity, msg, FIX, **evidence))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"pool": {k: [v.tolist(), t] for k, (v, t) in self._pool.items()}, "seen": sorted(self._seen)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._pool = {str(k): (np.asarray(v, dtype=np.float64), float(t)) for k, (v, t) in (state.get("pool", {}) or {}).items()}
        self._seen = set(state.get("seen", []) or [])
