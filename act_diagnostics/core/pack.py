"""Every site's window totals in one tensor: one collective and one host copy per log step.

Each :class:`SiteState` keeps its device totals in one flat vector, ``[sums..., max_abs,
unit_active..., unit_saturated...]``; its host counters are Python ints. :func:`share_buffer` places
the device totals of all sites consecutively in one buffer, so that a log step reads them as a
single view (no concatenation) and :func:`reset_states` zeroes them with one op.

For a collective, :func:`pack_states` puts the counters in front, ``[counters of every site...,
device totals of every site...]``; :class:`Layout` records how each column combines across
processes (sum, or max for max |value|), so a distributed strategy can all-gather the packed vector
once and combine it with :func:`combine_gathered`. Histogram samples are rank-local and travel in a
second part of the same host copy, never through the collective.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from act_diagnostics.core.snapshot import DEAD_UNIT_RATE, SiteStats, window_stats
from act_diagnostics.core.state import COUNTERS, MAX_ABS, N_SUMS, SiteState, totals_size

SUM_NAMES = (
    "sum", "sumsq", "grad_sumsq", "sat_rows", "nonfinite", "in_sum", "in_sumsq", "param_grad_sq", "target_outside",
    "grad_skipped", "param_grad_skipped", "target_rows_off",
)
assert len(SUM_NAMES) == N_SUMS

OP_SUM, OP_MAX = 0, 1


@dataclass
class Span:
    """Where one site's device totals sit in the totals part of the packed vector."""

    site: str
    offset: int
    n_units: int
    has_saturated_units: bool

    @property
    def size(self) -> int:
        return totals_size(self.n_units, self.has_saturated_units)


class Layout:
    """The packed vector: every site's counters, then every site's device totals."""

    def __init__(self, spans: list[Span]) -> None:
        self.spans = spans
        self.n_counters = len(spans) * len(COUNTERS)
        self.totals_size = sum(span.size for span in spans)
        self.size = self.n_counters + self.totals_size

    @functools.cached_property
    def ops(self) -> Tensor:
        """int8 per column of the packed vector: OP_SUM or OP_MAX. Built only for a collective."""
        ops = torch.full((self.size,), OP_SUM, dtype=torch.int8)
        for span in self.spans:
            ops[self.n_counters + span.offset + MAX_ABS] = OP_MAX
        return ops


def make_layout(names: Sequence[str], states: Sequence[SiteState]) -> Layout:
    spans, offset = [], 0
    for name, st in zip(names, states):
        span = Span(name, offset, st.n_units, st.unit_saturated is not None)
        spans.append(span)
        offset += span.size
    return Layout(spans)


# ---------------------------------------------------------------------------------------- one buffer
def shared_view(states: Sequence[SiteState]) -> Tensor | None:
    """The states' device totals as one view, if they lie consecutively in one buffer (else None)."""
    if not states:
        return None
    first = states[0].totals
    base = first._base if first._base is not None else first
    start = end = first.storage_offset()
    for st in states:
        t = st.totals
        if (t._base if t._base is not None else t) is not base or t.storage_offset() != end:
            return None
        end += t.numel()
    return base.view(-1)[start:end] if base.dim() == 1 else None


def share_buffer(states: Sequence[SiteState], device: torch.device) -> None:
    """Move the states' device totals, values kept, into consecutive views of one new buffer."""
    if not states:
        return
    dtype = states[0].totals.dtype
    with torch.inference_mode(False):
        data = torch.cat([st.totals.to(device, dtype) for st in states])
    offset = 0
    for st in states:
        st.bind(data[offset : offset + st.totals_size])
        offset += st.totals_size


def device_totals(states: Sequence[SiteState], device: torch.device) -> Tensor:
    """Every site's device totals, in order, as one vector on ``device`` (a view when shared)."""
    view = shared_view(states)
    if view is not None and view.device == device:
        return view
    if not states:
        return torch.zeros(0, dtype=torch.float64, device=device)
    dtype = states[0].totals.dtype
    return torch.cat([st.totals.to(device, dtype) for st in states])


def reset_states(states: Sequence[SiteState]) -> None:
    """Start a new window for every state: one zero_ when their totals share a buffer."""
    view = shared_view(states)
    if view is not None:
        view.zero_()
    for st in states:
        st.reset(totals=view is None)


