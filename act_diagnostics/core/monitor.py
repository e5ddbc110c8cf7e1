"""ActivationMonitor: finds every activation site of a model and keeps its statistics on the device.

Torch only; the Lightning callbacks drive it through :meth:`begin_step`, :meth:`end_step` and
:meth:`snapshot`. Used on its own::

    with ActivationMonitor(model) as mon:
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step(); opt.zero_grad()
            mon.step()
        snap = mon.snapshot()       # one device-to-host copy
    print(snap.stats["net.1"].firing_rate)

Lifecycle: :meth:`attach` is idempotent; hooks are registered by the first measured step
(:meth:`begin_step`), :meth:`pause` removes them until the next one (the callback pauses on steps
it does not measure, so those run the bare model), and :meth:`detach` removes them all and is safe
to call twice. After the first steps only the activation modules and the model itself carry hooks,
unless functional sites need the owner names. Hooks never raise into training: an internal error
disables the monitor with one warning (see :attr:`failure`).

With float16 AMP (a ``GradScaler``) in a hand-written loop, set ``mon.grad_scale`` to a function
returning the scale backward ran with (``scaler.get_scale``, or ``lambda: scaler._scale`` to avoid
a host sync): activation gradients are divided by it before they are measured. The Lightning
callback does this itself.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from act_diagnostics.core.attention import ATTENTION, read_attention
from act_diagnostics.core.config import MonitorConfig, selects
from act_diagnostics.core.network import NetworkWatch  # corpus: whole-model facts (layer links, input, losses)
from act_diagnostics.core.kinds import (
    FUNCTIONAL_KINDS,
    KINDS,
    functional_name,
    functional_params,
    module_kind,
    module_params,
    output_range,
    prepare_thresholds,
)
from act_diagnostics.core.pack import reduce_to_host, reset_states, share_buffer, shared_view, totals_to_stats
from act_diagnostics.core.sites import Site, call_name, default_unit_dim, functional_base
from act_diagnostics.core.snapshot import Snapshot
from act_diagnostics.core.state import SiteState, input_moments
from act_diagnostics.core.tracer import REGRESSION_LOSSES, ActivationTracer

# A window's measured steps after its first DEFER_AFTER_STEPS defer each call's results to one
# fold per site at the snapshot (SiteState.deferred). A fold costs about what two steps of adds
# cost, so a window logged every step or two never defers.
DEFER_AFTER_STEPS = 2


class MonitorFailure(RuntimeWarning):
    """Issued once when an internal error disables the monitor; training goes on."""


@dataclass
class WindowStash:
    """A window set aside by :meth:`ActivationMonitor.stash_window`: per site, a copy of its device
    totals and its host counters and samples."""

    sites: dict[str, tuple[Tensor, list[int], Tensor | None, Tensor | None, int]]
    window_steps: int


class SettingError(ValueError):
    """A setting that proves wrong only on the model's outputs (``unit_dim`` out of range for a
    site): raised inside a hook, it disables the monitor with a warning that names the setting."""


class UnmeasuredModules(UserWarning):
    """Issued once at attach for submodules that cannot be measured (TorchScript: no Python hooks)."""


def _first_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    return None


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for item in value for v in _tensors(item)]
    if isinstance(value, dict):
        return [v for item in value.values() for v in _tensors(item)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [v for f in dataclasses.fields(value) for v in _tensors(getattr(value, f.name, None))]
    return []


def compiled_modules(model: nn.Module) -> list[str]:
    """Names of ``model``'s torch.compile'd modules: ``torch.compile(m)`` wrappers, and modules
    compiled in place with ``m.compile()`` (the root is ``"<model>"``)."""
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - torch without dynamo
        OptimizedModule = ()  # noqa: N806
    return [
        name or "<model>"
        for name, m in model.named_modules()
        if isinstance(m, OptimizedModule) or getattr(m, "_compiled_call_impl", None) is not None
    ]


def own_parameters(module: nn.Module) -> list[nn.Parameter]:
    """A layer's own parameters, including those a parametrization keeps for it (weight_norm,
    spectral_norm: ``parametrizations.weight.original0/1``), not those of its child layers."""
    params = list(module.parameters(recurse=False))
    parametrizations = getattr(module, "parametrizations", None)
    if isinstance(parametrizations, nn.Module):
        params += list(parametrizations.parameters())
    return params


def _has_params(module: nn.Module) -> bool:
    return bool(own_parameters(module))


def _in_backward() -> bool:
    """True while autograd runs a backward pass (activation checkpointing re-runs forward there)."""
    return torch._C._current_graph_task_id() != -1


def _toggle(handles: list[Any], wanted: bool, register: Callable[[], list[Any]]) -> None:
    """Register a group of hooks (``register`` returns their handles) if wanted and absent, or
    remove them if present and not wanted."""
    if wanted and not handles:
        handles.extend(register())
    elif not wanted and handles:
        for handle in handles:
            handle.remove()
        handles.clear()


def _rank_zero() -> bool:
    """Whether this process should warn: warnings come from rank zero only under torch.distributed."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _reads_classes(shape: torch.Size, unit_dim: int, value: Tensor, reordered: bool) -> bool:
    """Whether ``value``, a loss input made from an output of ``shape``, holds at least two of its
    classes (units) side by side: the whole output or a reshape of it, a subset of rows
    (``probs[mask]``, also after moving the classes last), or classes sliced with the dims kept
    (``probs[:, :-1]``); not one class (``probs[:, 1]``, ``probs[..., 1:2]``)."""
    if value.numel() >= shape.numel():
        return True
    if value.dim() == len(shape) and not reordered:
        return value.shape[unit_dim] >= 2
    if tuple(value.shape) == tuple(shape[:unit_dim]) + tuple(shape[unit_dim + 1 :]):
        return False  # the class dim indexed away: one class, whatever the other sizes
    # Rows selected or merged: the classes survive as the last dim, whole.
    classes = shape[unit_dim]
    last = unit_dim == len(shape) - 1 or reordered
    return last and classes >= 2 and value.dim() >= 1 and value.shape[-1] == classes


