"""Reducing statistics across ranks: one statistics all-gather per log step, made safe.

Before the statistics' own all-gather, every rank takes part in a tiny one of
``(healthy, sites, checksum)``: packed vectors must have the same layout on every rank, or the
gather would hang or mix unrelated columns. Layouts differ when a data-dependent branch runs an
activation on some ranks only; health differs when diagnostics failed on one rank. Every rank sees
the same rows and so takes the same decision; after a mismatch no rank gathers again and statistics
stay per-rank (rank zero's are logged), with one warning.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable
from typing import Any

import torch

from act_diagnostics.callbacks import compat
from act_diagnostics.callbacks.compat import world_size


class DistributedMismatch(RuntimeWarning):
    """Issued once (rank zero) when ranks cannot be reduced together; statistics become per-rank."""


def all_gather_fn(trainer: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``t -> (world_size, N)`` through the trainer's strategy, or None on one process."""
    return compat.all_gather(trainer) if world_size(trainer) > 1 else None


def layout_signature(monitor: Any) -> tuple[int, int]:
    """(sites, checksum of names and widths): equal on two ranks iff their packed layouts match."""
    states = monitor.states if monitor is not None else {}
    text = ";".join(f"{n}:{st.n_units}:{int(st.unit_saturated is not None)}" for n, st in states.items())
    extras = getattr(monitor, "extras", None)  # losses' log Z, routers: columns beside the sites'
    if extras is not None:
        text += "|" + extras.signature()
    return len(states), zlib.crc32(text.encode())


class RankCheck:
    """Decides, once per log step and identically on every rank, whether to reduce across ranks."""

    def __init__(self) -> None:
        self.diverged = False

    def agree(self, trainer: Any, monitor: Any, healthy: bool) -> bool:
        world = world_size(trainer)
        if world <= 1:
            return True
        if self.diverged:
            return False
        n_sites, checksum = layout_signature(monitor) if healthy else (0, 0)
        mine = torch.tensor([float(healthy), float(n_sites), float(checksum)], dtype=torch.float64, device=compat.root_device(trainer))
        rows = compat.all_gather(trainer)(mine).cpu().tolist()
        if all(row == rows[0] for row in rows) and rows[0][0] == 1.0:
            return True
        self.diverged = True
        if healthy and compat.is_global_zero(trainer):
            warnings.warn(
                f"act_diagnostics cannot reduce statistics across ranks: {_why(rows)}. From now on "
                "statistics and findings are per-rank and rank zero's are logged. Make every rank run "
                "the same activations (e.g. run both branches, or exclude=[...] the conditional sites).",
                DistributedMismatch,
                stacklevel=3,
            )
        return False

    def answer_disabled(self, trainer: Any) -> None:
        """A disabled rank still takes part in the check, so the others never wait for it."""
        try:
            self.agree(trainer, None, healthy=False)
        except Exception:  # noqa: BLE001 - already disabled and warned; training goes on
            self.diverged = True


def _why(rows: list[list[float]]) -> str:
    failed = [rank for rank, row in enumerate(rows) if row[0] != 1.0]
    if failed:
        return f"diagnostics stopped after an internal error on rank(s) {failed}"
    sites = ", ".join(f"rank {rank}: {int(row[1])}" for rank, row in enumerate(rows))
    return f"the ranks saw different activation sites ({sites} sites; a data-dependent branch or a module used on some ranks only?)"
