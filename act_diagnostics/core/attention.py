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
"""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any

import torch
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
