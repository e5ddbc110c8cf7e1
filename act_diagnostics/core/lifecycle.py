"""Hook lifecycle and the step protocol: which hooks are on the model, and when.

:meth:`HookLifecycle.attach` finds the modules to hook; each measured step (:meth:`begin_step`)
registers what it needs (:meth:`_install_hooks`) and puts the tracer on torch's function-mode
stack when functional calls must be seen; :meth:`pause` removes the hooks until the next measured
step, :meth:`detach` removes them all. :meth:`end_step` closes the step: it counts it, ends
discovery after the first steps, and lets go of every tensor the step saw.

A mixin of :class:`~act_diagnostics.core.monitor.ActivationMonitor`: it reads the step state the
monitor holds (``enabled``, ``detail``, ``learning_structure``, ``steps``, ``window_steps``) and
calls the other parts through their methods.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from act_diagnostics.core.errors import UnmeasuredModules, rank_zero
from act_diagnostics.core.facts import parameter_scales
from act_diagnostics.core.kinds import module_kind, prepare_thresholds
from act_diagnostics.core.modules import has_params, in_backward, is_leaf
from act_diagnostics.core.monitor_state import MonitorState
from act_diagnostics.core.windows import DEFER_AFTER_STEPS, defers_on


def _toggle(handles: list[Any], wanted: bool, register: Callable[[], list[Any]]) -> None:
    """Register a group of hooks (``register`` returns their handles) if wanted and absent, or
    remove them if present and not wanted."""
    if wanted and not handles:
        handles.extend(register())
    elif not wanted and handles:
        for handle in handles:
            handle.remove()
        handles.clear()


class HookLifecycle(MonitorState):
    """Attach, pause, detach; begin, end and close a step; the tracer on and off the mode stack."""

    def _init_lifecycle(self) -> None:
        self._attached = False
        self._activation_modules: list[nn.Module] = []
        self._structure_modules: list[nn.Module] = []  # every other module whose hooks may be needed
        self._handles: list[Any] = []  # the model's pre-hook and the activation modules' hooks
        self._structure_handles: list[Any] = []  # every other module's hooks, while needed
        self._input_handles: list[Any] = []  # activation modules' pre-hooks, while needed
        self._consumer_handles: list[Any] = []  # pre-hooks of functional sites' consumers, while needed
        self._step_uses_tracer = False  # this step runs the tracer (begin_step decides)
        self._modes_below: list[Any] = []  # the function-mode stack the tracer was last entered on

    def _hook_count(self) -> int:
        return len(self._handles) + len(self._input_handles) + len(self._structure_handles) + len(self._consumer_handles)

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def ran_in_step(self) -> bool:
        """The open (or last closed) step ran the model's forward or measured a call."""
        return self._measured_in_step or self._forward_in_step

    @property
    def tracing(self) -> bool:
        """The tracer is on torch's function-mode stack (functional calls are being seen)."""
        return self._tracer_entered

    def attach(self) -> Any:
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
        if scripted and rank_zero():
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
            if module_kind(m) is None and (functional or m is self.model or has_params(m) or is_leaf(m))
        ]
        self.param_scales = parameter_scales(self.model)  # parameter scales at attach
        self._attached = True
        return self

    def detach(self) -> None:
        """Remove every hook and leave the tracer. Safe to call twice, and after a failure."""
        self._stop_tracer()
        self.pause()
        self._attached = False
        self.enabled = self._stopped_for_jit_trace = False
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
        ])
        _toggle(self._structure_handles, structure, lambda: [
            handle
            for module in self._structure_modules
            for handle in (
                module.register_forward_pre_hook(self._module_pre_hook),
                module.register_forward_hook(self._module_hook, always_call=True),
            )
        ])
        _toggle(self._consumer_handles, consumers, self._register_consumer_hooks)

    # ------------------------------------------------------------------ the step protocol
    def step(self, detail: bool = False) -> None:
        """Torch-only use: close the current training step and open the next. A step that ran no
        forward (a batch skipped before the model) is not counted: it would end discovery early."""
        if self.enabled and not self.ran_in_step:
            self.enabled = False
        self.end_step()
        self.begin_step(detail=detail)

    def begin_step(self, detail: bool = False, training: bool = True) -> None:
        """A training step starts: measure until :meth:`end_step`. ``detail`` adds histograms etc.
        ``training=False``: an evaluation batch (no structure learning; sites first seen in one
        stay out of training windows until a training step measures them)."""
        if self.failure is not None or not self._attached:
            return
        self.enabled = True
        self._stopped_for_jit_trace = False
        self.detail = detail
        self._training = training
        self._measured_in_step = False
        self._forward_in_step = False
        self._start_consumer_reads()
        deferred = self.window_steps >= DEFER_AFTER_STEPS
        if deferred != self._deferred:
            self._deferred = deferred
            for st in self.states.values():
                st.deferred = defers_on(st.device, deferred)
        self.learning_structure = training and self.steps < self.config.structure_steps
        self.activation_depth = 0
        self._restart_call_positions()
        # The tracer and the hooks on every module cost a Python call per torch op and per module.
        # After the first steps they are needed only if functional sites were found, and on detail
        # steps, which look for a functional call first made later (a branch taken late in training).
        discovering = self.steps < max(1, self.config.structure_steps)
        # Functional sites whose outputs go straight into a module are read at that module's
        # pre-hook on training steps that are not detail steps: no tracer, no hooks on every module.
        consumers = self.reads_functional_at_consumers and not discovering and not detail and torch.is_grad_enabled()
        tracing = self.config.functional and (discovering or (self._found_functional_sites and not consumers) or detail)
        self._install_hooks(structure=self.learning_structure or tracing, inputs=tracing or detail, consumers=consumers)
        self._step_uses_tracer = self.learning_structure or tracing
        if self._step_uses_tracer:
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

    def end_step(self, training: bool = True, count: bool = True) -> None:
        """The training step ended (after the optimizer step). ``training=False``: an evaluation
        batch, which adds to the window but is not a training step (no structure learning).
        ``count=False``: the batch ran no optimizer step (gradient accumulation): what it measured
        stays in the window, but neither ``steps`` nor ``window_steps`` counts it."""
        self._stop_tracer()
        if self.failure is not None:
            self.pause()  # off for the run: no hook is left to cost the model a call
        self._check_consumer_reads()
        if self._stopped_for_jit_trace:  # a jit.trace stopped the step's measuring; what ran before it counts
            self.enabled, self._stopped_for_jit_trace = self.ran_in_step and self.failure is None, False
        if self.enabled and count:
            self.window_steps += 1
            self.steps += training
            if training and self.steps == max(1, self.config.structure_steps) and self.failure is None:
                if not self.states:
                    self._warn_nothing_found()
                self._learn_consumers()
        self.enabled = False
        self.detail = False
        self.learning_structure = False
        self._step_uses_tracer = False
        self._clear_step_refs()

    def _clear_step_refs(self) -> None:
        # No activation tensor may outlive its step.
        self._facts.clear()
        self._clear_call_refs()
        self._clear_consumer_refs()
        self._clear_reruns()

    # ------------------------------------------------------------------ the tracer on the mode stack
    def _start_tracer(self) -> None:
        if not self._tracer_entered:
            self._modes_below = list(torch.overrides._get_current_function_mode_stack())
            self._tracer.__enter__()
            self._tracer_entered = True

    def _stop_tracer(self) -> None:
        if not self._tracer_entered:
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
        self._tracer_entered = False

    # ------------------------------------------------------------------ a new forward pass
    def _model_pre_hook(self, module: nn.Module, args: tuple) -> None:
        if not self.enabled:
            if self._stopped_for_jit_trace and not torch._C._is_tracing():  # the first forward after a jit.trace
                self.enabled, self._stopped_for_jit_trace = True, False
            else:
                return
        if torch._C._is_tracing():
            # torch.jit.trace runs the forward to record it: no training call, and under the trace
            # sizes are tensors. Nothing is measured until the next forward that is not traced.
            self.enabled, self._stopped_for_jit_trace = False, True
            return
        # A new forward pass of the whole model: call positions restart, and the previous pass's
        # tensors (its loss is computed by now) are let go, so gradient accumulation over many
        # micro-batches in one step does not keep every micro-batch alive.
        self._forward_in_step = True
        self.batch_facts.note(args, self.detail and self._training)  # batch rows and spread
        self._restart_call_positions()
        self._clear_step_refs()
        # Another forward after stop_tracing() in the same step: a closure optimizer (LBFGS)
        # re-evaluating the model. Its functional calls are measured like its modules'. Only onto
        # the stack the tracer left: above a mode entered since (a `with torch.device(...)` around
        # this forward), that mode's exit would pop the tracer instead of itself.
        if (
            self._step_uses_tracer
            and not self._tracer_entered
            and not in_backward()
            and list(torch.overrides._get_current_function_mode_stack()) == self._modes_below
        ):
            self._start_tracer()
