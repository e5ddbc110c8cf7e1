"""Mixture-of-experts routers: how many tokens each expert receives.

A router is a ``torch.topk`` (function or method) over the last dim of a softmax or sigmoid site's
output: the router probabilities over experts, of which each token keeps its ``k`` largest
(Mixtral's and Qwen-MoE's ``F.softmax(router_logits, dim=1, dtype=torch.float)`` then
``torch.topk(routing_weights, top_k, dim=-1)``, a hand-written ``logits.softmax(-1).topk(k)``,
a sigmoid router). While the monitor tracks structure, the tracer recognises such a call from the
tensor it reads; the call's position (``<owner>:router``, ``#k`` for a further topk call in the
same module) is then watched on every step the tracer runs, whatever the tensor's history.

Per call, on the device: the tokens dispatched to each expert (a scatter-add of the top-k indices,
no ``bincount``: its output size needs a sync on an accelerator), the router probability each
expert received (summed over tokens) and the number of tokens. Sums across calls, steps and ranks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from act_diagnostics.core.extras import OP_SUM, ROUTER
from act_diagnostics.core.sites import functional_base

ROUTER_FUNCTIONS = frozenset({torch.topk, Tensor.topk})
_ROUTER_KINDS = ("softmax", "sigmoid")


@dataclass
class RouterStats:
    """One router over one window."""

    tokens: int  # token rows routed
    top_k: float  # experts per token (assignments / tokens)
    shares: list[float]  # per expert: its share of the assignments (sums to 1)
    probability: list[float]  # per expert: mean router probability over tokens

    @property
    def experts(self) -> int:
        return len(self.shares)

    @property
    def imbalance(self) -> float:
        """Largest share over the uniform share 1/E: 1 is perfectly balanced, E is all on one expert
        (the max-over-mean load of Switch Transformer's capacity factor)."""
        return max(self.shares) * self.experts if self.shares else float("nan")

    def scalars(self) -> dict[str, float]:
        """Logged as ``act/router/<router>/<stat>`` (docs/logged-metrics.md)."""
        out = {"imbalance": self.imbalance, "min_share": min(self.shares)}
        out.update({f"share_{e}": s for e, s in enumerate(self.shares)})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "imbalance": self.imbalance}


def expert_totals(probs: Tensor, indices: Tensor) -> Tensor:
    """[assignments per expert..., probability sum per expert..., tokens] of one router call:
    ``probs`` (..., E) the router probabilities, ``indices`` (..., k) the experts chosen."""
    experts = probs.shape[-1]
    p = probs.detach().reshape(-1, experts).float()
    idx = indices.detach().reshape(-1)
    counts = torch.zeros(experts, dtype=torch.float32, device=p.device)
    counts.scatter_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
    return torch.cat((counts, p.sum(0), p.new_full((1,), p.shape[0])))


def router_stats(values: np.ndarray) -> RouterStats | None:
    """A window's :class:`RouterStats` from its reduced totals, or None if no token was routed."""
    experts = (len(values) - 1) // 2
    counts, prob, tokens = values[:experts], values[experts : 2 * experts], float(values[-1])
    assigned = float(counts.sum())
    if tokens <= 0 or assigned <= 0:
        return None
    return RouterStats(
        tokens=int(round(tokens)),
        top_k=assigned / tokens,
        shares=(counts / assigned).tolist(),
        probability=(prob / tokens).tolist(),
    )


def _reads_router_probabilities(monitor: Any, facts: Any, probs: Any) -> bool:
    source = facts.produced_by(probs) if monitor.learning_structure else None
    if source is None or source[1] not in ("", "scale"):  # scale: a router temperature or a mask
        return False
    site = facts.sites.get(source[0])
    return site is not None and site.kind in _ROUTER_KINDS


def _topk_dim(args: tuple, kwargs: dict, ndim: int) -> int | None:
    dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
    return dim % ndim if isinstance(dim, int) and ndim else None


def call_topk(monitor: Any, facts: Any, func: Any, args: tuple, kwargs: dict) -> Any:
    """Run a ``topk`` call seen by the tracer; measure it if it is a router's (see module docstring).
    ``monitor``: the tracer's call router (the ActivationMonitor); ``facts``: its structure recorder."""
    result = func(*args, **kwargs)
    if not monitor.enabled or monitor.failure is not None or not getattr(monitor, "_training", True):
        return result
    if torch._C._current_graph_task_id() != -1:  # a checkpoint's re-run in backward
        return result
    try:
        with torch._C.DisableTorchFunction():
            probs = args[0] if args else kwargs.get("input")
            if not isinstance(probs, Tensor) or probs.dim() == 0 or not probs.is_floating_point():
                return result
            key = monitor._next_call(functional_base(monitor._owner, "router"))
            if key not in monitor.extras and not _reads_router_probabilities(monitor, facts, probs):
                return result
            if _topk_dim(args, kwargs, probs.dim()) != probs.dim() - 1 or not probs.numel():
                return result
            totals = expert_totals(probs, result[1])
            monitor.extras.accumulate(key, ROUTER, totals, (OP_SUM,) * totals.numel())
    except Exception as exc:  # noqa: BLE001 - diagnostics must never break training
        monitor._fail(exc)
    return result