def _counters(states: Sequence[SiteState]) -> list[int]:
    return [c for st in states for c in st.counters]


def pack_states(states: Sequence[SiteState], device: torch.device) -> Tensor:
    """The vector a collective sees: counters, then device totals, on ``device``. No host sync."""
    totals = device_totals(states, device)
    # Host counters go over in one small host-to-device copy (never a sync on the way back).
    counters = torch.tensor(_counters(states), dtype=totals.dtype).to(device, non_blocking=True)
    return torch.cat((counters, totals))


def combine_gathered(gathered: Tensor, ops: Tensor) -> Tensor:
    """Combine an all-gathered ``(world_size, N)`` packed tensor column by column."""
    ops = ops.to(gathered.device)
    return torch.where(ops == OP_MAX, gathered.amax(0), gathered.sum(0))


def unpack(counters: Sequence[float], totals: np.ndarray, layout: Layout) -> dict[str, dict]:
    """Split host copies of the counters and of the device totals back into per-site totals."""
    out: dict[str, dict] = {}
    k = len(COUNTERS)
    for i, span in enumerate(layout.spans):
        c = counters[i * k : (i + 1) * k]
        v = totals[span.offset : span.offset + span.size]
        units = v[MAX_ABS + 1 :]
        # Unit counts stay floats: exact integers, or NaN when a NaN output reached a sign count.
        out[span.site] = {
            "counters": {name: int(round(c[j])) for j, name in enumerate(COUNTERS)},
            "sums": dict(zip(SUM_NAMES, v[:N_SUMS].tolist())),
            "max_abs": float(v[MAX_ABS]),
            "unit_active": units[: span.n_units],
            "unit_saturated": units[span.n_units :] if span.has_saturated_units else None,
        }
    return out


def reduce_to_host(
    states: Sequence[SiteState],
    names: Sequence[str],
    device: torch.device,
    all_gather: Callable[[Tensor], Tensor] | None = None,
    samples: Sequence[Tensor] = (),
    extras: Any = None,  # ExtraTotals (core/extras.py), reduced and copied with the sites
) -> tuple[dict[str, dict], list[list[float]]]:
    """Optionally combine across processes, then copy every total to the host once.

    ``all_gather`` maps a 1-D tensor to a ``(world_size, N)`` tensor (one collective); without it
    the counters never leave the host and the device totals are read as they lie (one shared
    buffer: no packing op). ``samples`` are rank-local histogram samples copied in the same transfer.
    """
    for st in states:
        st.fold()
    layout = make_layout(names, states)
    extra = extras.vector(device, states[0].totals.dtype if states else torch.float64) if extras else None
    if all_gather is not None and layout.size:
        packed, ops = pack_states(states, device), layout.ops
        if extra is not None:  # extra columns join the one collective, with their ops
            packed, ops = torch.cat((packed, extra[0])), torch.cat((ops, extra[1]))
        packed = combine_gathered(all_gather(packed), ops)
        n_counters = layout.n_counters
    else:
        packed = device_totals(states, device)
        n_counters = 0
        packed = packed if extra is None else torch.cat((packed, extra[0]))
    sizes = [int(s.numel()) for s in samples]
    if sizes:
        packed = torch.cat([packed] + [s.to(packed.device, packed.dtype) for s in samples])
    # The one device-to-host copy of the log step; copied again on the host, because on the CPU
    # .cpu() returns the shared buffer itself, which the next window zeroes.
    host = np.array(packed.cpu().numpy(), dtype=np.float64)
    counters = host[:n_counters].tolist() if n_counters else _counters(states)
    end = n_counters + layout.totals_size
    totals = unpack(counters, host[n_counters:end], layout)
    if extra is not None:
        extras.receive(host[end : end + extras.size])
        end += extras.size
    out_samples, offset = [], end
    for n in sizes:
        out_samples.append(host[offset : offset + n].tolist())
        offset += n
    return totals, out_samples


def totals_to_stats(totals: dict[str, dict[str, Any]], dead_unit_rate: float = DEAD_UNIT_RATE) -> dict[str, SiteStats]:
    return {name: window_stats(**t, dead_unit_rate=dead_unit_rate) for name, t in totals.items()}