class _RerunSlot:
    """The site state a checkpointed call's re-run owes its gradient to, set once known."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: SiteState | None = None


def _unattached_monitor() -> "ActivationMonitor":
    """What a copied or unpickled monitor becomes (see ActivationMonitor.__reduce__)."""
    return ActivationMonitor(nn.Module())


def _local_shard(grad: Tensor) -> tuple[Tensor, int] | None:
    """A parameter gradient as a plain local tensor, and over how many ranks its elements are
    sharded. FSDP2 keeps gradients as DTensors sharded over the mesh: each rank adds its shard's
    squared norm times the shard count, so the sum over ranks divided by the summed step count
    (what the cross-rank reduction computes) is the full gradient's squared norm. A gradient with
    pending partial sums has no meaningful local norm: None."""
    grad = grad.detach()
    placements = getattr(grad, "placements", None)
    if placements is None:
        return grad, 1
    count = 1
    for size, placement in zip(grad.device_mesh.shape, placements):
        if placement.is_partial():
            return None
        if placement.is_shard():
            count *= size
    return grad.to_local(), count


class ActivationMonitor:
    """Watches every activation site of ``model``; see the module docstring for use."""

    def __init__(self, model: nn.Module, config: MonitorConfig | None = None, **options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(model, torch.jit.ScriptModule):
            raise TypeError(
                "`model` is a TorchScript module, which cannot carry the Python hooks act_diagnostics "
                "measures with: pass the eager nn.Module (script it after the diagnostic run)"
            )
        compiled = compiled_modules(model)
        if compiled:
            raise TypeError(
                f"`model` is torch.compile'd ({', '.join(compiled[:3])}): dynamo would trace the Python hooks "
                "act_diagnostics measures with into the graph, or skip them (pytorch/pytorch#117758). Pass the "
                "uncompiled module (a compiled module keeps it as `._orig_mod`), run the diagnostics, then compile"
            )
        if config is not None and options:
            raise TypeError("pass either `config` or keyword options, not both")
        if config is not None and not isinstance(config, MonitorConfig):
            raise TypeError(
                f"`config` must be a MonitorConfig, got {type(config).__name__}; pass its fields as keyword "
                "options instead (ActivationMonitor(model, include=[...]))"
            )
        unknown = sorted(set(options) - set(MonitorConfig.__dataclass_fields__))
        if unknown:
            valid = ", ".join(MonitorConfig.__dataclass_fields__)
            raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))} for ActivationMonitor; valid options: {valid}")
        self.model = model
        self.config = config if config is not None else MonitorConfig(**options)
        self.functional = self.config.functional  # measure functional calls (F.relu), not only modules
        self.sites: dict[str, Site] = {}
        self.states: dict[str, SiteState] = {}
        self.enabled = False  # measuring (a training step is running)
        self.detail = False  # this step also records histograms, input moments, non-finite counts
        self.tracking_structure = False
        self.activation_depth = 0  # >0 inside an activation module's forward
        self.steps = 0  # training steps seen (end_step calls)
        self.window_steps = 0
        self.failure: BaseException | None = None
        self._training = True  # the open step is a training step (not an evaluation batch)
        self._measured_in_step = False  # the open step measured a call (close_step counts it)
        self._forward_in_step = False  # the open step ran the model's forward
        self._stashed = False  # a training window is set aside (stash_window): this one is evaluation's
        self.eval_only: set[str] = set()  # sites measured only in evaluation batches so far
        self.losses_seen: dict[str, dict[str, Any]] = {}
        self._handles: list[Any] = []  # the model's pre-hook and the activation modules' hooks
        self._structure_handles: list[Any] = []  # every other module's hooks, while needed
        self._input_handles: list[Any] = []  # activation modules' pre-hooks, while needed
        self._activation_modules: list[nn.Module] = []
        self._structure_modules: list[nn.Module] = []
        self._names: dict[int, str] = {}
        self._owner_stack: list[str] = []
        self._calls: dict[str, int] = {}
        self._skipped: set[str] = set()
        self._pending_input: dict[int, tuple[Tensor, int]] = {}
        # Sites called this pass with no gradient to hook (a reentrant checkpoint's first forward
        # runs under no_grad): their re-run in backward carries the gradient instead. Keyed by
        # id(module) for module sites, by the call's base name for functional ones.
        self._awaiting_grad: dict[int | str, list[SiteState]] = {}
        self._rerun_slots: dict[int | str, list[_RerunSlot]] = {}  # re-run calls not yet matched to theirs
        # Returns the loss scale that backward ran with (float16 AMP's GradScaler), or None.
        self.grad_scale: Callable[[], Tensor | float | None] | None = None
        # id -> (site, via, tensor, dims reordered on the way: a transpose or permute).
        self._produced: dict[int, tuple[str, str, Tensor, bool]] = {}
        self._layer_out: dict[int, tuple[str, str, Tensor]] = {}
        self._output_shape: dict[str, torch.Size] = {}  # site -> shape of its latest output (structure steps)
        self._whole_losses: dict[str, set[str]] = {}  # site -> losses seen reading its classes
        self.network = NetworkWatch()  # corpus: whole-model facts, read in snapshot()
        self._tracer = ActivationTracer(self)
        self._tracer_on = False
        self._step_traces = False  # this step runs the tracer (begin_step decides)
        self._modes_below: list[Any] = []  # the function-mode stack the tracer was last entered on
        self._rerun_tracer_module: nn.Module | None = None  # see _enter_rerun_tracer
        self._attention_ok = True  # False once a call's attention weights could not be recomputed
        self._functional_sites = False
        # Functional sites measured without the tracer (see _learn_consumers): the module each
        # one's output goes straight into -> (site, the grad_fn type of the activation's output).
        self._consumers: dict[int, tuple[nn.Module, str, type]] = {}
        self._consumer_handles: list[Any] = []
        self._consumers_ok = False  # every functional site has such a consumer: no tracer needed
        self._consumer_reads: dict[int, int] = {}  # id(consumer) -> reads in the open step
        self._seen_consumers: dict[str, list[nn.Module]] = {}  # discovery: site -> modules it fed
        self._seen_grad_fn: dict[str, list[type | None]] = {}  # discovery: site -> grad_fn type per call
        self._functional_out: dict[int, tuple[str, Tensor]] = {}  # discovery: this pass's functional outputs
        self._module_calls: dict[int, int] = {}  # discovery: calls of each module
        self._attached = False
        self._deferred = False  # this step's sites defer their results (DEFER_AFTER_STEPS)
        self._traced = False  # measuring stopped for a torch.jit.trace of the model (_model_pre_hook)

    def __reduce__(self) -> tuple[Callable[[], "ActivationMonitor"], tuple[()]]:
        # The model's hooks are this monitor's bound methods, so copying or pickling the model while
        # they are on (an EMA or SWA copy made with deepcopy, torch.save(model)) would take the
        # monitor along: its windows, its tensors and the autograd node types it learned (which do not
        # pickle), and a copy whose forwards measure themselves. The copy's hooks get an unattached
        # monitor instead: they do nothing, and the copy trains and saves as the plain model would.
        return (_unattached_monitor, ())

    # ------------------------------------------------------------------ lifecycle
    @property
    def attached(self) -> bool:
        return self._attached

    def attach(self) -> "ActivationMonitor":
        """Attach to the model. Calling it again while attached does nothing.

        Hooks are registered when a step is measured (:meth:`begin_step`) and stay until
        :meth:`pause` or :meth:`detach`, so steps that are not measured run the bare model.
        """
        if self._attached:
            return self
        self._names = {id(module): name for name, module in self.model.named_modules()}
        # TorchScript submodules take no Python hooks, and their ops bypass the tracer.
        scripted = {id(m) for m in self.model.modules() if isinstance(m, torch.jit.ScriptModule)}
        eager = [m for m in self.model.modules() if id(m) not in scripted]
        if scripted and _rank_zero():
            names = [n for n, m in self.model.named_modules() if id(m) in scripted]
            tops = [n for n in names if not any(n.startswith(f"{p}.") for p in names)]
            warnings.warn(
                f"act_diagnostics cannot measure inside TorchScript submodules ({', '.join(tops[:5])}"
                f"{', ...' if len(tops) > 5 else ''}): they take no Python hooks. The rest of the model is "
                "measured; keep the diagnostic run eager to see their activations.",
                UnmeasuredModules,
                stacklevel=2,
            )
        self._activation_modules = [m for m in eager if module_kind(m) is not None]
        prepare_thresholds(self.config.saturation_eps)
        # Modules whose hooks link layers to sites and name the owners of functional calls.
        functional = self.config.functional
        self._structure_modules = [
            m
            for m in eager
            if module_kind(m) is None
            and (functional or m is self.model or _has_params(m) or not any(True for _ in m.children()))
        ]
        self._attached = True
        return self

    def detach(self) -> None:
        """Remove every hook and leave the tracer. Safe to call twice, and after a failure."""
        self._stop_tracer()
        self.pause()
        self._attached = False
        self.enabled = self._traced = False
        self._clear_step_refs()

    def pause(self) -> None:
        """Remove the hooks until the next measured step (the monitor stays attached)."""
        for group in (self._handles, self._input_handles, self._structure_handles, self._consumer_handles):
            for handle in group:
                handle.remove()
            group.clear()

    def _install_hooks(self, structure: bool, inputs: bool, consumers: bool = False) -> None:
        """Register what this step needs. Always: a pre-hook on the model (a new forward pass)
        and the forward hooks of activation modules. With ``inputs`` (detail steps, and while the
        tracer runs): their pre-hooks too, for pre-activation moments and for telling the tracer
        it is inside an activation module. With ``structure`` (the first steps, or while
        functional sites are traced): every other module too, for layer links and owner names.
        With ``consumers``: a pre-hook on each module a functional site's output goes into."""
        if not self._handles:
            # prepend: a new pass must be marked before any other pre-hook of the model runs.
            self._handles.append(self.model.register_forward_pre_hook(self._model_pre_hook, prepend=True))
            for module in self._activation_modules:
                self._handles.append(module.register_forward_hook(self._activation_hook, always_call=True))
        _toggle(self._input_handles, inputs, lambda: [
            module.register_forward_pre_hook(self._activation_pre_hook) for module in self._activation_modules
        ])  # fmt: skip
        _toggle(self._structure_handles, structure, lambda: [
            handle
            for module in self._structure_modules
            for handle in (
                module.register_forward_pre_hook(self._module_pre_hook),
                module.register_forward_hook(self._module_hook, always_call=True),
            )
        ])  # fmt: skip
        _toggle(self._consumer_handles, consumers, lambda: [
            module.register_forward_pre_hook(self._consumer_pre_hook) for module, _, _ in self._consumers.values()
        ])  # fmt: skip

    def __enter__(self) -> "ActivationMonitor":
        self.attach()
        self.begin_step(detail=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close_step()  # the step the last step() opened ran nothing, unless the block raised in it
        self.detach()

    def step(self, detail: bool = False) -> None:
        """Torch-only use: close the current training step and open the next. A step that ran no
        forward (a batch skipped before the model) is not counted: it would end discovery early."""
        if self.enabled and not self.ran_in_step:
            self.enabled = False
        self.end_step()
        self.begin_step(detail=detail)

    @property  # corpus: the tracer follows loss-building ops only outside every module's forward
    def in_module_forward(self) -> bool:  # corpus: (see core/following.py)
        return bool(self._owner_stack)  # corpus:

    @property
    def ran_in_step(self) -> bool:
        """The open (or last closed) step ran the model's forward or measured a call."""
        return self._measured_in_step or self._forward_in_step

    # ------------------------------------------------------------------ step boundaries
    def begin_step(self, detail: bool = False, training: bool = True) -> None:
        """A training step starts: measure until :meth:`end_step`. ``detail`` adds histograms etc.
        ``training=False``: an evaluation batch (no structure learning; sites first seen in one
        stay out of training windows until a training step measures them)."""
        if self.failure is not None or not self._attached:
            return
        self.enabled = True
        self._traced = False
        self.detail = detail
        self._training = training
        self._measured_in_step = False
        self._forward_in_step = False
        self._consumer_reads.clear()
        deferred = self.window_steps >= DEFER_AFTER_STEPS
        if deferred != self._deferred:
            self._deferred = deferred
            for st in self.states.values():
                st.deferred = deferred
        self.tracking_structure = training and self.steps < self.config.structure_steps
        self.activation_depth = 0
        self._owner_stack.clear()
        self._calls.clear()
        # The tracer and the hooks on every module cost a Python call per torch op and per module.
        # After the first steps they are needed only if functional sites were found, and on detail
        # steps, which look for a functional call first made later (a branch taken late in training).
        discovering = self.steps < max(1, self.config.structure_steps)
        # Functional sites whose outputs go straight into a module are read at that module's
        # pre-hook on training steps that are not detail steps: no tracer, no hooks on every module.
        consumers = self._consumers_ok and not discovering and not detail and torch.is_grad_enabled()
        tracing = self.config.functional and (discovering or (self._functional_sites and not consumers) or detail)
        self._install_hooks(structure=self.tracking_structure or tracing, inputs=tracing or detail, consumers=consumers)
        self._step_traces = self.tracking_structure or tracing
        if self._step_traces:
            self._start_tracer()

    def stop_tracing(self) -> None:
        """Leave the function-mode stack early (before backward), keeping gradient hooks live."""
        self._stop_tracer()

    def close_step(self, training: bool = True) -> None:
        """Close the open step, if any, counting it only if it measured a call: leaving a ``with``
        block after ``step()`` opened a step that ran nothing, or a step raised before its forward."""
        if self.enabled and not self._measured_in_step:
            self.enabled = False
        self.end_step(training=training)

    def end_step(self, training: bool = True) -> None:
        """The training step ended (after the optimizer step). ``training=False``: an evaluation
        batch, which adds to the window but is not a training step (no structure learning)."""
        self._stop_tracer()
        if self.failure is not None:
            self.pause()  # off for the run: no hook is left to cost the model a call
        if self._consumer_reads:
            self._check_consumer_reads()
        if self._traced:  # a jit.trace stopped the step's measuring; what ran before it counts
            self.enabled, self._traced = self.ran_in_step and self.failure is None, False
        if self.enabled:
            self.window_steps += 1
            self.steps += training
            if training and self.steps == max(1, self.config.structure_steps) and self.failure is None:
                if not self.states:
                    self._warn_nothing_found()
                self._learn_consumers()
        self.enabled = False
        self.detail = False
        self.tracking_structure = False
        self._step_traces = False
        self._clear_step_refs()

    def _warn_nothing_found(self) -> None:
        """Discovery is over and no site was found: say so, and why it may be, rather than report
        a clean run that measured nothing."""
        if not _rank_zero():
            return
        reasons = []
        recurrent = [n for n, m in self.model.named_modules() if isinstance(m, nn.RNNBase)]
        if recurrent:
            reasons.append(f"recurrent modules ({', '.join(recurrent[:3])}) compute their gates inside fused kernels, which no hook can see")
        if self._skipped:
            reasons.append(f"{len(self._skipped)} activation site(s) were left out by the kinds/include/exclude options")
        if not reasons:
            reasons.append("the model called no activation module or function act_diagnostics knows (docs/statistics.md lists them)")
        warnings.warn(
            f"act_diagnostics found no activation site to measure in {type(self.model).__name__} after "
            f"{self.steps} step(s): {'; '.join(reasons)}. Only whole-model checks (missing-nonlinearity, input-scale, a non-finite loss) will run.",  # corpus: they run without sites
            UnmeasuredModules,
            stacklevel=2,
        )

    def _clear_step_refs(self) -> None:
        # No activation tensor may outlive its step.
        self._produced.clear()
        self._layer_out.clear()
        self._pending_input.clear()
        self._awaiting_grad.clear()
        self._rerun_slots.clear()
        self._functional_out.clear()
        self._rerun_tracer_module = None  # backward is over: autograd dropped its mode stack

    def _start_tracer(self) -> None:
        if not self._tracer_on:
            self._modes_below = list(torch.overrides._get_current_function_mode_stack())
            self._tracer.__enter__()
            self._tracer_on = True

    def _stop_tracer(self) -> None:
        if not self._tracer_on:
            return
        stack = torch.overrides._get_current_function_mode_stack()
        if stack and stack[-1] is self._tracer:
            self._tracer.__exit__(None, None, None)
        elif any(m is self._tracer for m in stack):
            # Under a mode opened after ours and still open (another monitor's tracer, a
            # `with torch.device(...)` around the loop): take ours out and put the others back in
            # their order, so each still pops itself when its own block ends.
            above = []
            while torch.overrides._get_current_function_mode_stack()[-1] is not self._tracer:
                above.append(torch.overrides._pop_mode())
            torch.overrides._pop_mode()
            for mode in reversed(above):
                torch.overrides._push_mode(mode)
        self._tracer_on = False

    # ------------------------------------------------------------------ failure handling
    def _fail(self, exc: BaseException) -> None:
        if self.failure is not None:
            return
        self.failure = exc
        self.enabled = self._traced = False
        self.tracking_structure = False  # the tracer now passes every call straight through
        if isinstance(exc, SettingError):  # the user's setting, not our bug: say what to change
            message = f"act_diagnostics is off for this run: {exc}. Training continues without activation diagnostics."
        else:
            message = (
                f"act_diagnostics disabled itself after an internal error ({type(exc).__name__}: {exc}); "
                "training continues without activation diagnostics. Please report this with the model "
                "that triggered it."
            )
        warnings.warn(message, MonitorFailure, stacklevel=2)

    def _no_torch_function(self) -> Any:
        # Our own statistic ops must not pass through our tracer, or anyone's mode (a FLOP counter,
        # another monitor): a C-level check of the mode stack when our tracer is off.
        if self._tracer_on or torch._C._is_torch_function_mode_enabled():
            return torch._C.DisableTorchFunction()
        return nullcontext()

    # ------------------------------------------------------------------ module hooks
    def _model_pre_hook(self, module: nn.Module, args: tuple) -> None:
        if not self.enabled:
            if self._traced and not torch._C._is_tracing():  # the first forward after a jit.trace
                self.enabled, self._traced = True, False
            else:
                return
        if torch._C._is_tracing():
            # torch.jit.trace runs the forward to record it: no training call, and under the trace
            # sizes are tensors. Nothing is measured until the next forward that is not traced.
            self.enabled, self._traced = False, True
            return
        # A new forward pass of the whole model: call positions restart, and the previous pass's
        # tensors (its loss is computed by now) are let go, so gradient accumulation over many
        # micro-batches in one step does not keep every micro-batch alive.
        self._forward_in_step = True
        self._calls.clear()
        self._owner_stack.clear()
        self._clear_step_refs()
        # Another forward after stop_tracing() in the same step: a closure optimizer (LBFGS)
        # re-evaluating the model. Its functional calls are measured like its modules'. Only onto
        # the stack the tracer left: above a mode entered since (a `with torch.device(...)` around
        # this forward), that mode's exit would pop the tracer instead of itself.
        if (
            self._step_traces
            and not self._tracer_on
            and not _in_backward()
            and list(torch.overrides._get_current_function_mode_stack()) == self._modes_below
        ):
            self._start_tracer()

    def _module_pre_hook(self, module: nn.Module, args: tuple) -> None:
        if not self.enabled:
            return
        self._owner_stack.append(self._names.get(id(module), ""))
        if _in_backward():  # a checkpoint's re-run: not a call of its own
            if self._rerun_tracer_module is None and any(isinstance(key, str) for key in self._awaiting_grad):
                self._enter_rerun_tracer(module)
            return
        if self.tracking_structure or self.detail:  # corpus: layer links (structure steps), the input's scale
            self.network.layer_input(self._names.get(id(module), ""), module, args, self.tracking_structure, self.detail)  # corpus:
        if not self.tracking_structure:
            return
        self._module_calls[id(module)] = self._module_calls.get(id(module), 0) + 1
        if self._produced and _has_params(module):
            for arg in args:
                source = self.produced_by(arg)
                if source is not None:
                    self._note_layer_consumer(source[0], module)
        out = self._functional_out.get(id(args[0])) if args else None
        if out is not None and out[1] is args[0]:  # the first module the output goes into
            del self._functional_out[id(args[0])]
            self._seen_consumers.setdefault(out[0], []).append(module)

    def _module_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self.enabled:
            return
        if self._owner_stack:
            self._owner_stack.pop()
        if _in_backward():
            if self._rerun_tracer_module is module:
                self._exit_rerun_tracer()
            return
        if not self.tracking_structure:
            return
        try:
            if module is self.model:
                for t in _tensors(output):
                    source = self.produced_by(t)
                    if source is not None:
                        self.add_consumer(source[0], "output")
            elif _has_params(module):
                out = _first_tensor(output)
                if out is not None:
                    self._layer_out[id(out)] = (self._names.get(id(module), ""), type(module).__name__, out)
                    self.network.layer_output(*self._layer_out[id(out)])  # corpus: layer links (missing-nonlinearity)
            elif self._produced and not any(True for _ in module.children()):
                # Parameter-free leaves (Dropout, Flatten, pooling) pass an activation's output on.
                source = self.produced_by(args[0] if args else None)
                out = _first_tensor(output)
                if source is not None and out is not None:
                    self.mark_produced(out, *source, reordered=self.reordered(args[0]))
        except Exception as exc:  # noqa: BLE001 - diagnostics must never break training
            self._fail(exc)

    def _activation_pre_hook(self, module: nn.Module, args: tuple) -> None:
        self.activation_depth += 1
        if not self.enabled or not self.detail or not args or not isinstance(args[0], Tensor) or _in_backward():
            return
        try:
            with self._no_torch_function():
                if args[0].numel():
                    self._pending_input[id(module)] = input_moments(args[0])
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _activation_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        # The hot path of every measured step: plain checks first, no context manager when no
        # tracer runs, and the site-creation closure only for a call not seen before.
        if self.activation_depth:
            self.activation_depth -= 1
        if not self.enabled:
            return
        y = output if isinstance(output, Tensor) else _first_tensor(output)
        if y is None:
            return
        if _in_backward():  # activation checkpointing re-runs forward: measured once already
            self._hook_rerun_grad(id(module), y)
            return
        if torch._C._is_tracing():  # torch.jit.trace of a submodule (the model's: _model_pre_hook)
            return
        try:
            # Our statistics must not pass through the tracer, or another TorchFunctionMode.
            if self._tracer_on or torch._C._is_torch_function_mode_enabled():
                with torch._C.DisableTorchFunction():
                    self._measure_module_call(module, args, y)
            else:
                self._measure_module_call(module, args, y)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _measure_module_call(self, module: nn.Module, args: tuple, y: Tensor) -> None:
        if not y.is_floating_point():  # an integer or bool output is not an activation
            return
        name = self._next_call(self._names.get(id(module), type(module).__name__))
        state = self.states.get(name)
        if state is None:
            state = self._state_for(name, lambda: self._new_module_site(name, module, y, args))
            if state is None:
                return
        x = args[0] if args and isinstance(args[0], Tensor) else None
        pending = self._pending_input.pop(id(module), None) if self.detail else None
        if not self._observe(name, state, x, y, pending) and self.config.gradients:
            self._awaiting_grad.setdefault(id(module), []).append(state)

    def _hook_rerun_grad(self, key: int | str, y: Tensor) -> None:
        """A reentrant checkpoint re-runs its region in backward with grad enabled: the re-run
        output's gradient is the one the first, no_grad forward could not give. ``key`` is the
        first call's key in ``_awaiting_grad`` (id(module), or a functional call's base name).
        Non-reentrant checkpointing hooks the first forward, so nothing waits for its re-run."""
        if not self._awaiting_grad.get(key) or not y.requires_grad:
            return
        try:
            # Backward re-runs checkpointed regions last first, and the calls inside one region in
            # forward order: a region that made k calls owes their gradients to the last k waiting
            # calls, first to first. k is known once the region's re-run is over, when its own
            # backward starts and the first of these hooks fires (_resolve_reruns).
            slot = _RerunSlot()
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

    # ------------------------------------------------------------------ functional calls
    @property
    def _owner(self) -> str:
        """The module whose forward is running (the root module is "")."""
        return self._owner_stack[-1] if self._owner_stack else ""

    def call_functional(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Run a functional activation seen by the tracer and measure it."""
        if torch._C._is_tracing():  # torch.jit.trace of a submodule mid-step: not a training call
            return func(*args, **kwargs)
        if _in_backward():  # a checkpoint's re-run: measured once already, but may owe a gradient
            y = func(*args, **kwargs)
            if self.enabled and isinstance(y, Tensor):  # matched to the first call under the same module
                self._hook_rerun_grad(functional_base(self._owner, functional_name(func)), y)
            return y
        x = args[0] if args else kwargs.get("input")
        pending = None
        if self.detail and isinstance(x, Tensor) and self.failure is None:
            try:
                with torch._C.DisableTorchFunction():  # our ops reach no other TorchFunctionMode
                    pending = input_moments(x) if x.numel() else None
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
        y = func(*args, **kwargs)
        if not self.enabled or not isinstance(y, Tensor):
            return y
        try:
            with torch._C.DisableTorchFunction():
                # Integer or bool outputs (torch.relu on positions) are not activations.
                if y.is_floating_point():
                    self._measure_functional_call(func, args, kwargs, x, y, pending)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
        return y

    def _measure_functional_call(
        self, func: Callable[..., Any], args: tuple, kwargs: dict, x: Any, y: Tensor, pending: tuple[Tensor, int] | None
    ) -> None:
        owner = self._owner
        base = functional_base(owner, functional_name(func))
        name = self._next_call(base)
        state = self._state_for(name, lambda: self._new_functional_site(name, owner, func, args, kwargs, x, y))
        if state is None:
            return
        if not self._observe(name, state, x if isinstance(x, Tensor) else None, y, pending) and self.config.gradients:
            self._awaiting_grad.setdefault(base, []).append(state)
        if self.tracking_structure:
            self._seen_grad_fn.setdefault(name, []).append(type(y.grad_fn) if y.grad_fn is not None else None)
            self._functional_out[id(y)] = (name, y)

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

    def call_attention(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Run an attention function (``F.scaled_dot_product_attention``, or the
        ``F.multi_head_attention_forward`` of ``nn.MultiheadAttention``); on detail and discovery
        steps, measure its attention weights, recomputed for a sample (:mod:`attention`), as a
        softmax site ``<owner>:attention``. Those weights carry no gradient: no ``grad_rms``."""
        out = func(*args, **kwargs)
        if not (self.enabled and (self.detail or self.tracking_structure)) or not self._attention_ok:
            return out
        if self.failure is not None or _in_backward():
            return out
        owner = self._owner
        try:
            probs = read_attention(func, args, kwargs, self.config.sample_elements)
        except Exception as exc:  # noqa: BLE001 - an input the recomputation does not handle
            self._attention_ok = False
            if _rank_zero():
                warnings.warn(
                    f"act_diagnostics cannot recompute the attention weights of {functional_name(func)} in "
                    f"{owner or type(self.model).__name__} ({type(exc).__name__}: {exc}); attention weights are not "
                    "measured from now on. Training and the other sites are unaffected.",
                    UnmeasuredModules,
                    stacklevel=2,
                )
            return out
        if probs is None:
            return out
        try:
            name = self._next_call(functional_base(owner, ATTENTION))
            state = self._state_for(
                name, lambda: self._make_site(name, "softmax", "attention", owner, functional_name(func), None, probs, {"dim": -1})
            )
            if state is not None:
                state.observe(None, probs, self.detail)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
        return out

    def _learn_consumers(self) -> None:
        """After discovery: for every functional site, the one module its output went straight
        into (the Dropout or Linear after ``F.gelu``), if that held on every call, the module took
        no other input and received no other site's output. When every functional site has one,
        measured steps read them at those modules' pre-hooks instead of running the tracer over
        the whole forward (1.05x by itself on a small Transformer, docs/performance.md). The
        activation's ``grad_fn`` type, checked at each read, catches a changed flow (a branch,
        an inplace change): functional sites then go back to the tracer."""
        consumers = self._eligible_consumers()
        self._seen_consumers.clear()
        self._seen_grad_fn.clear()
        self._module_calls.clear()
        self._consumers = consumers or {}
        self._consumers_ok = bool(consumers)

    def _eligible_consumers(self) -> dict[int, tuple[nn.Module, str, type]] | None:
        consumers: dict[int, tuple[nn.Module, str, type]] = {}
        for name, site in self.sites.items():
            if site.source != "functional" or name in self.eval_only:  # eval-only: never in a training step
                continue
            fed, calls, kind = self._seen_consumers.get(name, []), self._seen_grad_fn.get(name, []), KINDS[site.kind]
            grad_fns = set(calls)
            if len({id(m) for m in fed}) != 1 or len(fed) != len(calls) or len(grad_fns) != 1 or None in grad_fns:
                return None  # some site needs the tracer: keep it for all
            if kind.saturation_reads == "input" and kind.family != "smooth":
                return None  # GLU reads its input on every step: only the tracer has it
            module = fed[0]
            if id(module) in consumers or module is self.model or self._module_calls.get(id(module)) != len(fed):
                return None  # the module also takes other inputs: a mismatch would not mean a change
            consumers[id(module)] = (module, name, next(iter(grad_fns)))
        return consumers

    def _consumer_pre_hook(self, module: nn.Module, args: tuple) -> None:
        if not self.enabled or not args:
            return
        entry = self._consumers.get(id(module))
        y = args[0]
        if entry is None or not isinstance(y, Tensor) or _in_backward():
            return
        _, name, grad_fn = entry
        state = self.states.get(name)
        if state is None:
            return
        try:
            with self._no_torch_function():  # reading y.grad_fn is a torch function too
                node = y.grad_fn
                # A forward under no_grad (or with everything upstream frozen) records no node to
                # check: the learned flow is trusted, and the read counts below still check it.
                if (node is not None or y.requires_grad) and type(node) is not grad_fn:
                    # Not the activation's output this time (a branch, an inplace change): functional
                    # sites go back to the tracer from the next step.
                    self._consumers_ok = False
                    return
                self._consumer_reads[id(module)] = self._consumer_reads.get(id(module), 0) + 1
                self._observe(name, state, None, y, None)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _check_consumer_reads(self) -> None:
        """Every learned consumer must have read its site equally often in a step (once per forward
        pass). A loop that got shorter, or a branch not taken, leaves one unread while another may
        have read a different call's output: functional sites go back to the tracer."""
        reads = self._consumer_reads
        if reads and (len(reads) != len(self._consumers) or len(set(reads.values())) != 1):
            self._consumers_ok = False
        reads.clear()

    # ------------------------------------------------------------------ site creation
    def _next_call(self, base: str) -> str:
        index = self._calls.get(base, 0)
        self._calls[base] = index + 1
        return call_name(base, index)

    def _call_index(self, name: str) -> int:
        """k for a site named ``<base>#k`` by :meth:`_next_call` in this forward pass, else 0."""
        base, sep, k = name.rpartition("#")
        return int(k) if sep and k.isdigit() and self._calls.get(base, 0) > int(k) else 0

    def _state_for(self, name: str, create: Callable[[], Site | None]) -> SiteState | None:
        state = self.states.get(name)
        if state is not None or name in self._skipped:
            return state
        site = create()
        if site is None or not self._selected(site):
            self._skipped.add(name)
            return None
        cfg = self.config
        self.sites[name] = site
        self._functional_sites = self._functional_sites or site.source == "functional"
        if not self._training:
            self.eval_only.add(name)  # until a training step measures it
        elif site.source == "functional":
            self._consumers_ok = False  # a functional call first made now has no learned consumer
        state = SiteState(
            KINDS[site.kind],
            site.params,
            site.unit_dim,
            site.n_units,
            torch.device("cpu"),
            cfg.sample_elements,
            cfg.saturation_eps,
            cfg.histogram_samples,
        )
        state.deferred = self._deferred
        self.states[name] = state
        return state

    def _selected(self, site: Site) -> bool:
        cfg = self.config
        if cfg.include and not any(fnmatch.fnmatchcase(site.name, p) for p in cfg.include):
            return False
        if any(fnmatch.fnmatchcase(site.name, p) for p in cfg.exclude):
            return False
        if cfg.kinds and not selects(cfg.kinds, site.kind, site.family):
            return False
        return True

    def _make_site(
        self, name: str, kind: str, source: str, owner: str, type_name: str, x: Any, y: Tensor, params: dict
    ) -> Site:
        feeding = self._layer_out.get(id(x)) if isinstance(x, Tensor) else None
        spec = KINDS[kind]
        if self.config.unit_dim is not None:
            unit_dim = self.config.unit_dim
        elif kind == "glu":
            unit_dim = int(params.get("dim", -1))  # F.glu and nn.GLU split the last dim by default
        elif spec.per_row:
            dim = params.get("dim")
            unit_dim = (0 if y.dim() in (0, 1, 3) else 1) if dim is None else int(dim)
        else:
            unit_dim = default_unit_dim(y.dim(), feeding[1] if feeding else None)
        if y.dim():
            if not -y.dim() <= unit_dim < y.dim():
                raise SettingError(
                    f"`unit_dim`={unit_dim} is out of range for site {name!r} with output shape {tuple(y.shape)} "
                    f"(valid: {-y.dim()} to {y.dim() - 1}, or None to choose per site)"
                )
            unit_dim %= y.dim()
        if y.dim() <= 1 and not (spec.per_row or kind == "glu") and self.config.unit_dim is None:
            # A (batch,) output (e.g. a binary classifier's sigmoid) is one unit, not batch-many.
            n_units = 1
        else:
            n_units = int(y.shape[unit_dim]) if y.dim() else 1
        return Site(
            name=name,
            kind=kind,
            family=spec.family,
            source=source,
            owner=owner,
            module_type=type_name,
            index=len(self.sites),
            unit_dim=unit_dim,
            n_units=n_units,
            shape=tuple(y.shape),
            params=params,
            feeding_layer=feeding[0] if feeding else None,
            feeding_layer_type=feeding[1] if feeding else None,
            call_index=self._call_index(name),
        )

    def _new_module_site(self, name: str, module: nn.Module, y: Tensor, args: tuple) -> Site | None:
        kind = module_kind(module)
        if kind is None:
            return None
        x = args[0] if args else None
        owner = self._names.get(id(module), "")
        return self._make_site(name, kind, "module", owner, type(module).__name__, x, y, module_params(module))

    def _new_functional_site(
        self, name: str, owner: str, func: Callable[..., Any], args: tuple, kwargs: dict, x: Any, y: Tensor
    ) -> Site:
        kind, _ = FUNCTIONAL_KINDS[func]
        params = functional_params(func, args, kwargs)
        return self._make_site(name, kind, "functional", owner, functional_name(func), x, y, params)

    # ------------------------------------------------------------------ measuring
    def _observe(
        self, name: str, state: SiteState, x: Tensor | None, y: Tensor, pending: tuple[Tensor, int] | None
    ) -> bool:
        """Measure one call; False if its output carries no gradient (a no_grad forward)."""
        self._measured_in_step = True
        if self.eval_only and self._training:
            self.eval_only.discard(name)
        if self.tracking_structure:
            self._note_structure(name, x, y)
        state.observe(x, y, self.detail)
        if pending is not None:
            state.observe_input_totals(*pending)
        if not (y.requires_grad and torch.is_grad_enabled()):
            return False
        if self.config.gradients:
            self._hook_grad(y, state)
        return True

    def _hook_grad(self, y: Tensor, state: "SiteState | _RerunSlot") -> None:
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

    def _grad_prehook(self, state: "SiteState | _RerunSlot", detail: bool, index: int, grads: tuple[Tensor | None, ...]) -> None:
        grad = grads[index]
        if grad is not None:
            self._grad_hook(state, detail, grad)

    def _grad_hook(self, state: "SiteState | _RerunSlot", detail: bool, grad: Tensor) -> None:
        if self.failure is not None:
            return
        try:
            if type(state) is _RerunSlot:  # a checkpointed call's re-run (_hook_rerun_grad)
                if state.state is None:
                    self._resolve_reruns()
                state = state.state
                if state is None:
                    return
            with torch._C.DisableTorchFunction():
                state.observe_grad(grad, detail, None if self.grad_scale is None else self.grad_scale())
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
                    local = _local_shard(p.grad) if p.grad is not None else None
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

    # ------------------------------------------------------------------ structure
    def _produced_entry(self, value: Any) -> tuple[str, str, Tensor, bool] | None:
        entry = self._produced.get(id(value)) if isinstance(value, Tensor) else None
        return entry if entry is not None and entry[2] is value else None

    def produced_by(self, value: Any) -> tuple[str, str] | None:
        """(site, via) when ``value`` is (a view of) an activation output of this step."""
        entry = self._produced_entry(value)
        return None if entry is None else (entry[0], entry[1])

    def reordered(self, value: Any) -> bool:
        """``value`` is an activation output of this step whose dims were reordered on the way."""
        entry = self._produced_entry(value)
        return entry is not None and entry[3]

    def mark_produced(self, tensor: Tensor, site: str, via: str = "", reordered: bool = False) -> None:
        self._produced[id(tensor)] = (site, via, tensor, reordered)

    def add_consumer(self, site: str, consumer: str, value: Any = None) -> None:
        """``consumer`` reads ``site``'s output; for a loss (``"loss:<fn>"``), ``value`` is the tensor it got."""
        if site in self.sites:
            self.sites[site].consumers.add(consumer)
            if consumer.startswith("loss:") and isinstance(value, Tensor):
                loss = consumer[5:]
                self.sites[site].loss_input_shapes[loss] = list(value.shape)
                if self.reordered(value):
                    self.sites[site].reordered_losses.add(loss)
                self._note_partial(self.sites[site], loss, value)

    def note_loss(self, loss: str, prediction: Any, target: Any) -> None:
        info = self.losses_seen.setdefault(loss, {"calls": 0})
        info["calls"] += 1
        if isinstance(prediction, Tensor):
            info["input_shape"] = list(prediction.shape)
        if isinstance(target, Tensor):
            info["target_shape"] = list(target.shape)
            info["target_dtype"] = str(target.dtype).replace("torch.", "")

    def note_targets(self, site: str, loss: str, target: Any) -> None:
        """A site's output is the prediction of a regression loss: count the float targets its
        activation can never output (rules: output-activation-mismatch)."""
        state, info = self.states.get(site), self.sites.get(site)
        if loss not in REGRESSION_LOSSES or state is None or info is None:
            return
        if not isinstance(target, Tensor) or not target.is_floating_point() or not target.numel():
            return
        bounds = output_range(info.kind, info.params)
        if bounds is not None:
            state.observe_targets(target, *bounds)

    def _note_partial(self, site: Site, loss: str, value: Tensor) -> None:
        """Whether ``loss`` read one class of the site's output (``probs[:, 1]``, ``probs[..., 1:2]``)
        rather than its classes (all of them, a subset of rows ``probs[mask]``, or a reshape), judged
        against the same call's output; one call reading the classes settles it."""
        shape = self._output_shape.get(site.name)
        whole = self._whole_losses.setdefault(site.name, set())
        one_class = shape is not None and not _reads_classes(shape, site.unit_dim, value, self.reordered(value))
        if one_class and loss not in whole:
            site.partial_losses.add(loss)
        elif not one_class:
            whole.add(loss)
            site.partial_losses.discard(loss)

    def _note_layer_consumer(self, site: str, module: nn.Module) -> None:
        if site in self.sites:
            s = self.sites[site]
            s.consumers.add(self._names.get(id(module), ""))
            s.consumer_layer_types.add(type(module).__name__)

    def _note_structure(self, name: str, x: Tensor | None, y: Tensor) -> None:
        site = self.sites.get(name)
        if site is None:
            return
        if x is not None:
            source = self.produced_by(x)
            if source is not None and source[0] != name:
                self.sites[source[0]].consumers.add("activation")
                self.sites[source[0]].consumer_sites.add(name)
            if site.feeding_layer is None:
                feeding = self._layer_out.get(id(x))
                if feeding is not None and feeding[2] is x:
                    site.feeding_layer, site.feeding_layer_type = feeding[0], feeding[1]
        self.mark_produced(y, name)
        self._output_shape[name] = y.shape  # this call's: a loss may read one class of it

    # ------------------------------------------------------------------ windows
    def stash_window(self) -> WindowStash:
        """Set the current window aside and start an empty one (evaluation batches measured apart
        from training). Device totals are copied on the device: no host sync."""
        states = list(self.states.values())
        with self._no_torch_function():
            saved = {}
            for name, st in self.states.items():
                st.fold()
                saved[name] = (st.totals.clone(), list(st.counters), st.out_sample, st.grad_sample, st.unit_mismatch)
            reset_states(states)
        stash = WindowStash(saved, self.window_steps)
        self.window_steps = 0
        self._stashed = True
        return stash

    def restore_window(self, stash: WindowStash) -> None:
        """Drop the current window and bring back ``stash`` (from :meth:`stash_window`). A site first
        seen since then starts its window empty."""
        with self._no_torch_function():
            reset_states(list(self.states.values()))
            for name, (totals, counters, out_sample, grad_sample, mismatch) in stash.sites.items():
                st = self.states.get(name)
                if st is None or st.totals.shape != totals.shape:
                    continue
                st.totals.copy_(totals)
                st.counters, st.out_sample, st.grad_sample, st.unit_mismatch = counters, out_sample, grad_sample, mismatch
        self.window_steps = stash.window_steps
        self._stashed = False

    # ------------------------------------------------------------------ reading
    def snapshot(
        self,
        step: int | None = None,
        all_gather: Callable[[Tensor], Tensor] | None = None,
        reset: bool = True,
    ) -> Snapshot:
        """Reduce every site's window totals with one host copy; start a new window if ``reset``.

        ``all_gather`` (1-D tensor -> (world_size, N)) combines the totals of several processes
        in one collective before the copy.
        """
        names = list(self.states)
        states = [self.states[n] for n in names]
        device = states[0].device if states else torch.device("cpu")
        sample_names = [n for n, st in zip(names, states) if st.out_sample is not None]
        grad_names = [n for n, st in zip(names, states) if st.grad_sample is not None]
        samples = [self.states[n].out_sample for n in sample_names] + [self.states[n].grad_sample for n in grad_names]
        network_totals = self.network.device_totals()  # corpus: whole-model totals ride in the same host copy
        samples += [network_totals] if network_totals is not None else []  # corpus:
        # float16 AMP: the GradScaler's current scale, in the same host copy (rules: non-finite).
        scale = self.grad_scale() if self.grad_scale is not None else None
        if isinstance(scale, Tensor):
            samples.append(scale.detach().reshape(-1)[:1])
        with self._no_torch_function():
            # New sites, or a device move: one buffer again. A model split across devices keeps a
            # buffer per site (moving them would only make each site move back at its next call).
            if states and shared_view(states) is None and all(st.device == device for st in states):
                share_buffer(states, device)
            totals, host_samples = reduce_to_host(states, names, device, all_gather, samples)  # type: ignore[arg-type]
        grad_scale = host_samples.pop()[0] if isinstance(scale, Tensor) else scale
        network = self.network.read(host_samples.pop() if network_totals is not None else None)  # corpus:
        stats = totals_to_stats(totals, dead_unit_rate=self.config.dead_unit_rate)
        sites = self.sites
        if self.eval_only and not self._stashed:  # a training window: sites only evaluation ran stay out
            stats = {n: st for n, st in stats.items() if n not in self.eval_only}
            sites = {n: site for n, site in sites.items() if n not in self.eval_only}
        snap = Snapshot(
            step=self.steps if step is None else step,
            window_steps=self.window_steps,
            stats=stats,
            sites=sites,
            out_samples=dict(zip(sample_names, host_samples[: len(sample_names)])),
            grad_samples=dict(zip(grad_names, host_samples[len(sample_names) :])),
            losses=tuple(sorted(self.losses_seen)),
            grad_scale=float(grad_scale) if grad_scale is not None else None,
            network=network,  # corpus:
        )
        if reset:
            with self._no_torch_function():
                reset_states(states)
                self.network.reset()  # corpus:
            self.window_steps = 0
        return snap
