"""Pack every site's window totals into one tensor: one collective and one host copy per log step.

Layout, per site in a fixed order: ``[counters..., sums..., max, min, unit_active..., unit_saturated...]``.
:class:`Layout` records, for each column, how it combines across processes (sum, max or min), so a
distributed strategy can all-gather the packed vector once and combine it with
:func:`combine_gathered`. Histogram samples are rank-local and travel in a second part of the same
host copy, never through the collective.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from act_diagnostics.core.state import COUNTERS, N_SUMS, SiteState
from act_diagnostics.core.snapshot import SiteStats, window_stats

SUM_NAMES = ("sum", "sumsq", "grad_sumsq", "sat_rows", "nonfinite", "in_sum", "in_sumsq", "param_grad_sq")
assert len(SUM_NAMES) == N_SUMS

OP_SUM, OP_MAX, OP_MIN = 0, 1, 2


@dataclass
class Span:
    site: str
    offset: int
    n_units: int
    has_saturated_units: bool

    @property
    def size(self) -> int:
        return len(COUNTERS) + N_SUMS + 2 + self.n_units * (2 if self.has_saturated_units else 1)


class Layout:
    """Where each site's totals sit in the packed vector, and how each column combines."""

    def __init__(self, spans: list[Span]) -> None:
        self.spans = spans
        self.size = sum(span.size for span in spans)

    @functools.cached_property
    def ops(self) -> Tensor:
        """int8 per column: OP_SUM / OP_MAX / OP_MIN. Built only when a collective needs it."""
        ops = torch.full((self.size,), OP_SUM, dtype=torch.int8)
        for span in self.spans:
            j = span.offset + len(COUNTERS) + N_SUMS
            ops[j] = OP_MAX
            ops[j + 1] = OP_MIN
        return ops


def make_layout(names: Sequence[str], states: Sequence[SiteState]) -> Layout:
    spans, offset = [], 0
    for name, st in zip(names, states):
        span = Span(name, offset, st.n_units, st.unit_saturated is not None)
        spans.append(span)
        offset += span.size
    return Layout(spans)


def pack_states(states: Sequence[SiteState], device: torch.device) -> Tensor:
    """One float64 (float32 on MPS) vector of every site's totals, on ``device``. No host sync."""
    if not states:
        return torch.zeros(0, dtype=torch.float64, device=device)
    dtype = states[0].sums.dtype
    # Host counters go over in one small host-to-device copy (never a sync on the way back).
    counters = torch.tensor([c for st in states for c in st.counters], dtype=dtype).to(device, non_blocking=True)
    parts: list[Tensor] = []
    k = len(COUNTERS)
    for i, st in enumerate(states):
        parts.append(counters[i * k : (i + 1) * k])
        parts.append(st.sums.to(device, dtype))
        parts.append(torch.stack((st.max, st.min)).to(device, dtype))
        parts.append(st.unit_active.to(device, dtype))
        if st.unit_saturated is not None:
            parts.append(st.unit_saturated.to(device, dtype))
    return torch.cat(parts)


def combine_gathered(gathered: Tensor, ops: Tensor) -> Tensor:
    """Combine an all-gathered ``(world_size, N)`` packed tensor column by column."""
    ops = ops.to(gathered.device)
    out = gathered.sum(0)
    out = torch.where(ops == OP_MAX, gathered.amax(0), out)
    return torch.where(ops == OP_MIN, gathered.amin(0), out)


def unpack(host: Sequence[float], layout: Layout) -> dict[str, dict]:
    """Split a host copy of the packed vector back into per-site totals."""
    out: dict[str, dict] = {}
    k = len(COUNTERS)
    for span in layout.spans:
        v = host[span.offset : span.offset + span.size]
        counters = {name: int(round(v[i])) for i, name in enumerate(COUNTERS)}
        sums = {name: float(v[k + i]) for i, name in enumerate(SUM_NAMES)}
        j = k + N_SUMS
        mx, mn = float(v[j]), float(v[j + 1])
        j += 2
        # Unit counts stay floats: exact integers, or NaN when a NaN output reached a sign count.
        active = v[j : j + span.n_units]  # already Python floats (tolist)
        j += span.n_units
        saturated = v[j : j + span.n_units] if span.has_saturated_units else None
        out[span.site] = {
            "counters": counters,
            "sums": sums,
            "max_value": mx,
            "min_value": mn,
            "unit_active": active,
            "unit_saturated": saturated,
        }
    return out


def reduce_to_host(
    states: Sequence[SiteState],
    names: Sequence[str],
    device: torch.device,
    all_gather: Callable[[Tensor], Tensor] | None = None,
    samples: Sequence[Tensor] = (),
) -> tuple[dict[str, dict], list[list[float]]]:
    """Pack, optionally combine across processes, and copy to the host once.

    ``all_gather`` maps a 1-D tensor to a ``(world_size, N)`` tensor (one collective). ``samples``
    are rank-local histogram samples copied in the same transfer.
    """
    layout = make_layout(names, states)
    packed = pack_states(states, device)
    if all_gather is not None and packed.numel():
        packed = combine_gathered(all_gather(packed), layout.ops)
    sizes = [int(s.numel()) for s in samples]
    if sizes:
        packed = torch.cat([packed] + [s.to(packed.device, packed.dtype) for s in samples])
    host = packed.cpu().tolist()  # the one device-to-host copy of the log step
    totals = unpack(host[: layout.size], layout)
    out_samples, offset = [], layout.size
    for n in sizes:
        out_samples.append(host[offset : offset + n])
        offset += n
    return totals, out_samples


def totals_to_stats(totals: dict[str, dict], **thresholds: float) -> dict[str, SiteStats]:
    return {name: window_stats(**t, **thresholds) for name, t in totals.items()}
