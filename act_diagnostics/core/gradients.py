"""Gradients: each site's output gradient, and the gradient norm of the layer feeding it.

:meth:`GradientMeasurement._hook_grad` hooks an activation output so backward hands its gradient
to the site's state (divided by the loss scale under float16 AMP, see ``grad_scale``).
:meth:`measure_param_grads` adds, before the optimizer step of a log step, the gradient norm of
each site's feeding layer, with FSDP2 shards (DTensor gradients) counted as the full gradient.

A mixin of :class:`~act_diagnostics.core.monitor.ActivationMonitor`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor

from act_diagnostics.core.modules import own_parameters
from act_diagnostics.core.monitor_state import MonitorState, RerunSlot
from act_diagnostics.core.state import SiteState


def local_shard(grad: Tensor) -> tuple[Tensor, int] | None:
    """A parameter gradient as a plain local tensor, and over how many ranks its elements are
    sharded. FSDP2 keeps gradients as DTensors sharded over the mesh: each rank adds its shard's
    squared norm times the shard count, so the sum over ranks divided by the summed step count
    (what the cross-rank reduction computes) is the full gradient's squared norm. A gradient with
    pending partial sums has no meaningful local norm: None."""
    grad = grad.detach()
    placements = getattr(grad, "placements", None)
    if placements is None:
        return grad, 1
    # A DTensor, read by its attributes: torch.distributed.tensor is not importable on every build.
    sharded: Any = grad
    count = 1
    for size, placement in zip(sharded.device_mesh.shape, placements):
        if placement.is_partial():
            return None
        if placement.is_shard():
            count *= size
    return sharded.to_local(), count


class GradientMeasurement(MonitorState):
    """Activation-gradient hooks and feeding-layer parameter gradient norms."""

    def _init_gradients(self) -> None:
        self.grad_scale = None  # no loss scale to divide by until one is set (float16 AMP)

    def _hook_grad(self, y: Tensor, state: SiteState | RerunSlot) -> None:
        """Measure the gradient with respect to ``y`` when backward reaches it.

        A pre-hook on the node that made ``y`` receives the same gradient as a hook on ``y`` (a
        hook on a tensor later changed inplace receives its old value's gradient too) and costs
        less to register. Views keep the tensor hook: autograd may rebuild their node.
        """
        node = y.grad_fn
        if node is None or y._is_view():
            y.register_hook(partial(self._grad_hook, state, self.detail))
        else:
            node.register_prehook(partial(self._grad_prehook, state, self.detail, y.output_nr))

    def _grad_prehook(self, state: SiteState | RerunSlot, detail: bool, index: int, grads: tuple[Tensor | None, ...]) -> None:
        grad = grads[index]
        if grad is not None:
            self._grad_hook(state, detail, grad)

    def _grad_hook(self, state: SiteState | RerunSlot, detail: bool, grad: Tensor) -> None:
        if self.failure is not None:
            return
        try:
            if type(state) is RerunSlot:  # a checkpointed call's re-run (_hook_rerun_grad)
                if state.state is None:
                    self._resolve_reruns()
                target = state.state
                if target is None:
                    return
            else:
                target = state
            with torch._C.DisableTorchFunction():
                target.observe_grad(grad, detail, None if self.grad_scale is None else self.grad_scale())
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def measure_param_grads(self) -> None:
        """Add the gradient norm of each site's feeding layer (call before the optimizer step).

        Lightning calls this from ``on_before_optimizer_step`` on log steps, where AMP gradients
        are already unscaled.
        """
        if self.failure is not None:
            return
        try:
            modules = dict(self.model.named_modules())
            grads: list[Tensor] = []
            shards: list[int] = []
            owners: list[SiteState] = []
            for name, site in self.sites.items():
                layer = modules.get(site.feeding_layer) if site.feeding_layer is not None else None
                if layer is None:
                    continue
                for p in own_parameters(layer):
                    local = local_shard(p.grad) if p.grad is not None else None
                    if local is not None:
                        grads.append(local[0])
                        shards.append(local[1])
                        owners.append(self.states[name])
            if not grads:
                return
            with self._no_torch_function():
                norms = torch._foreach_norm([g.float() if g.dtype in (torch.float16, torch.bfloat16) else g for g in grads])
                by_state: dict[int, list[Tensor]] = {}
                for state, n, k in zip(owners, norms, shards):
                    by_state.setdefault(id(state), []).append(n.double().pow(2) * k)
                for state in {id(s): s for s in owners}.values():
                    state.observe_param_grad_sq(torch.stack(by_state[id(state)]).sum(), skip_nonfinite=self.grad_scale is not None)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
