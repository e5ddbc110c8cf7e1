"""The attention weights of ``F.scaled_dot_product_attention``, recomputed for a sample.

Fused attention never materialises its softmax, so no hook can read it. On the steps that read
details, the monitor recomputes the probabilities ``softmax(q k^T * scale + mask)`` (before
dropout) for the leading batch elements, all heads, within ``max_elements`` weights, in float32
under ``no_grad``: a few small ops that leave the training computation untouched.
Rows that see at most one key are zeros (see :func:`attention_probabilities`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

# Site names end in ``:attention`` (``blocks.0.attn:attention``): one per call position.
ATTENTION = "attention"


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


def attention_probabilities(args: tuple, kwargs: dict, max_elements: int | None) -> Tensor | None:
    """Attention weights (batch elements x heads, query rows, keys) of the leading batch elements
    that fit in ``max_elements`` weights (at least one, cut to fewer query rows if one does not fit),
    or None when the call cannot be read (no tensors, an empty batch)."""
    a = sdpa_arguments(args, kwargs)
    q, k, mask = a.get("query"), a.get("key"), a["attn_mask"]
    if not isinstance(q, Tensor) or not isinstance(k, Tensor) or q.dim() < 2 or q.numel() == 0 or k.numel() == 0:
        return None
    q4, k4 = _four_d(q.detach()), _four_d(k.detach())
    batch, heads, length, keys = q4.shape[0], q4.shape[1], q4.shape[2], k4.shape[2]
    per_element = heads * length * keys
    if max_elements is None or per_element <= max_elements:
        n, rows = (batch if max_elements is None else max(1, min(batch, max_elements // per_element))), length
    else:
        n, rows = 1, max(1, min(length, max_elements // max(1, heads * keys)))
    q4, k4 = q4[:n, :, :rows].float(), k4[:n].float()
    if a["enable_gqa"] and k4.shape[1] != heads:
        k4 = k4.repeat_interleave(heads // k4.shape[1], dim=1)  # grouped-query attention: shared key heads
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])
    with torch.no_grad():
        scores = torch.matmul(q4, k4.transpose(-2, -1)) * scale
        if a["is_causal"]:  # torch's causal mask is aligned to the top left: query i sees keys <= i
            allowed = torch.ones(rows, keys, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~allowed, float("-inf"))
        if isinstance(mask, Tensor):
            m = _four_d(mask.detach().broadcast_to(*q.shape[:-1], keys))[:n, :, :rows]
            scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
        probs = torch.softmax(scores, dim=-1)
        # A row that sees no key is NaN here (kernels differ on it): padding, not a fault. A row
        # that sees one key is one-hot by construction (the first row under a causal mask): no
        # choice, not a peaked one. Both are zeros. (NaN scores count as seen: a real NaN shows.)
        if a["is_causal"] or isinstance(mask, Tensor):
            probs = torch.where((scores != float("-inf")).sum(-1, keepdim=True) > 1, probs, 0.0)
        elif keys <= 1:
            probs = torch.zeros_like(probs)
    return probs.reshape(n * heads, rows, keys)
