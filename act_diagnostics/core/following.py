"""Following an activation's output through ordinary ops to whatever consumes it.

Users rarely hand an output activation straight to a loss: they clamp probabilities
(``p.clamp(1e-7, 1 - 1e-7)``), add an epsilon before ``log``, divide by the row sum, take ``log``
then ``nll_loss``, or write the loss by hand (``-(y * p.log()).sum(1).mean()``, as Keras ports do).
While the monitor tracks structure, :class:`Following` follows each value an activation produced
through such ops and records what was applied on the way, as *steps*:

* ``"clamp"``: clamped, clipped or nudged by an epsilon (|c| <= NUDGE_MAX): probabilities stay
  probabilities.
* ``"normalised"``: divided by its own sum or norm over a dim (``x / x.sum(1, keepdim=True)``,
  ``F.normalize``).
* ``"complement"``: ``1 - p`` (or ``log1p(-p)``): a probability's complement.
* ``"log"``: ``log`` (log2, log10): probabilities become log-probabilities.
* ``"scale"``: anything that changes the range in a way the rules cannot read (a product with a
  number, a shift, a power, ``abs``, a negation inside the model).

A loss function's consumer is ``"loss:<fn>"`` plus ``"(<steps>)"`` when steps were applied
(``"loss:cross_entropy(clamp)"``, ``"loss:nll_loss(clamp,log)"``). A hand-written loss is
recognised by what it computes, when a sum or mean reduces it:

* ``handwritten_cross_entropy``: log-likelihood against targets, ``y * log p`` (or ``xlogy``), or
  of each row's class picked by its index, with ``gather`` (``-log(p.gather(1, y[:, None]))``) or
  by advanced indexing (``-log(p[range(n), y])``, ``torch.log(p)[torch.arange(n), y]``).
* ``handwritten_nll_loss``: the same without a log, on a log_softmax's log-probabilities
  (``-log_probs[range(n), y].mean()``, ``-(y * log_probs).sum(1).mean()``): F.nll_loss by hand.
* ``handwritten_bce``: both terms of the binary log-likelihood, ``y * log p + (1 - y) * log(1 - p)``,
  also chosen per element (``torch.where(y > 0.5, -log p, -log(1 - p))``).
* ``handwritten_mse`` / ``handwritten_l1``: the squared / absolute difference with targets.

Only while no module's forward runs (the loss is computed after the model returns) are ops that
combine an output with targets followed; inside the model only clamps, epsilons, normalisation,
logs and scalings are, so residual sums and gates keep their meaning. Nothing here syncs with the
device: the decisions read shapes, dtypes, Python numbers and autograd flags, never values.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from act_diagnostics.core.checks import real

# Steps that keep a value an activation's output in the model's structure (marked as produced:
# a layer reading it is the site's consumer, a model returning it makes the site an output).
CLAMP, NORMALISED, COMPLEMENT, LOG, SCALE = "clamp", "normalised", "complement", "log", "scale"
STRUCTURAL_STEPS = frozenset((CLAMP, NORMALISED, COMPLEMENT, LOG, SCALE))
# Steps that build a loss from the output (followed outside the model only).
NEGATE, TARGET, ERROR, SQUARE, ABS, REDUCED, BOTH_TERMS = "negate", "target", "error", "square", "abs", "reduced", "bce"
# Each row's target class picked out by class indices (p.gather(1, y[:, None])).
PICKED = "picked"
# Steps after which the output's values still lie in the activation's range.
RANGE_KEPT = frozenset((CLAMP, NORMALISED))
# An added constant this small is an epsilon guarding a log or a division (Keras: 1e-7), not a shift.
NUDGE_MAX = 1e-2

HANDWRITTEN_CE = "handwritten_cross_entropy"
HANDWRITTEN_BCE = "handwritten_bce"
HANDWRITTEN_MSE = "handwritten_mse"
HANDWRITTEN_L1 = "handwritten_l1"
HANDWRITTEN_NLL = "handwritten_nll_loss"
HANDWRITTEN_LOSSES = (HANDWRITTEN_CE, HANDWRITTEN_BCE, HANDWRITTEN_MSE, HANDWRITTEN_L1, HANDWRITTEN_NLL)
# Activations whose outputs are log-probabilities: a log-likelihood of them needs no log of its own.
LOG_PROBABILITY_KINDS = ("log_softmax",)
# A target row whose sum differs from 1 by more than this is not a distribution (multi-label rows
# sum to 0 or to 2 and more; label smoothing keeps the sum at 1).
ROW_SUM_TOLERANCE = 1e-3

_CLAMP = {
    torch.clamp, Tensor.clamp, torch.clip, Tensor.clip, Tensor.clamp_, Tensor.clip_, torch.clamp_min,
    torch.clamp_max, Tensor.clamp_min, Tensor.clamp_max, torch.nan_to_num, Tensor.nan_to_num,
}
_ADD = {torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__, Tensor.add_, Tensor.__iadd__}
_SUB = {torch.sub, torch.subtract, Tensor.sub, Tensor.subtract, Tensor.__sub__, Tensor.sub_, Tensor.__isub__}
_RSUB = {Tensor.__rsub__, torch.rsub}
_NEG = {torch.neg, torch.negative, Tensor.neg, Tensor.negative, Tensor.__neg__}
_DIV = {
    torch.div, torch.divide, torch.true_divide,
    Tensor.div, Tensor.divide, Tensor.true_divide, Tensor.__truediv__, Tensor.div_, Tensor.__itruediv__,
}
_POW = {torch.pow, Tensor.pow, Tensor.__pow__}
_SQUARE = {torch.square, Tensor.square}
_ABS = {torch.abs, torch.absolute, Tensor.abs, Tensor.absolute, Tensor.__abs__}
_LOG = {torch.log, Tensor.log, torch.log2, Tensor.log2, torch.log10, Tensor.log10}
_LOG1P = {torch.log1p, Tensor.log1p}
_XLOGY = {torch.xlogy, Tensor.xlogy, torch.special.xlogy}
_REDUCE = {torch.sum, Tensor.sum, torch.mean, Tensor.mean, torch.nansum, Tensor.nansum, torch.nanmean, Tensor.nanmean}
_NORM = {torch.norm, Tensor.norm, torch.linalg.vector_norm, torch.linalg.norm}
_NORMALIZE = {F.normalize}
_MULTIPLY = {torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__, Tensor.mul_, Tensor.__imul__}
_GATHER = {torch.gather, Tensor.gather, torch.take_along_dim, Tensor.take_along_dim}
_WHERE = {torch.where, Tensor.where}
# Every op handled here besides views and products (the tracer keeps those sets).
ELEMENTWISE = _CLAMP | _ADD | _SUB | _RSUB | _NEG | _DIV | _POW | _SQUARE | _ABS | _LOG | _LOG1P | _XLOGY | _GATHER | _WHERE
REDUCTIONS = _REDUCE | _NORM | _NORMALIZE
FOLLOWED = ELEMENTWISE | REDUCTIONS | _MULTIPLY


@dataclass(frozen=True)
class Flow:
    """A value derived from one site's output: the steps applied on the way, whether its dims were
    reordered, and (for a loss term) a weak reference to the targets it was compared with."""

    site: str
    steps: tuple[str, ...] = ()
    reordered: bool = False
    target: Any = None  # weakref.ref to the target tensor, or None
    # A picked term: the dim of the site's output its classes were picked on (None: unknown, or
    # read after a reshape or a reordering).
    class_dim: int | None = None

    @property
    def structural(self) -> bool:
        return all(s in STRUCTURAL_STEPS for s in self.steps)

    @property
    def via(self) -> str:
        """The steps as a consumer suffix: ``"clamp,log"`` ("" for none)."""
        return ",".join(self.steps)

    def then(self, step: str) -> Flow:
        """This flow with ``step`` applied: a repeated step counts once; a log of a log is a scale."""
        if self.steps and self.steps[-1] == step:
            return replace(self, steps=self.steps[:-1] + (SCALE,)) if step == LOG else self
        return replace(self, steps=self.steps + (step,))


def via_steps(via: str) -> tuple[str, ...]:
    """``"clamp,log"`` -> ("clamp", "log"); the inverse of :attr:`Flow.via`."""
    return tuple(s for s in via.split(",") if s) if via else ()


def loss_parts(loss: str) -> tuple[str, tuple[str, ...]]:
    """A Site.losses entry split into the loss's name and the steps on the way:
    ``"nll_loss(clamp,log)"`` -> ("nll_loss", ("clamp", "log"))."""
    name, _, rest = loss.partition("(")
    return name, via_steps(rest.rstrip(")"))


def term_kind(steps: tuple[str, ...]) -> str | None:
    """Which hand-written loss a term computes once reduced, from the steps that built it."""
    if BOTH_TERMS in steps:
        return HANDWRITTEN_BCE
    if PICKED in steps and LOG in steps:
        return HANDWRITTEN_CE
    if TARGET in steps and LOG in steps[: steps.index(TARGET)]:
        return HANDWRITTEN_BCE if COMPLEMENT in steps else HANDWRITTEN_CE
    if ERROR in steps:
        after = steps[steps.index(ERROR) :]
        if SQUARE in after:
            return HANDWRITTEN_MSE
        if ABS in after:
            return HANDWRITTEN_L1
    return None


def _is_own_total(numerator: tuple[str, ...], denominator: tuple[str, ...]) -> bool:
    """The denominator is a sum or norm of the numerator's values (an epsilon added to either is
    ignored): the division normalises."""
    num, den = (tuple(s for s in steps if s != CLAMP) for steps in (numerator, denominator))
    return den[-1:] == (REDUCED,) and den[:-1] == num


def _is_term(flow: Flow) -> bool:
    return any(s in flow.steps for s in (TARGET, ERROR, BOTH_TERMS, PICKED))


def _log_likelihood(flow: Flow | None) -> str | None:
    """"p" for log p, "1-p" for log(1 - p), of a flow that is no term yet (else None)."""
    if flow is None or _is_term(flow) or LOG not in flow.steps:
        return None
    return "1-p" if COMPLEMENT in flow.steps else "p"


def _is_target(value: Any) -> bool:
    """Targets: a tensor of several values without autograd history (labels, one-hot rows)."""
    return isinstance(value, Tensor) and value.numel() > 1 and not value.requires_grad and value.grad_fn is None


def _index_count(entry: Any) -> int | None:
    """How many positions an advanced index holds: a range, a list, or an integer tensor or array
    (numpy's, read by its dtype without importing numpy); None for anything else (a slice, a
    number, a mask, ``None``, ``...``)."""
    if isinstance(entry, (range, list)):
        return len(entry)
    if isinstance(entry, Tensor):
        return entry.numel() if not entry.is_floating_point() and not entry.is_complex() and entry.dtype != torch.bool else None
    kind = getattr(getattr(entry, "dtype", None), "kind", None)  # numpy: "i" / "u" integers
    array = kind in ("i", "u") and hasattr(entry, "__array__") and getattr(entry, "ndim", 0) >= 1  # no scalar
    return int(entry.size) if array else None


def picked_labels(value: Tensor, index: Any, result: Any) -> Any:
    """The class indices when ``value[index]`` picks each row's class by its label
    (``p[range(n), y]``, ``p[torch.arange(n), y]``, ``p[np.arange(n), y]``): every dim indexed by
    positions, the last one (the classes) by labels without autograd history, one entry per row of
    ``value``. None for any other indexing (``p[:, 0]``, ``p[mask]``, ``p[:, y]``, ``p[0]``)."""
    if not isinstance(index, tuple) or len(index) != value.dim() or value.dim() < 2 or not isinstance(result, Tensor):
        return None
    labels = index[-1]
    if isinstance(labels, (range, list)) or (isinstance(labels, Tensor) and labels.requires_grad):
        return None  # labels are data (a tensor or an array), not positions written in the code
    counts = [_index_count(entry) for entry in index]
    rows = value.numel() // value.shape[-1] if value.shape[-1] else 0
    if rows == 0 or any(c is None for c in counts) or result.numel() != rows or counts[-1] != rows:
        return None
    return labels


def target_class_dim(prediction: Tensor, target: Any, unit_dim: int, n_units: int, reordered: bool) -> int | None:
    """The dim of ``target`` that holds the site's classes, when ``target`` is dense (float, the
    prediction's shape) and its rows can be told: None for class indices or another shape."""
    if not isinstance(target, Tensor) or not target.is_floating_point() or target.shape != prediction.shape:
        return None
    if n_units < 2 or prediction.dim() < 2:  # rows of classes; one class per row (probs[:, 1]) is none
        return None
    if not reordered and prediction.dim() > unit_dim and prediction.shape[unit_dim] == n_units:
        return unit_dim
    return prediction.dim() - 1 if prediction.shape[-1] == n_units else None


