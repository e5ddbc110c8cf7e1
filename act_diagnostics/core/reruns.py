"""Checkpoint re-runs: the gradient a reentrant activation checkpoint's first forward could not give.

A reentrant checkpoint (``torch.utils.checkpoint(..., use_reentrant=True)``) runs its region's
first forward under no_grad: the calls are measured, but their outputs carry no gradient to hook,
so they wait (:meth:`CheckpointReruns._await_rerun_grad`). Backward re-runs the region with grad
enabled; each re-run call's output gets a gradient hook whose :class:`~act_diagnostics.core.monitor_state.RerunSlot` is matched to
its waiting first call once the region's re-run is over (:meth:`_resolve_reruns`). The call is
measured once; only its gradient comes from the re-run. Non-reentrant checkpointing hooks the
first forward, so nothing waits for its re-run.

Autograd runs backward with an empty function-mode stack: functional calls inside a re-run are
seen by entering the tracer for the duration of one module's re-run (:meth:`_enter_rerun_tracer`).

A mixin of :class:`~act_diagnostics.core.monitor.ActivationMonitor`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from act_diagnostics.core.monitor_state import MonitorState, RerunSlot
from act_diagnostics.core.state import SiteState


class CheckpointReruns(MonitorState):
    """Sites waiting for their gradient, and the re-runs that bring it."""

    def _init_reruns(self) -> None:
        # Sites called this pass with no gradient to hook (a reentrant checkpoint's first forward
        # runs under no_grad): their re-run in backward carries the gradient instead. Keyed by
        # id(module) for module sites, by the call's base name for functional ones.
        self._awaiting_grad: dict[int | str, list[SiteState]] = {}
        self._rerun_slots: dict[int | str, list[RerunSlot]] = {}  # re-run calls not yet matched to theirs
        self._rerun_tracer_module: nn.Module | None = None  # see _enter_rerun_tracer

    def _clear_reruns(self) -> None:
        self._awaiting_grad.clear()
        self._rerun_slots.clear()
        self._rerun_tracer_module = None  # backward is over: autograd dropped its mode stack

    def _await_rerun_grad(self, key: int | str, state: SiteState) -> None:
        """A call measured without a gradient to hook: its re-run in backward may bring one."""
        self._awaiting_grad.setdefault(key, []).append(state)

    def _hook_rerun_grad(self, key: int | str, y: Tensor) -> None:
        """A reentrant checkpoint re-runs its region in backward with grad enabled: the re-run
        output's gradient is the one the first, no_grad forward could not give. ``key`` is the
        first call's key in ``_awaiting_grad`` (id(module), or a functional call's base name)."""
        if not self._awaiting_grad.get(key) or not y.requires_grad:
            return
        try:
            # Backward re-runs checkpointed regions last first, and the calls inside one region in
            # forward order: a region that made k calls owes their gradients to the last k waiting
            # calls, first to first. k is known once the region's re-run is over, when its own
            # backward starts and the first of these hooks fires (_resolve_reruns).
            slot = RerunSlot()
            self._rerun_slots.setdefault(key, []).append(slot)
            self._hook_grad(y, slot)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _resolve_reruns(self) -> None:
        """Give each call re-run since the last resolution its waiting first call (see above)."""
        for key, slots in self._rerun_slots.items():
            waiting = self._awaiting_grad.get(key, [])
            k = min(len(slots), len(waiting))
            for slot, state in zip(slots[len(slots) - k :], waiting[len(waiting) - k :]):
                slot.state = state
            del waiting[len(waiting) - k :]
        self._rerun_slots.clear()

    def _maybe_enter_rerun_tracer(self, module: nn.Module) -> None:
        """A module's re-run starts in backward: see its functional calls if any functional call waits."""
        if self._rerun_tracer_module is None and any(isinstance(key, str) for key in self._awaiting_grad):
            self._enter_rerun_tracer(module)

    def _maybe_exit_rerun_tracer(self, module: nn.Module) -> None:
        if self._rerun_tracer_module is module:
            self._exit_rerun_tracer()

    def _enter_rerun_tracer(self, module: nn.Module) -> None:
        """Put the tracer on the function-mode stack for one module's re-run in backward.

        Autograd runs backward with an empty function-mode stack, so the tracer of the forward
        pass cannot see a reentrant checkpoint's re-run; functional calls made inside a module of
        that re-run are seen this way, and their gradient read (:meth:`_hook_rerun_grad`)."""
        self._tracer.__enter__()
        self._rerun_tracer_module = module

    def _exit_rerun_tracer(self) -> None:
        self._rerun_tracer_module = None
        stack = torch.overrides._get_current_function_mode_stack()
        if stack and stack[-1] is self._tracer:  # never pop a mode that is not ours
            self._tracer.__exit__(None, None, None)
