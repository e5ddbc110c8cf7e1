"""output-logit-divergence: log Z of the logits that reach a classification loss drifts far from 0.

Reads ``Snapshot.log_z`` (core/logits.py): per ``F.cross_entropy`` call position, the mean, max and
min over the window of log Z = logsumexp over the classes of each logit row. Cross-entropy does not
change when every logit of a row moves by the same amount, so nothing in the loss holds log Z in
place; Wortsman et al. (ICLR 2024, "Small-scale proxies for large-scale Transformer training
instabilities") show it drifting far from 0 in unstable runs (output logit divergence) and fix it
with PaLM's z-loss (Chowdhery et al. 2022: 1e-4 * (log Z)^2 added to the loss), which holds it near 0.
Log Z grows two ways: every logit of a row moving together (a shift the loss cannot see), or the
top logit of each row climbing as the loss drives the margins up once the data are fit (a separable
classifier, a sequence whose next token is certain: cross-entropy has no finite minimiser there and
Adam keeps stepping until its gradients fall under eps). Measured, every run this rule flags (the
tests' LM, GPT-2 and Llama on certain bytes, a 4-class ReLU classifier on separable blobs) grows
the second way, with the mean logit of a row within 2 of 0; both put the top logit far from 0, which
z-loss corrects with the shift the loss leaves free, so the rule judges log Z and its message does
not claim either way.
A softmax over C classes with logits near 0 (a usual initialisation) has log Z = ln C: 10.8 for a
50k vocabulary, 12.5 for 256k, so the thresholds leave room for that. They are proposals from
bfloat16 arithmetic: with 8 significant bits, logits of magnitude 16-32 are spaced 0.125 apart (a
rounding of up to 6% in each probability), 32-64 0.25 apart (13%): far from 0 the softmax is
computed from coarsely rounded logits, and the drift feeds on itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from act_diagnostics.rules.base import POSITIVE, Rule, RuleContext, finite
from act_diagnostics.rules.finding import Finding, Severity

# |mean log Z| at or above this warns (proposal: bfloat16 spacing 0.125 between 16 and 32, above
# ln C of any practical vocabulary).
WARN_DRIFT = 20.0
# |mean log Z| at or above this is an error (proposal: bfloat16 spacing 0.25-0.5 past 32, 64).
ERROR_DRIFT = 50.0

FIX = (
    "Add a z-loss to the training loss (PaLM, Chowdhery et al. 2022: about 1e-4 * logsumexp(logits)**2 averaged "
    "over tokens; Wortsman et al. 2023) and lower the learning rate; without weight decay on the output layer, add it."
)


def bfloat16_spacing(magnitude: float) -> float:
    """The gap between neighbouring bfloat16 numbers of this magnitude (8 significant bits: 2^(e-7)
    for magnitudes in [2^e, 2^(e+1)))."""
    return 2.0 ** (math.floor(math.log2(magnitude)) - 7) if magnitude > 0 else 0.0

class OutputLogitDivergence(Rule):
    id = "output-logit-divergence"
    defaults = {"warn_drift": WARN_DRIFT, "error_drift": ERROR_DRIFT}
    ranges = {"warn_drift": POSITIVE, "error_drift": POSITIVE}
    windows = 2
    primary = "drift"

    def __init__(self, thresholds: Mapping[str, float] | None = None) -> None:
        super().__init__(thresholds)
        self._seen: set[str] = set()  # loss call positions measured so far

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        out: list[Finding] = []
        log_z = getattr(ctx.snapshot, "log_z", {}) or {}
        for call in self._seen - set(log_z):
            ctx.hold(f"loss:{call}")  # a window the tracer did not run in: no log Z to judge
        for call, z in log_z.items():
            self._seen.add(call)
            site = f"loss:{call}"
            if not finite(z.mean):
                ctx.hold(site)  # non-finite logits: the non-finite rule's finding
                continue
            drift = abs(z.mean)
            if drift < self.t["warn_drift"]:
                continue
            severity: Severity = "error" if drift >= self.t["error_drift"] else "warning"
            direction = "above" if z.mean > 0 else "below"
            msg = (
                f"log Z (logsumexp of the logits reaching {call.split('#')[0]}) averaged {z.mean:.3g} over {z.rows} rows, "
                f"{drift:.3g} {direction} 0 (range {z.min:.3g} to {z.max:.3g}): the logits sit far from the log-probabilities "
                "they stand for (log p = logit - log Z) and nothing in the loss holds them near 0, since adding a constant to "
                f"a row leaves cross-entropy unchanged; in bfloat16, logits this large are {bfloat16_spacing(drift):.3g} apart, "
                "and in large runs this drift ends in divergence"
            )
            evidence: dict[str, Any] = dict(
                drift=round(drift, 3), log_z_mean=round(z.mean, 3), log_z_max=round(z.max, 3), log_z_min=round(z.min, 3), rows=z.rows
            )
            out.append(self.finding(ctx, site, severity, msg, FIX, **evidence))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"seen": sorted(self._seen)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._seen = set(state.get("seen", []) or [])