class Following:
    """The values derived from activation outputs during one step (weakly held: no tensor outlives
    its step), and the rules for following them. ``mon`` is the monitor the tracer serves."""

    def __init__(self) -> None:
        self._flows: dict[int, tuple[weakref.ref, Flow]] = {}

    def clear(self) -> None:
        self._flows.clear()

    # ------------------------------------------------------------------ lookups
    def flow_of(self, mon: Any, value: Any) -> Flow | None:
        if not isinstance(value, Tensor):
            return None
        entry = self._flows.get(id(value))
        if entry is not None and entry[0]() is value:
            return entry[1]
        source = mon.produced_by(value)
        if source is None:
            return None
        return Flow(source[0], via_steps(source[1]), mon.reordered(value))

    def put(self, mon: Any, result: Any, flow: Flow, produced: bool = False) -> None:
        """Record ``result`` as derived along ``flow``. A structural value is also the monitor's
        produced value (layers, the model's outputs and the losses' layouts are matched against
        those) when made inside the model, or by a view, a log or a scaling (``produced``); the
        other values made after the forward, for the loss, matter to nothing but the loss."""
        if not isinstance(result, Tensor):
            return
        self._flows[id(result)] = (weakref.ref(result), flow)
        if flow.structural and (produced or mon.in_module_forward):
            mon.mark_produced(result, flow.site, flow.via, flow.reordered)

    # ------------------------------------------------------------------ following
    def follow(self, mon: Any, func: Any, args: tuple, kwargs: dict, result: Any) -> None:
        """Follow one op of the ELEMENTWISE or REDUCTIONS sets (products: :meth:`multiply`)."""
        outside = not mon.in_module_forward
        first = args[0] if args else kwargs.get("input")
        if func in _XLOGY:  # xlogy(y, p) = y * log(p)
            flow = self.flow_of(mon, args[1] if len(args) > 1 else kwargs.get("other"))
            if flow is not None and outside and _is_target(first):
                self.put(mon, result, replace(flow.then(LOG).then(TARGET), target=weakref.ref(first)))
            return
        if func in _ADD or func in _SUB or func in _RSUB or func in _DIV:
            self._binary(mon, func, args, kwargs, result, outside)
            return
        if func in _WHERE:  # torch.where(y > 0.5, -log p, -log(1 - p)): both BCE terms, chosen per element
            if func is torch.where:  # torch.where(condition) alone (the indices of its nonzeros) chooses nothing
                a, b = (args[1] if len(args) > 1 else kwargs.get("input")), (args[2] if len(args) > 2 else kwargs.get("other"))
            else:
                a, b = args[0], (args[2] if len(args) > 2 else kwargs.get("other"))
            fa, fb = self.flow_of(mon, a), self.flow_of(mon, b)
            if fa is None or fb is None or fa.site != fb.site:
                return
            if outside and {_log_likelihood(fa), _log_likelihood(fb)} == {"p", "1-p"}:
                chosen = fa if _log_likelihood(fa) == "p" else fb
                self.put(mon, result, Flow(chosen.site, chosen.steps[: chosen.steps.index(LOG)] + (LOG, BOTH_TERMS), chosen.reordered))
            return
        flow = self.flow_of(mon, first)
        if flow is None or not isinstance(first, Tensor):  # a flow is only ever a tensor's
            return
        if func in REDUCTIONS:
            self._reduce(mon, func, flow, first, result, outside)
        elif func in _CLAMP:
            self.put(mon, result, flow.then(CLAMP))
        elif func in _LOG:
            self.put(mon, result, flow.then(LOG), produced=True)
        elif func in _LOG1P:  # log1p(-p) is log(1 - p); log1p(p) changes the range
            negated = flow.steps[-1:] == (NEGATE,)
            self.put(mon, result, replace(flow, steps=flow.steps[:-1]).then(COMPLEMENT).then(LOG) if negated else flow.then(SCALE))
        elif func in _NEG:
            self.put(mon, result, flow if _is_term(flow) else flow.then(NEGATE if outside else SCALE))
        elif func in _POW or func in _SQUARE:
            exponent = 2.0 if func in _SQUARE else real(args[1] if len(args) > 1 else kwargs.get("exponent"))
            self.put(mon, result, flow.then(SQUARE if outside and exponent == 2.0 and ERROR in flow.steps else SCALE))
        elif func in _ABS:
            self.put(mon, result, flow.then(ABS if outside and ERROR in flow.steps else SCALE))
        elif func in _GATHER:  # p.gather(1, y[:, None]): each row's class picked by its index
            index = args[2] if len(args) > 2 else kwargs.get("index", kwargs.get("indices"))
            if outside and isinstance(index, Tensor) and not index.is_floating_point() and not _is_term(flow):
                dim = real(args[1] if len(args) > 1 else kwargs.get("dim"))
                class_dim = self._class_dim(mon, flow, first, None if dim is None else int(dim))
                self.put(mon, result, replace(flow.then(PICKED), target=weakref.ref(index), class_dim=class_dim))

    def pick(self, mon: Any, flow: Flow, value: Any, index: Any, result: Any) -> bool:
        """``value[index]`` after the forward: True when it picks each row's class by its label
        (then recorded as a term of a log-likelihood, like ``gather``); other indexing keeps the
        values (the caller follows it as a view)."""
        if mon.in_module_forward or _is_term(flow) or not isinstance(value, Tensor):
            return False
        labels = picked_labels(value, index, result)
        if labels is None:
            return False
        class_dim = self._class_dim(mon, flow, value, value.dim() - 1)
        self.put(mon, result, replace(flow.then(PICKED), target=weakref.ref(labels), class_dim=class_dim))
        return True

    @staticmethod
    def _class_dim(mon: Any, flow: Flow, value: Tensor, dim: int | None) -> int | None:
        """``dim`` of ``value`` as a dim of the site's output, where ``value`` keeps its layout."""
        if dim is None or flow.reordered or not mon.same_layout(flow.site, value):
            return None
        return dim % value.dim() if value.dim() else None

    def _binary(self, mon: Any, func: Any, args: tuple, kwargs: dict, result: Any, outside: bool) -> None:
        a = args[0] if args else kwargs.get("input")
        b = args[1] if len(args) > 1 else kwargs.get("other")
        fa, fb = self.flow_of(mon, a), self.flow_of(mon, b)
        if func in _RSUB:  # c - p, with c a number
            c = real(b)
            if fa is not None and c is not None:
                self.put(mon, result, fa.then(COMPLEMENT) if c == 1.0 and not _is_term(fa) else fa if _is_term(fa) else fa.then(SCALE))
            return
        if func in _DIV:
            self._divide(mon, fa, fb, b, result)
            return
        if fa is not None and fb is not None:
            if outside and fa.site == fb.site and func in _ADD:
                kinds = {term_kind(fa.steps), term_kind(fb.steps)}
                if kinds == {HANDWRITTEN_CE, HANDWRITTEN_BCE}:  # y log p + (1 - y) log(1 - p)
                    self.put(mon, result, Flow(fa.site, fa.steps[: fa.steps.index(LOG)] + (LOG, BOTH_TERMS), fa.reordered, fa.target))
                elif kinds == {None} or len(kinds) == 1:
                    self.put(mon, result, fa)  # the same term twice (summed parts of one loss)
            return
        flow, other = (fa, b) if fa is not None else (fb, a)
        if flow is None:
            return
        c = real(other)
        if c is not None:  # an epsilon guarding a log or a division, or a shift
            self.put(mon, result, flow if _is_term(flow) else flow.then(CLAMP if abs(c) <= NUDGE_MAX else SCALE))
        elif outside and func in _SUB and _is_target(other) and not _is_term(flow):
            self.put(mon, result, replace(flow.then(ERROR), target=weakref.ref(other)))

    def _divide(self, mon: Any, fa: Flow | None, fb: Flow | None, b: Any, result: Any) -> None:
        if fa is None:
            return
        c = real(b)
        if c is not None or (isinstance(b, Tensor) and b.numel() == 1 and fb is None):
            self.put(mon, result, fa if _is_term(fa) else fa.then(SCALE))  # a mean written as sum / n
        elif fb is not None and fb.site == fa.site and _is_own_total(fa.steps, fb.steps):
            self.put(mon, result, fa.then(NORMALISED))  # x / x.sum(dim, keepdim=True), x / (x.norm(...) + eps)

    def _reduce(self, mon: Any, func: Any, flow: Flow, value: Tensor, result: Any, outside: bool) -> None:
        if func in _NORMALIZE:
            self.put(mon, result, flow.then(NORMALISED))
            return
        kind = term_kind(flow.steps)
        site = mon.sites.get(flow.site)
        if kind is None and site is not None and site.kind in LOG_PROBABILITY_KINDS and term_kind((LOG, *flow.steps)) == HANDWRITTEN_CE:
            kind = HANDWRITTEN_NLL  # log-probabilities picked or weighted by the targets: no log needed
        if kind is None:
            if not _is_term(flow):  # a row sum or norm, maybe the denominator of a normalisation
                self.put(mon, result, flow.then(REDUCED))
            return
        self.recognise(mon, kind, flow, value, result)

    def recognise(self, mon: Any, kind: str, flow: Flow, value: Tensor, result: Any) -> None:
        """A hand-written loss: record it as the site's consumer, its targets' facts, its value."""
        site = mon.sites.get(flow.site)
        if site is None:
            return
        cut = min((flow.steps.index(s) for s in (LOG, COMPLEMENT, TARGET, ERROR, PICKED) if s in flow.steps), default=len(flow.steps))
        prefix = tuple(s for s in flow.steps[:cut] if s in STRUCTURAL_STEPS)
        consumer = f"loss:{kind}" + (f"({','.join(prefix)})" if prefix else "")
        if kind == HANDWRITTEN_CE and any(c.startswith(f"loss:{HANDWRITTEN_BCE}") for c in site.consumers):
            return  # the first half of a BCE reduced on its own
        if kind == HANDWRITTEN_BCE:
            for c in [c for c in site.consumers if c.startswith(f"loss:{HANDWRITTEN_CE}")]:
                site.consumers.discard(c)
        target = flow.target() if flow.target is not None else None
        mon.note_loss(kind, value, target)
        mon.add_consumer(flow.site, consumer, value)
        if kind == HANDWRITTEN_CE and flow.class_dim is not None:
            mon.note_class_dim(flow.site, consumer[5:], flow.class_dim)
        if target is not None and all(s in RANGE_KEPT for s in prefix):
            mon.note_targets(flow.site, kind, target)
            if kind != HANDWRITTEN_BCE:  # (1 - y) pairs with log(1 - p): y is what is compared
                note_target_rows(mon, flow.site, value, target, flow.reordered)
        if isinstance(result, Tensor):
            mon.network.observe_loss(result)

    def multiply(self, mon: Any, operands: tuple, result: Any) -> bool:
        """A product outside the model (the loss being computed): the log-likelihood's ``y * log p``,
        a squared error written ``e * e``, or a scaling. True when handled here; inside the model
        the tracer judges gates and scales."""
        if mon.in_module_forward:
            return False
        flows = [self.flow_of(mon, v) for v in operands]
        followed = [(f, v) for f, v in zip(flows, operands) if f is not None]
        if not followed:
            return True
        flow = followed[0][0]
        if len(followed) >= 2:
            same = all(f.site == flow.site for f, _ in followed)
            if same and ERROR in flow.steps and followed[0][1] is followed[1][1]:
                self.put(mon, result, flow.then(SQUARE))
            return True
        other = next((v for f, v in zip(flows, operands) if f is None), None)
        if _is_target(other):
            self.put(mon, result, flow.then(TARGET) if _is_term(flow) else replace(flow.then(TARGET), target=weakref.ref(other)))
        else:
            self.put(mon, result, flow if _is_term(flow) else flow.then(SCALE))
        return True


def note_target_rows(mon: Any, site_name: str, prediction: Any, target: Any, reordered: bool) -> None:
    """Count, on the device, the target rows (over the site's classes) whose sum is not 1."""
    site, state = mon.sites.get(site_name), mon.states.get(site_name)
    if site is None or state is None or not isinstance(prediction, Tensor):
        return
    dim = target_class_dim(prediction, target, site.unit_dim, site.n_units, reordered)
    if dim is not None and target.numel():
        with torch._C.DisableTorchFunction():
            state.observe_target_rows(target, dim, ROW_SUM_TOLERANCE)
