"""activation-loss-mismatch: an output activation that the loss function applies again.

PyTorch's losses expect raw logits (cross_entropy, binary_cross_entropy_with_logits) or
log-probabilities (nll_loss); the tracer records which activation fed which loss (Site.losses),
and what was applied on the way (core/following.py): ``"nll_loss(log)"`` after a log,
``"cross_entropy(clamp)"`` after a clamp or an epsilon, which keeps probabilities probabilities.
Hand-written losses are recognised by what they compute (``handwritten_cross_entropy``,
``handwritten_bce``, ...). A loss reached through a scaling (``"(scale)"``) is not judged: its
input's range is unknown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from act_diagnostics.core.following import HANDWRITTEN_BCE, HANDWRITTEN_CE, LOG, SCALE, loss_parts
from act_diagnostics.core.sites import Site
from act_diagnostics.rules.base import Rule, RuleContext
from act_diagnostics.rules.finding import Finding, Severity

# Severity of each (activation kind, loss) pair; the advice is in _ADVICE. Sources: PyTorch docs
# (CrossEntropyLoss expects unnormalised logits; NLLLoss expects log-probabilities;
# BCEWithLogitsLoss applies the sigmoid itself) and Keras' from_logits warning.
_PAIRS: dict[tuple[str, str], Severity] = {
    ("softmax", "cross_entropy"): "error",
    ("softmax", "nll_loss"): "error",
    ("softmax", "binary_cross_entropy_with_logits"): "error",
    ("softmax", "nll_loss(log)"): "info",
    ("sigmoid", "binary_cross_entropy_with_logits"): "error",
    # F.kl_div(input, target) reads its input as log-probabilities.
    ("softmax", "kl_div"): "error",
    ("softmax", "kl_div(log)"): "info",
    # Classes that compete (rows sum to 1) judged as independent yes/no labels: multi-label targets
    # need a sigmoid per class. Only when the loss reads its classes, not one (Site.partial_losses).
    ("softmax", "binary_cross_entropy"): "warning",
    ("softmax", HANDWRITTEN_BCE): "warning",
    # Sound, only less stable than the fused loss: info, never a warning.
    ("sigmoid", "binary_cross_entropy"): "info",
    # log of log-probabilities (all <= 0) is NaN.
    ("log_softmax", HANDWRITTEN_CE): "error",
    ("log_softmax", HANDWRITTEN_BCE): "error",
    ("log_softmax", "nll_loss(log)"): "error",
}
_ADVICE = {
    "cross_entropy": "remove the softmax and pass the logits: F.cross_entropy applies log_softmax itself",
    "nll_loss": "nll_loss expects log-probabilities: use log_softmax, or drop the softmax and use F.cross_entropy on the logits",
    "binary_cross_entropy_with_logits": "remove the activation and pass the logits: BCEWithLogitsLoss applies the sigmoid itself",
    "nll_loss(log)": "softmax followed by log is correct but loses precision: use log_softmax, or F.cross_entropy on the logits",
    "binary_cross_entropy": "sigmoid + BCELoss is correct but less stable: output logits and use BCEWithLogitsLoss",
    "kl_div": "F.kl_div expects log-probabilities as its input (and probabilities as its target): use log_softmax",
    "kl_div(log)": "softmax followed by log is correct but loses precision: use log_softmax",
    HANDWRITTEN_CE: "log_softmax already outputs log-probabilities: use -(y * log_probs).sum(1).mean(), or F.nll_loss / F.cross_entropy",
    HANDWRITTEN_BCE: "log_softmax already outputs log-probabilities: drop it and pass logits to BCEWithLogitsLoss",
}
# Advice for a log_softmax whose output gets another log, whatever the loss.
_LOG_OF_LOG_ADVICE = "log_softmax already outputs log-probabilities: drop the extra log and pass them to F.nll_loss"
_STEP_WORDS = {"clamp": "a clamp", "normalised": "a normalisation", "complement": "1 - p", "log": "a log"}


def effective_loss(loss: str) -> str | None:
    """The key a Site.losses entry is judged by: the loss, plus ``"(log)"`` when a log was applied
    on the way; clamps and normalisation keep probabilities probabilities and do not count. None
    when the value was scaled on the way (its range is unknown)."""
    name, steps = loss_parts(loss)
    if SCALE in steps:
        return None
    return name + ("(log)" if LOG in steps and not name.startswith("handwritten_") else "")


def _advice(kind: str, loss: str) -> str:
    if kind == "log_softmax":
        return _LOG_OF_LOG_ADVICE if loss == "nll_loss(log)" else _ADVICE[loss]
    return _ADVICE[loss]


def describe(loss: str) -> str:
    """``"nll_loss(clamp,log)"`` -> ``"nll_loss after a clamp and a log"``."""
    name, steps = loss_parts(loss)
    words = [_STEP_WORDS.get(s, s) for s in steps]
    name = name.replace("handwritten_", "a hand-written ").replace("_", " ") if name.startswith("handwritten_") else name
    return name + (f" after {' and '.join(words)}" if words else "")
# softmax into BCELoss, whatever _ADVICE says of sigmoid into it.
_SOFTMAX_BCE_ADVICE = (
    "for multi-label targets (several classes true at once) output one logit per class and use "
    "BCEWithLogitsLoss (a sigmoid per class); for one class per sample use F.cross_entropy on the logits"
)
# A (log-)softmax normalised over another dim than the classes the loss reads (the batch, a
# sequence) is an error whatever the pair: the model cannot learn the classes.
_WRONG_DIM_ADVICE = (
    "normalise over the classes (dim=1 for (N, C, ...) logits, dim=-1 for (N, C)), or drop the softmax and "
    "pass the logits to F.cross_entropy"
)


def softmax_ce_floor(classes: int) -> float:
    """Lowest cross-entropy reachable when the logits are probabilities in [0, 1]: ln(1 + (C-1)/e)."""
    return math.log1p((classes - 1) / math.e)


def _classes(site: Site, loss: str) -> tuple[int, int | None]:
    """(number of classes, their dim in the site's output) of the prediction a class loss reads:
    cross_entropy and nll_loss take (N, C, ...) or (C,); a hand-written cross-entropy picks them on
    the dim recorded by the core (``Site.loss_class_dims``). The dim is None for other losses, and
    when the loss got a reshaped output ((N, L, C) viewed as (N * L, C)) or one with its dims
    reordered ((N, L, C) transposed to (N, C, L), the same shape when L == C): then only the loss's
    input says where the classes are, and it is not the site's dim."""
    if loss in site.loss_class_dims:  # a hand-written cross-entropy: the dim it picked classes on
        dim = site.loss_class_dims[loss]
        return (int(site.shape[dim]) if dim < len(site.shape) else site.n_units), dim
    if not loss.startswith(("cross_entropy", "nll_loss")):
        return site.n_units, None
    shape = list(site.loss_input_shapes.get(loss) or site.shape)
    if not shape:
        return site.n_units, None
    class_dim = 1 if len(shape) >= 2 else 0
    same_layout = shape == list(site.shape) and loss not in site.reordered_losses
    return int(shape[class_dim]), class_dim if same_layout else None


class ActivationLossMismatch(Rule):
    id = "activation-loss-mismatch"
    defaults = {}

    def __init__(self, thresholds: Mapping[str, float] | None = None) -> None:
        super().__init__(thresholds)
        # Per site, the share of dense target rows not summing to 1, as last measured: the targets
        # are read in the first steps only, and later windows still judge against them.
        self._rows_off: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"rows_off": dict(self._rows_off)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._rows_off = {str(k): float(v) for k, v in (state.get("rows_off") or {}).items()}

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        out: list[Finding] = []
        for site, stats in ctx.snapshot.ordered():
            if stats.target_rows_off is not None:
                self._rows_off[site.name] = stats.target_rows_off
            kind = site.kind if site.kind in ("softmax", "sigmoid", "log_softmax") else ("softmax" if site.kind == "softmin" else None)
            if kind is None:
                continue
            for entry in site.losses:
                loss = effective_loss(entry)
                if loss is None:
                    continue
                classes, class_dim = _classes(site, entry)
                wrong_dim = kind != "sigmoid" and class_dim is not None and site.unit_dim != class_dim
                severity: Severity | None = "error" if wrong_dim else _PAIRS.get((kind, loss))
                if severity is None:  # log_softmax into nll_loss over the classes: the right pairing
                    continue
                softmax_bce = kind == "softmax" and loss in ("binary_cross_entropy", HANDWRITTEN_BCE)
                if softmax_bce and (site.n_units < 2 or entry in site.partial_losses):
                    continue  # one class's probability (probs[:, 1]) is a sound BCE input
                if softmax_bce and self._rows_off.get(site.name) == 0.0:
                    severity = "info"  # one-hot targets (every row sums to 1): a softmax can fit them
                evidence: dict[str, float] = {"classes": classes}
                msg = f"{site.kind} output feeds {describe(entry)}"
                advice = _WRONG_DIM_ADVICE if wrong_dim else _SOFTMAX_BCE_ADVICE if softmax_bce else _advice(kind, loss)
                if wrong_dim:
                    # Softmax over another dim (the batch, a sequence): no class-count floor applies.
                    evidence["softmax_dim"] = site.unit_dim
                    msg += (
                        f": {site.kind} runs over dim {site.unit_dim} (size {site.n_units}), not over the {classes} "
                        f"classes on dim {class_dim}, which the loss reads"
                    )
                elif (kind, loss) == ("softmax", "cross_entropy") and classes > 1:
                    floor = softmax_ce_floor(classes)
                    evidence["loss_floor"] = round(floor, 4)
                    msg += f": softmax is applied twice and the loss cannot fall below {floor:.3f} for {classes} classes"
                elif (kind, loss) == ("sigmoid", "binary_cross_entropy_with_logits"):
                    msg += ": sigmoid is applied twice, squeezing predictions into [0.5, 0.73]"
                elif (kind, loss) == ("softmax", "nll_loss"):
                    msg += ": nll_loss reads its input as log-probabilities, so the loss is -p and cannot train properly"
                elif (kind, loss) == ("softmax", "kl_div"):
                    msg += ": kl_div reads its input as log-probabilities, so the loss is not the divergence and can go negative"
                elif kind == "log_softmax":
                    msg += ": its outputs are log-probabilities (<= 0), and the log of a negative number is NaN"
                elif softmax_bce and severity == "info":
                    evidence["target_rows_off"] = 0.0
                    msg += (
                        ": the targets are one class per sample (every row sums to 1), which a softmax can fit; "
                        "cross_entropy on the logits is the usual and more stable pairing"
                    )
                    advice = _ADVICE["cross_entropy"]
                elif softmax_bce:
                    msg += (
                        f": BCE judges each of the {site.n_units} outputs as an independent yes/no, but softmax makes "
                        "them compete (each row sums to 1), so no two can be near 1 together"
                    )
                out.append(self.finding(ctx, site.name, severity, msg, advice, **evidence))
        return out
