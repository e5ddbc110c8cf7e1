"""Window totals that belong to no activation site: attention logits, log Z, router loads.

The transformer statistics (issue 19) are kept beside the sites' totals, in the same single host
copy and the same collective: each entry is a small device vector whose columns combine across
processes by sum (counts, sums) or by max (largest values), as :class:`~act_diagnostics.core.pack.Layout`
does for the sites. Columns reduced by max start a window at -inf, so a window without a value
reads as "not measured" and a negative maximum (a log Z below 0) is kept as it is.

Entries are created at their first measured call and keep their place: on every rank the same
model makes the same calls in the same order, so the vectors line up (see :meth:`signature`).
Everything a hook adds stays on the device; nothing here syncs.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from act_diagnostics.core.state import accumulator_dtype

OP_SUM, OP_MAX = 0, 1  # as core/pack.py

# Entry kinds (what its columns mean); see the modules that fill them.
ATTENTION_LOGITS = "attention_logits"  # core/attention.py: per head, largest pre-softmax logit (max)
LOG_Z = "log_z"  # core/logits.py: [sum, count, max, -min] of logsumexp over the classes
ROUTER = "router"  # core/routers.py: [tokens per expert..., router probability per expert..., rows]


@dataclass
class _Entry:
    kind: str
    values: Tensor
    ops: tuple[int, ...]
    is_max: Tensor | None = None  # mixed columns: which reduce by max (built once, on the device)


class ExtraTotals:
    """Named device vectors of one window, read and reset with the sites' totals."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        # Host values of the last snapshot: key -> (kind, numpy vector).
        self.last: dict[str, tuple[str, np.ndarray]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        return list(self._entries)

    def kind(self, key: str) -> str | None:
        entry = self._entries.get(key)
        return None if entry is None else entry.kind

    def _entry(self, key: str, kind: str, ops: Sequence[int], device: torch.device) -> _Entry:
        entry = self._entries.get(key)
        if entry is None or len(entry.ops) != len(ops) or entry.kind != kind:
            with torch.inference_mode(False):
                values = _initial(tuple(ops), device)
            entry = self._entries[key] = _Entry(kind, values, tuple(ops))
        elif entry.values.device != device:
            with torch.inference_mode(False):
                entry.values = entry.values.to(device, accumulator_dtype(device))
        return entry

    def accumulate(self, key: str, kind: str, values: Tensor, ops: Sequence[int]) -> None:
        """Add ``values`` (a 1-D device tensor) to entry ``key``: sums where ``ops`` is OP_SUM,
        running maxima where it is OP_MAX. A few device ops; no sync."""
        entry = self._entry(key, kind, ops, values.device)
        v = values.detach().to(entry.values.dtype)
        total = entry.values
        if all(op == OP_SUM for op in entry.ops):
            total.add_(v)
        elif all(op == OP_MAX for op in entry.ops):
            torch.maximum(total, v, out=total)
        else:
            if entry.is_max is None or entry.is_max.device != total.device:
                entry.is_max = _is_max(entry.ops, total.device)
            total.copy_(torch.where(entry.is_max, torch.maximum(total, v), total + v))

    def vector(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor] | None:
        """Every entry's values in order, as one vector on ``device``, and its ops (int8), or None
        when there is nothing."""
        if not self._entries:
            return None
        values = torch.cat([e.values.to(device, dtype) for e in self._entries.values()])
        ops = torch.tensor([op for e in self._entries.values() for op in e.ops], dtype=torch.int8)
        return values, ops

    @property
    def size(self) -> int:
        return sum(len(e.ops) for e in self._entries.values())

    def receive(self, host: np.ndarray) -> None:
        """Split the host copy of :meth:`vector` into :attr:`last` (``-inf`` maxima: not measured)."""
        out, offset = {}, 0
        for key, e in self._entries.items():
            n = len(e.ops)
            out[key] = (e.kind, np.array(host[offset : offset + n], dtype=np.float64))
            offset += n
        self.last = out

    def reset(self) -> None:
        """Start a new window: sums at 0, maxima at -inf."""
        for e in self._entries.values():
            e.values.copy_(_initial(e.ops, e.values.device))

    def signature(self) -> str:
        """Keys, kinds and widths: equal on two ranks iff their vectors line up (for a rank check)."""
        text = ";".join(f"{k}:{e.kind}:{len(e.ops)}" for k, e in self._entries.items())
        return f"{len(self._entries)}:{zlib.crc32(text.encode())}"


def _runs(ops: tuple[int, ...]) -> list[tuple[int, int]]:
    """(op, length) of each run of equal ops, in order."""
    runs: list[tuple[int, int]] = []
    for op in ops:
        if runs and runs[-1][0] == op:
            runs[-1] = (op, runs[-1][1] + 1)
        else:
            runs.append((op, 1))
    return runs


def _initial(ops: tuple[int, ...], device: torch.device) -> Tensor:
    """Sums at 0, maxima at -inf, filled on the device (no host-to-device copy inside a hook)."""
    dtype = accumulator_dtype(device)
    parts = [torch.full((n,), float("-inf") if op == OP_MAX else 0.0, dtype=dtype, device=device) for op, n in _runs(ops)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _is_max(ops: tuple[int, ...], device: torch.device) -> Tensor:
    parts = [torch.full((n,), op == OP_MAX, dtype=torch.bool, device=device) for op, n in _runs(ops)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def measured_max(value: float) -> float | None:
    """A max column read back: None where nothing was measured (-inf), else the value (NaN kept)."""
    return None if value == float("-inf") else float(value)

