"""MonitorState: what the parts of the monitor share, declared once with its types.

:class:`~act_diagnostics.core.monitor.ActivationMonitor` is one object made of one part per concern
(lifecycle.py, discovery.py, calls.py, consumers.py, gradients.py, reruns.py, windows.py), each a
mixin. Every part inherits this class, so each type-checks on its own: the state they share, and
the methods each part offers the others, are declared here, with :class:`RerunSlot`, the one value
two parts (reruns.py and gradients.py) hand each other besides the site states.

The declarations are class-level annotations only: nothing here exists on the instance or the
class at runtime (no property, no descriptor, no default), so the hooks read the shared state with
plain instance-attribute lookups. The values are set by ``ActivationMonitor.__init__``, or by the
part named as the owner in its ``_init_*`` method. A part's private state used by no other part is
declared where that part sets it up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    import torch.nn as nn
    from torch import Tensor

    from act_diagnostics.core.config import MonitorConfig
    from act_diagnostics.core.extras import ExtraTotals
    from act_diagnostics.core.facts import BatchFacts
    from act_diagnostics.core.network import NetworkWatch
    from act_diagnostics.core.sites import Site
    from act_diagnostics.core.state import SiteState
    from act_diagnostics.core.structure import StructureFacts
    from act_diagnostics.core.tracer import ActivationTracer


@final  # never subclassed: the gradient hook tells a slot from a SiteState by its exact type
class RerunSlot:
    """The site state a checkpointed call's re-run owes its gradient to, set once known."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: SiteState | None = None


