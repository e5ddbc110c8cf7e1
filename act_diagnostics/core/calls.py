"""Call measurement: one activation call's output (and input) added to its site's window.

Three ways a call is seen: an activation module's forward hook (:meth:`_activation_hook`), a
functional call the tracer routes here (:meth:`call_functional`), and an attention function whose
weights are recomputed for a sample on detail and discovery steps (:meth:`call_attention`). Each
finds or creates its site (:mod:`discovery`), adds the call to the site's
:class:`~act_diagnostics.core.state.SiteState` (:meth:`_observe`) and hooks the output's gradient
(:mod:`gradients`).

The activation hook is the hot path of every measured step: plain checks first, no context
manager when no tracer runs, and the site-creation closure only for a call not seen before.

A mixin of :class:`~act_diagnostics.core.monitor.ActivationMonitor`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from act_diagnostics.core.attention import ATTENTION, head_logit_peaks, read_attention, record_logit_peaks  # max attention logit
from act_diagnostics.core.errors import UnmeasuredModules, rank_zero
from act_diagnostics.core.kinds import functional_name
from act_diagnostics.core.modules import first_tensor, in_backward
from act_diagnostics.core.monitor_state import MonitorState
from act_diagnostics.core.sites import functional_base
from act_diagnostics.core.state import SiteState, input_moments


class CallMeasurement(MonitorState):
    """Module calls, functional calls and attention calls, measured."""

    def _init_calls(self) -> None:
        self._pending_input: dict[int, tuple[Tensor, int]] = {}  # id(module) -> its input's moments (detail)
        self._attention_ok = True  # False once a call's attention weights could not be recomputed

    def _call_sizes(self) -> dict[str, int]:
        return {"pending_inputs": len(self._pending_input)}

    def _clear_call_refs(self) -> None:
        self._pending_input.clear()

    def _observe(
        self, name: str, state: SiteState, x: Tensor | None, y: Tensor, pending: tuple[Tensor, int] | None
    ) -> bool:
        """Measure one call; False if its output carries no gradient (a no_grad forward)."""
        self._measured_in_step = True
        if self.eval_only and self._training:
            self.eval_only.discard(name)
        if self.learning_structure:
            self._facts.note_activation_call(name, x, y)
        detail = self.detail
        state.observe(x, y, detail)
        if pending is not None:
            state.observe_input_totals(*pending)
        if detail and x is not None and x.numel():  # plain steps: one local test, nothing more
            self._observe_attention_logits(name, x)
        if not (y.requires_grad and torch.is_grad_enabled()):
            return False
        if self.config.gradients:
            self._hook_grad(y, state)
        return True

    def _observe_attention_logits(self, name: str, x: Tensor) -> None:
        """Detail steps: a hand-written attention's largest logit per head, from its softmax's
        input (core/attention.py). On a structure step its weights have not met the values yet
        when the softmax runs: a softmax that read scores is read too (a site that proves not to be
        attention gets no ``max_logit``: transformer_stats.fill_snapshot)."""
        if self.sites[name].source == ATTENTION or (self.learning_structure and self._facts.eager_attention.reads_scores(name)):
            record_logit_peaks(self.extras, name, [head_logit_peaks(x)])

    # ------------------------------------------------------------------ activation modules
    def _activation_pre_hook(self, module: nn.Module, args: tuple) -> None:
        self.activation_depth += 1
        if not self.enabled or not self.detail or not args or not isinstance(args[0], Tensor) or in_backward():
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
        y = output if isinstance(output, Tensor) else first_tensor(output)
        if y is None:
            return
        if in_backward():  # activation checkpointing re-runs forward: measured once already
            self._hook_rerun_grad(id(module), y)
            return
        if torch._C._is_tracing():  # torch.jit.trace of a submodule (the model's: _model_pre_hook)
            return
        try:
            # Our statistics must not pass through the tracer, or another TorchFunctionMode.
            if self._tracer_entered or torch._C._is_torch_function_mode_enabled():
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
            self._await_rerun_grad(id(module), state)

    # ------------------------------------------------------------------ functional calls
    def call_functional(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Run a functional activation seen by the tracer and measure it."""
        if torch._C._is_tracing():  # torch.jit.trace of a submodule mid-step: not a training call
            return func(*args, **kwargs)
        if in_backward():  # a checkpoint's re-run: measured once already, but may owe a gradient
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
            self._await_rerun_grad(base, state)
        if self.learning_structure:
            self._note_functional_output(name, y)

    # ------------------------------------------------------------------ attention
    def call_attention(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Run an attention function (``F.scaled_dot_product_attention``, or the
        ``F.multi_head_attention_forward`` of ``nn.MultiheadAttention``); on detail and discovery
        steps, measure its attention weights, recomputed for a sample (:mod:`attention`), as a
        softmax site ``<owner>:attention``. Those weights carry no gradient: no ``grad_rms``."""
        out = func(*args, **kwargs)
        if not (self.enabled and (self.detail or self.learning_structure)) or not self._attention_ok:
            return out
        if self.failure is not None or in_backward():
            return out
        owner = self._owner
        try:
            peaks: list[Tensor] = []  # largest logit per head of the same sample
            probs = read_attention(func, args, kwargs, self.config.sample_elements, peaks)
        except Exception as exc:  # noqa: BLE001 - an input the recomputation does not handle
            self._attention_ok = False
            if rank_zero():
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
                record_logit_peaks(self.extras, name, peaks)  # attention-logit-growth
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
        return out
