"""The transformer statistics of one snapshot: what :class:`~act_diagnostics.core.extras.ExtraTotals`
read back becomes (attention sites' ``max_logit``, ``Snapshot.log_z``, ``Snapshot.routers``), and
the scalars the writers log for the last two."""

from __future__ import annotations

from typing import Any

import numpy as np

from act_diagnostics.core.extras import ATTENTION_LOGITS, LOG_Z, ROUTER, measured_max
from act_diagnostics.core.logits import log_z_stats
from act_diagnostics.core.routers import router_stats


def fill_snapshot(snapshot: Any, last: dict[str, tuple[str, np.ndarray]]) -> None:
    """Put the host values of one window (:attr:`ExtraTotals.last`) into ``snapshot``: each attention
    site's ``max_logit`` / ``max_logit_heads``, ``snapshot.log_z`` and ``snapshot.routers``."""
    for key, (kind, values) in last.items():
        if kind == ATTENTION_LOGITS:
            stats, site = snapshot.stats.get(key), snapshot.sites.get(key)
            heads = [measured_max(v) for v in values.tolist()]
            if stats is None or any(h is None for h in heads):
                continue  # not measured in this window (no detail step)
            if site is not None and site.source != "attention":
                continue  # a softmax of scores read while learning structure, which proved not to be attention
            stats.max_logit_heads = heads
            stats.max_logit = float(np.max(values))
        elif kind == LOG_Z:
            z = log_z_stats(values)
            if z is not None:
                snapshot.log_z[key] = z
        elif kind == ROUTER:
            r = router_stats(values)
            if r is not None:
                snapshot.routers[key] = r


def extra_scalars(snapshot: Any) -> dict[str, dict[str, float]]:
    """The log Z and router scalars of one snapshot, for the writers: ``{"loss/cross_entropy":
    {"log_z_mean": ...}, "router/moe:router": {"imbalance": ..., "share_0": ...}}``; a writer turns
    each key into a tag as it does a site name (``act/loss/cross_entropy/log_z_mean``,
    ``act/router/moe/router/imbalance``). ``max_logit`` is a per-site statistic (LOGGED_STATS)."""
    out: dict[str, dict[str, float]] = {}
    for call, z in (getattr(snapshot, "log_z", None) or {}).items():
        out[f"loss/{call}"] = z.scalars()
    for name, r in (getattr(snapshot, "routers", None) or {}).items():
        out[f"router/{name}"] = r.scalars()
    return out
