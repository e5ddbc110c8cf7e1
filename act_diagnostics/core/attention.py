"""Attention weights, recomputed for a sample: ``F.scaled_dot_product_attention`` and
``F.multi_head_attention_forward`` (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``).

Fused attention never materialises its softmax, so no hook can read it. On the steps that read
details, the monitor recomputes the weights (before dropout) for the leading batch elements, all
heads, within ``max_elements`` weights, in float32 under ``no_grad``: a few small ops that leave
the training computation untouched. Rows that see at most one key are zeros: they have no choice
to make (see :func:`attention_probabilities`).

The same sample gives the largest pre-softmax logit of each head (``q.k * scale`` over the keys
a mask lets through; an additive float mask is a bias, not part of the logit, and a bias at or
below :data:`BLOCKING_BIAS` blocks its key): pass a list as ``peaks`` and a ``(heads,)`` tensor is
appended, on the device (rules: attention-logit-growth).

Hand-written ("eager") attention, ``w = softmax(q @ k.transpose(-2, -1) * scale + mask); out = w @ v``
(Hugging Face ``attn_implementation="eager"``, timm without fused attention, nanoGPT's manual path),
materialises its weights: its softmax is a site of its own. :class:`EagerAttention` recognises it
during the structure steps, from what the tracer sees multiplied (:data:`EAGER_OPS`): a softmax over
the last dim of a (..., queries, keys) tensor of at least 3 dims whose input is a product of two
computed tensors of at least 3 dims each (neither a parameter), through scalings, masks, biases,
views and casts; and whose output, through dropout, casts and views, is multiplied (matmul, bmm,
einsum) by a third tensor. That site's ``source`` becomes ``"attention"``; it keeps its name
(``h.0.attn:softmax``) and is measured at its softmax call like any site. On detail steps
:func:`head_logit_peaks` reads its largest logit per head from the softmax's INPUT: the scaled,
masked scores, with every additive bias (ALiBi, relative positions) the softmax sees.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from act_diagnostics.core.extras import ATTENTION_LOGITS, OP_MAX

# Site names end in ``:attention`` (``blocks.0.attn:attention``): one per call position.
ATTENTION = "attention"
_NOT_ALLOWED = float("-inf")  # the score of a key a mask blocks
# At most this many weights per call (and at most the monitor's sample_elements): a quarter of the
# default sample. With 64 keys and 4 heads that is still 1024 query rows per call, four times what
# the attention-collapse rule needs to judge, at a quarter of the cost of recomputing 2**18.
SAMPLE_WEIGHTS = 2**16
# An additive mask value at or below this blocks its key (Hugging Face fills blocked positions with
# the dtype's minimum; ALiBi-style biases stay far above it at any practical length).
BLOCKING_BIAS = -1e4


def sdpa_arguments(args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of one ``scaled_dot_product_attention`` call, by name."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound: dict[str, Any] = {"attn_mask": None, "is_causal": False, "scale": None, "enable_gqa": False}
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


def _four_d(t: Tensor) -> Tensor:
    """(batch, heads, rows, cols) as a view: (N, H, L, E) as is; further leading dims at their first
    index; a 3-D (N, L, E) input has one head; a 2-D (L, E) one batch element and one head."""
    if t.dim() >= 4:
        return t[(0,) * (t.dim() - 4)]
    if t.dim() == 3:
        return t.unsqueeze(1)
    return t[None, None]


def attention_probabilities(
    args: tuple, kwargs: dict, max_elements: int | None, peaks: list[Tensor] | None = None
) -> Tensor | None:
    """Attention weights (batch elements x heads, query rows, keys) of the leading batch elements
    that fit in ``max_elements`` weights (at least one, cut to fewer query rows if one does not fit),
    or None when the call cannot be read (no tensors, an empty batch). ``peaks``: a list the
    sample's largest logit per head is appended to (see the module docstring)."""
    a = sdpa_arguments(args, kwargs)
    q, k, mask = a.get("query"), a.get("key"), a["attn_mask"]
    if not isinstance(q, Tensor) or not isinstance(k, Tensor) or q.dim() < 2 or q.numel() == 0 or k.numel() == 0:
        return None
    q4, k4 = _four_d(q.detach()), _four_d(k.detach())
    batch, heads, length, keys = q4.shape[0], q4.shape[1], q4.shape[2], k4.shape[2]
    per_element = heads * length * keys
    if max_elements is None:
        n, rows = batch, length
    elif per_element <= max_elements:
        n, rows = min(batch, max_elements // per_element), length
    else:  # one element is too many: its first query rows
        n, rows = 1, max(1, max_elements // (heads * keys))
    q4, k4 = q4[:n, :, :rows].float(), k4[:n].float()
    if a["enable_gqa"] and k4.shape[1] != heads:
        k4 = k4.repeat_interleave(heads // k4.shape[1], dim=1)  # grouped-query attention: shared key heads
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])
    # float32 even under autocast, which would run the matmul in bfloat16 / float16: three
    # significant digits are too few to tell a weight of 0.995 from one of 0.985.
    no_autocast = torch.is_autocast_enabled(q.device.type)
    with torch.no_grad(), torch.autocast(q.device.type, enabled=False) if no_autocast else contextlib.nullcontext():
        scores = torch.matmul(q4, k4.transpose(-2, -1)) * scale
        if a["is_causal"]:  # torch's causal mask is aligned to the top left: query i sees keys <= i
            allowed = torch.ones(rows, keys, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~allowed, _NOT_ALLOWED)
        logits = scores
        if isinstance(mask, Tensor):
            m = _four_d(mask.detach().broadcast_to(*q.shape[:-1], keys))[:n, :, :rows]
            if m.dtype == torch.bool:
                scores = logits = scores.masked_fill(~m, _NOT_ALLOWED)
            else:
                logits = scores.masked_fill(m <= BLOCKING_BIAS, _NOT_ALLOWED)
                scores = scores + m.float()
        if peaks is not None:
            peaks.append(logits.amax(dim=(0, 2, 3)))
        probs = torch.softmax(scores, dim=-1)
        # NaN scores count as seen: a real NaN shows.
        seen = (scores != _NOT_ALLOWED).sum(-1, keepdim=True) if a["is_causal"] or isinstance(mask, Tensor) else None
        probs = _without_forced_rows(probs, seen)
    return probs.reshape(n * heads, rows, keys)


def _without_forced_rows(weights: Tensor, seen: Tensor | None) -> Tensor:
    """``weights`` with zeros in the rows that see at most one key (``seen``: keys each row sees,
    None when every row sees all of them). A row that sees no key is NaN (kernels differ on it):
    padding, not a fault. A row that sees one key is one-hot by construction (the first row under a
    causal mask): no choice, not a peaked one."""
    if seen is not None:
        return torch.where(seen > 1, weights, 0.0)
    return torch.zeros_like(weights) if weights.shape[-1] <= 1 else weights


_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


def _mha_allowed(mask: Tensor) -> Tensor:
    """Which keys an nn.MultiheadAttention mask lets through: a bool mask blocks where True (the
    opposite of SDPA's convention), a float mask blocks with -inf."""
    return ~mask if mask.dtype == torch.bool else mask != _NOT_ALLOWED


def mha_probabilities(
    func: Any, args: tuple, kwargs: dict, max_elements: int | None, peaks: list[Tensor] | None = None
) -> Tensor | None:
    """Attention weights (batch elements x heads, query rows, keys) of one
    ``F.multi_head_attention_forward`` call, for the leading batch elements that fit in
    ``max_elements`` weights (at least one): the call is repeated on that sample with
    ``need_weights=True``, per head, without dropout, under ``no_grad``."""
    bound = _MHA_SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    a = dict(bound.arguments)
    query, key = a["query"], a["key"]
    if not isinstance(query, Tensor) or not isinstance(key, Tensor) or query.numel() == 0 or key.numel() == 0:
        return None
    heads = int(a["num_heads"])
    batched = query.dim() == 3  # (L, N, E); unbatched (L, E)
    n = 1
    if batched:
        per_element = heads * query.shape[0] * (key.shape[0] + 2)  # +2: bias_k, add_zero_attn
        n = query.shape[1] if max_elements is None else max(1, min(query.shape[1], max_elements // per_element))
        for name in ("query", "key", "value"):
            a[name] = a[name][:, :n]
        if isinstance(a["key_padding_mask"], Tensor):
            a["key_padding_mask"] = a["key_padding_mask"][:n]
        for name in ("attn_mask", "static_k", "static_v"):
            if isinstance(a[name], Tensor) and a[name].dim() == 3:  # (N * heads, ...)
                a[name] = a[name][: n * heads]
    a.update(need_weights=True, average_attn_weights=False, dropout_p=0.0, training=False)
    with torch.no_grad():
        _, weights = func(**a)
        weights = weights.float().reshape(n, heads, *weights.shape[-2:])
        rows, keys = weights.shape[-2:]
        allowed: Tensor | None = None
        if isinstance(a["attn_mask"], Tensor):
            m = _mha_allowed(a["attn_mask"])
            allowed = m.reshape(n, heads, *m.shape[-2:]) if m.dim() == 3 else m.expand(n, heads, *m.shape)
        if isinstance(a["key_padding_mask"], Tensor):
            p = _mha_allowed(a["key_padding_mask"]).reshape(n, 1, 1, -1)
            allowed = p if allowed is None else allowed & p
        if allowed is not None and allowed.shape[-1] < keys:  # bias_k / add_zero_attn append keys every query sees
            extra = torch.ones(*allowed.shape[:-1], keys - allowed.shape[-1], dtype=torch.bool, device=allowed.device)
            allowed = torch.cat((allowed.expand(n, heads, rows, -1), extra), dim=-1)
        weights = _without_forced_rows(weights, None if allowed is None else allowed.sum(-1, keepdim=True))
        if peaks is not None:
            peak = _mha_logit_peaks(a, n, heads, allowed)
            if peak is not None:
                peaks.append(peak)
    return weights.reshape(n * heads, rows, keys)


def _mha_logit_peaks(a: dict[str, Any], n: int, heads: int, allowed: Tensor | None) -> Tensor | None:
    """Largest pre-softmax logit per head of a ``F.multi_head_attention_forward`` call whose
    sampled arguments are ``a``: queries and keys projected again (float32), scaled by
    1/sqrt(head_dim) as the function does. None with precomputed ``static_k``."""
    if isinstance(a["static_k"], Tensor):
        return None
    query, key = a["query"], a["key"]
    if query.dim() == 2:  # unbatched (L, E)
        query, key = query.unsqueeze(1), key.unsqueeze(1)
    embed = query.shape[-1]
    weight, bias = a["in_proj_weight"], a["in_proj_bias"]
    if a["use_separate_proj_weight"]:
        w_q, w_k = a["q_proj_weight"], a["k_proj_weight"]
    else:
        w_q, w_k = weight[:embed], weight[embed : 2 * embed]
    b_q, b_k = (None, None) if bias is None else (bias[:embed].float(), bias[embed : 2 * embed].float())
    q = F.linear(query.detach().float(), w_q.detach().float(), b_q)
    k = F.linear(key.detach().float(), w_k.detach().float(), b_k)
    if isinstance(a["bias_k"], Tensor):
        k = torch.cat((k, a["bias_k"].detach().float().expand(1, n, embed)))
    if a["add_zero_attn"]:
        k = torch.cat((k, k.new_zeros(1, n, embed)))
    head_dim = embed // heads
    q = q.reshape(q.shape[0], n, heads, head_dim).permute(1, 2, 0, 3)
    k = k.reshape(k.shape[0], n, heads, head_dim).permute(1, 2, 0, 3)
    logits = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(head_dim)
    if allowed is not None:
        logits = logits.masked_fill(~allowed, _NOT_ALLOWED)
    return logits.amax(dim=(0, 2, 3))


def read_attention(
    func: Any, args: tuple, kwargs: dict, max_elements: int | None, peaks: list[Tensor] | None = None
) -> Tensor | None:
    """The sampled attention weights of one call of a function in :data:`ATTENTION_FUNCTIONS`,
    at most :data:`SAMPLE_WEIGHTS` (and ``max_elements``) of them; ``peaks`` receives the
    sample's largest logit per head."""
    max_elements = SAMPLE_WEIGHTS if max_elements is None else min(max_elements, SAMPLE_WEIGHTS)
    if func is F.multi_head_attention_forward:
        return mha_probabilities(func, args, kwargs, max_elements, peaks)
    return attention_probabilities(args, kwargs, max_elements, peaks)


def record_logit_peaks(extras: Any, site: str, peaks: list[Tensor]) -> None:
    """Keep the largest logit per head of ``site`` in the window (``extras``: the monitor's
    :class:`~act_diagnostics.core.extras.ExtraTotals`; reduced by max across calls and ranks)."""
    for peak in peaks:
        extras.accumulate(site, ATTENTION_LOGITS, peak, (OP_MAX,) * peak.numel())


ATTENTION_FUNCTIONS = frozenset({F.scaled_dot_product_attention, F.multi_head_attention_forward})


# ---------------------------------------------------------------- hand-written ("eager") attention
# Products that make scores (q @ k.transpose(-2, -1), torch.baddbmm(bias, q, k)) and that apply
# the weights to the values (w @ v).
SCORE_PRODUCTS = frozenset({
    torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.bmm, Tensor.bmm, torch.einsum, torch.baddbmm, Tensor.baddbmm,
})
_BADDBMM = (torch.baddbmm, Tensor.baddbmm)
# Ops after which scores are still the scores a softmax reads: a scale, a mask or a bias added or
# filled in, views, casts. A nonlinearity (tanh soft-capping) is an activation site of its own.
SCORE_STEPS = frozenset({
    torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__, Tensor.mul_, Tensor.__imul__,
    torch.div, Tensor.div, Tensor.__truediv__, Tensor.div_, Tensor.__itruediv__,
    torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__, Tensor.add_, Tensor.__iadd__,
    torch.sub, Tensor.sub, Tensor.__sub__, Tensor.sub_, Tensor.__isub__,
    torch.masked_fill, Tensor.masked_fill, Tensor.masked_fill_, torch.where, Tensor.where,
    Tensor.view, Tensor.view_as, Tensor.reshape, torch.reshape, Tensor.contiguous, Tensor.clone, Tensor.__getitem__,
    Tensor.float, Tensor.to, Tensor.type, Tensor.type_as,
})
EAGER_OPS = SCORE_PRODUCTS | SCORE_STEPS
# The attention functions whose weights are recomputed (their sites' module_type).
RECOMPUTED = ("scaled_dot_product_attention", "multi_head_attention_forward")


def _product_operands(func: Any, args: tuple, kwargs: dict) -> list[Any]:
    """The two factors of a product: ``a @ b``, ``torch.bmm(a, b)``, ``torch.einsum(eq, a, b)``
    (or a list), ``torch.baddbmm(bias, a, b)``."""
    if func is torch.einsum:
        ops = args[1:]
        return list(ops[0]) if len(ops) == 1 and isinstance(ops[0], (list, tuple)) else list(ops)
    if func in _BADDBMM:
        return [*args[1:3], *(kwargs[k] for k in ("batch1", "batch2") if k in kwargs)]
    return [*args[:2], *(kwargs[k] for k in ("other", "mat2") if k in kwargs)]


def _computed(t: Any) -> bool:
    """A tensor the model computed per example, at least (batch, rows, cols): not a parameter (a
    layer's weight, transposed or not, is 2-D or a parameter)."""
    return isinstance(t, Tensor) and t.dim() >= 3 and not isinstance(t, nn.Parameter)


class EagerAttention:
    """Recognises hand-written attention during the structure steps (see the module docstring).

    The tracer hands it every op of :data:`EAGER_OPS` (:meth:`note_op`), the structural-facts
    recorder every activation call (:meth:`note_softmax`); ``produced_by`` tells which site's output
    (through views, dropout, casts) a value is. Scores are held weakly, and only until the step ends.
    """

    def __init__(self) -> None:
        self._scores: dict[int, weakref.ref] = {}  # id -> this step's scores (products and what follows them)
        self._reads_scores: set[str] = set()  # softmax sites whose input was scores (kept across steps)

    def clear(self) -> None:
        self._scores.clear()

    def held(self) -> int:
        return len(self._scores)

    def is_scores(self, value: Any) -> bool:
        entry = self._scores.get(id(value)) if isinstance(value, Tensor) else None
        return entry is not None and entry() is value

    def reads_scores(self, site: str) -> bool:
        """The softmax site ``site`` has read scores (it is attention once its output meets the values)."""
        return site in self._reads_scores

    def note_op(
        self, func: Any, args: tuple, kwargs: dict, result: Any, produced_by: Callable[[Any], Any], sites: dict[str, Any]
    ) -> None:
        if not isinstance(result, Tensor) or not result.is_floating_point():
            return
        if func in SCORE_PRODUCTS:
            operands = [t for t in _product_operands(func, args, kwargs) if isinstance(t, Tensor)]
            if len(operands) != 2:
                return
            self._meets_values(func, operands, produced_by, sites)
            if result.dim() >= 3 and all(_computed(t) for t in operands):
                self._scores[id(result)] = weakref.ref(result)
        elif any(self.is_scores(a) for a in (*args, *kwargs.values())):
            self._scores[id(result)] = weakref.ref(result)

    def note_softmax(self, site: Any, x: Any, y: Tensor) -> None:
        """A site's call turned ``x`` into ``y``: a softmax over the keys of scores reads scores."""
        if site.kind == "softmax" and y.dim() >= 3 and site.unit_dim == y.dim() - 1 and self.is_scores(x):
            self._reads_scores.add(site.name)

    def _meets_values(self, func: Any, operands: list[Tensor], produced_by: Callable[[Any], Any], sites: dict[str, Any]) -> None:
        """The weights of a softmax that read scores, as the left factor (either factor of an
        einsum, whose order is the equation's) of a product with a third tensor: attention."""
        for i, weights in enumerate(operands if func is torch.einsum else operands[:1]):
            source = produced_by(weights)
            if source is None or source[0] not in self._reads_scores or source[0] not in sites:
                continue
            other = produced_by(operands[1 - i])
            if other is None or other[0] != source[0]:
                sites[source[0]].source = ATTENTION


def head_logit_peaks(scores: Tensor) -> Tensor:
    """The largest logit per head of a hand-written attention's softmax input (..., heads,
    queries, keys), float32 on its device: masked keys (-inf, or the dtype's minimum) never win a
    max; an additive bias is part of the logit. A 3-D input (batch x heads merged) is one head."""
    s = scores.detach()
    if s.dim() >= 4:
        heads = s.dim() - 3
        return s.amax(dim=tuple(d for d in range(s.dim()) if d != heads)).float()
    return s.amax().float().reshape(1)