class MonitorState:
    """The state the monitor's parts share (owner: who writes it), and the methods they call on
    each other (implemented by the part named)."""

    # ------------------------------------------------------------------ set once, by the monitor
    model: nn.Module  # monitor: the model watched
    config: MonitorConfig  # monitor: the options, validated
    functional: bool  # monitor: functional calls (F.relu) are measured, not only modules (the tracer reads it)
    # monitor: attention logits, log Z, router loads; calls and the tracer (logits.py, routers.py) fill it, windows reads
    extras: ExtraTotals
    network: NetworkWatch  # monitor: whole-model facts; discovery, monitor and the tracer report, windows reads
    batch_facts: BatchFacts  # monitor: the batch's rows and spread; lifecycle notes, windows reads
    _facts: StructureFacts  # monitor: structural facts; discovery and calls report, lifecycle clears, windows reads
    _tracer: ActivationTracer  # monitor: the TorchFunctionMode; lifecycle and reruns put it on the stack

    # ------------------------------------------------------------------ sites and windows
    sites: dict[str, Site]  # discovery (_state_for): site name -> Site
    states: dict[str, SiteState]  # discovery (_state_for): site name -> its on-device totals
    eval_only: set[str]  # discovery adds, calls removes: sites measured only in evaluation batches so far
    steps: int  # lifecycle (end_step): training steps counted
    window_steps: int  # lifecycle (end_step) counts, windows resets: measured steps in the current window
    param_scales: dict[str, float]  # lifecycle (attach): largest |value| of each parameter but the biases
    _names: dict[int, str]  # lifecycle (attach): id(module) -> its name in the model
    # gradients sets it up, the user or the callback assigns: the loss scale backward ran with (float16 AMP)
    grad_scale: Callable[[], Tensor | float | None] | None
    failure: BaseException | None  # monitor (_fail): the error that disabled the monitor

    # ------------------------------------------------------------------ the open step (read by every hook)
    enabled: bool  # lifecycle (the step protocol), monitor (_fail): a step is being measured
    learning_structure: bool  # lifecycle, monitor (_fail): this step records structural facts
    detail: bool  # lifecycle: this step also records histograms, input moments, non-finite counts
    activation_depth: int  # calls (the activation pre-hook and hook), lifecycle resets: >0 inside an activation module
    _training: bool  # lifecycle (begin_step): the open step is a training step, not an evaluation batch
    _measured_in_step: bool  # calls (_observe), lifecycle resets: the open step measured a call
    _forward_in_step: bool  # lifecycle: the open step ran the model's forward
    _deferred: bool  # lifecycle (begin_step): this window's sites defer their results; discovery reads
    _tracer_entered: bool  # lifecycle: the tracer is on torch's function-mode stack
    _stopped_for_jit_trace: bool  # lifecycle, monitor (_fail): measuring stopped for a torch.jit.trace

    if TYPE_CHECKING:
        # -------------------------------------------------------------- monitor.py
        def _fail(self, exc: BaseException) -> None: ...

        def _no_torch_function(self) -> Any: ...

        @property
        def losses_seen(self) -> dict[str, dict[str, Any]]: ...

        # -------------------------------------------------------------- lifecycle.py
        def attach(self) -> Any: ...

        def detach(self) -> None: ...

        def begin_step(self, detail: bool = False, training: bool = True) -> None: ...

        def end_step(self, training: bool = True, count: bool = True) -> None: ...

        def close_step(self, training: bool = True) -> None: ...

        def _hook_count(self) -> int: ...

        # -------------------------------------------------------------- discovery.py
        @property
        def _owner(self) -> str: ...

        @property
        def _found_functional_sites(self) -> bool: ...

        @property
        def in_module_forward(self) -> bool: ...

        def _discovery_sizes(self) -> dict[str, int]: ...

        def _restart_call_positions(self) -> None: ...

        def _next_call(self, base: str) -> str: ...

        def _state_for(self, name: str, create: Callable[[], Site | None]) -> SiteState | None: ...

        def _make_site(
            self, name: str, kind: str, source: str, owner: str, type_name: str, x: Any, y: Tensor, params: dict[str, Any]
        ) -> Site: ...

        def _new_module_site(self, name: str, module: nn.Module, y: Tensor, args: tuple[Any, ...]) -> Site | None: ...

        def _new_functional_site(
            self,
            name: str,
            owner: str,
            func: Callable[..., Any],
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            x: Any,
            y: Tensor,
        ) -> Site: ...

        def _module_pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None: ...

        def _module_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None: ...

        def _warn_nothing_found(self) -> None: ...

        # -------------------------------------------------------------- calls.py
        def _observe(
            self, name: str, state: SiteState, x: Tensor | None, y: Tensor, pending: tuple[Tensor, int] | None
        ) -> bool: ...

        def _activation_pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None: ...

        def _activation_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None: ...

        def _call_sizes(self) -> dict[str, int]: ...

        def _clear_call_refs(self) -> None: ...

        # -------------------------------------------------------------- consumers.py
        @property
        def reads_functional_at_consumers(self) -> bool: ...

        def _forget_consumers(self) -> None: ...

        def _register_consumer_hooks(self) -> list[Any]: ...

        def _note_functional_output(self, name: str, y: Tensor) -> None: ...

        def _note_consumer_candidate(self, module: nn.Module, args: tuple[Any, ...]) -> None: ...

        def _learn_consumers(self) -> None: ...

        def _start_consumer_reads(self) -> None: ...

        def _check_consumer_reads(self) -> None: ...

        def _clear_consumer_refs(self) -> None: ...

        # -------------------------------------------------------------- gradients.py
        def _hook_grad(self, y: Tensor, state: SiteState | RerunSlot) -> None: ...

        # -------------------------------------------------------------- reruns.py
        def _await_rerun_grad(self, key: int | str, state: SiteState) -> None: ...

        def _hook_rerun_grad(self, key: int | str, y: Tensor) -> None: ...

        def _resolve_reruns(self) -> None: ...

        def _maybe_enter_rerun_tracer(self, module: nn.Module) -> None: ...

        def _maybe_exit_rerun_tracer(self, module: nn.Module) -> None: ...

        def _clear_reruns(self) -> None: ...
