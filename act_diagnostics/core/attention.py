"""The attention weights of ``F.scaled_dot_product_attention``, recomputed for a sample.

Fused attention never materialises its softmax, so no hook can read it. On the steps that read
details, the monitor recomputes the probabilities ``softmax(q k^T * scale + mask)`` (before
dropout) for the first batch element, all heads, and as many query rows as ``max_elements`` allows,
in float32 under ``no_grad``: a few small ops that leave the training computation untouched.
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


def _first_element(t: Tensor) -> Tensor:
    """(heads, rows, cols) of the first batch element: (N, ..., H, L, E) -> (H, L, E); a 3-D
    (N, L, E) input has no head dimension and gives (1, L, E)."""
    if t.dim() >= 4:
        return t[(0,) * (t.dim() - 3)]
    if t.dim() == 3:
        return t[:1]
    return t.reshape(1, *t.shape[-2:]) if t.dim() == 2 else t.reshape(1, 1, -1)


def attention_probabilities(args: tuple, kwargs: dict, max_elements: int | None) -> Tensor | None:
    """Attention weights (heads, rows, keys) for the first batch element, or None when the call
    cannot be read (no tensors, an empty batch)."""
    a = sdpa_arguments(args, kwargs)
    q, k, mask = a.get("query"), a.get("key"), a["attn_mask"]
    if not isinstance(q, Tensor) or not isinstance(k, Tensor) or q.dim() < 2 or q.numel() == 0 or k.numel() == 0:
        return None
    q0, k0 = _first_element(q.detach()), _first_element(k.detach())
    heads, length, keys = q0.shape[0], q0.shape[1], k0.shape[1]
    rows = length if max_elements is None else max(1, min(length, max_elements // max(1, heads * keys)))
    q0 = q0[:, :rows].float()
    if a["enable_gqa"] and k0.shape[0] != heads:
        k0 = k0.repeat_interleave(heads // k0.shape[0], dim=0)  # grouped-query attention: shared key heads
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])
    with torch.no_grad():
        scores = torch.matmul(q0, k0.float().transpose(-2, -1)) * scale
        if a["is_causal"]:  # torch's causal mask is aligned to the top left: query i sees keys <= i
            allowed = torch.ones(rows, keys, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~allowed, float("-inf"))
        if isinstance(mask, Tensor):
            m = _first_element(mask.detach().broadcast_to(*q.shape[:-1], keys))[:, :rows]
            scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
        probs = torch.softmax(scores, dim=-1)
        if a["is_causal"] or isinstance(mask, Tensor):
            # A row that sees no key is NaN here (kernels differ on it): padding, not a fault.
            probs = torch.where((scores != float("-inf")).any(-1, keepdim=True), probs, 0.0)
    return probs
