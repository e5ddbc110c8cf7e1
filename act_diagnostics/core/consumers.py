"""Functional sites read at the module their output goes into, so plain steps need no tracer.

During discovery each functional site's output is followed to the first module that reads it (the
Dropout or Linear after ``F.gelu``). If that held on every call (:meth:`ConsumerReads._learn_consumers`),
later training steps that are not detail steps read the site at that module's pre-hook
(:meth:`_consumer_pre_hook`) instead of running the tracer over the whole forward (1.05x by
itself on a small Transformer, docs/performance.md). The activation's ``grad_fn`` type, checked at
each read, and the read counts, checked at the step's end, catch a changed flow (a branch, an
inplace change, a shorter loop): functional sites then go back to the tracer.

A mixin of :class:`~act_diagnostics.core.monitor.ActivationMonitor`.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torch import Tensor

from act_diagnostics.core.kinds import KINDS
from act_diagnostics.core.modules import in_backward
from act_diagnostics.core.monitor_state import MonitorState


class ConsumerReads(MonitorState):
    """Learns each functional site's consumer module, and reads the site there."""

    def _init_consumers(self) -> None:
        # The module each functional site's output goes straight into -> (module, site, the
        # grad_fn type of the activation's output).
        self._consumers: dict[int, tuple[nn.Module, str, type]] = {}
        self._consumers_ok = False  # every functional site has such a consumer: no tracer needed
        self._consumer_reads: dict[int, int] = {}  # id(consumer) -> reads in the open step
        self._seen_consumers: dict[str, list[nn.Module]] = {}  # discovery: site -> modules it fed
        self._seen_grad_fn: dict[str, list[type | None]] = {}  # discovery: site -> grad_fn type per call
        self._functional_out: dict[int, tuple[str, Tensor]] = {}  # discovery: this pass's functional outputs
        self._module_calls: dict[int, int] = {}  # discovery: calls of each module

    @property
    def reads_functional_at_consumers(self) -> bool:
        """Functional sites are read at the modules their outputs go into on plain training steps
        (no tracer); False until discovery ends, and after a changed flow."""
        return self._consumers_ok

    def _forget_consumers(self) -> None:
        """A functional site without a learned consumer exists: back to the tracer."""
        self._consumers_ok = False

    def _clear_consumer_refs(self) -> None:
        self._functional_out.clear()

    def _register_consumer_hooks(self) -> list[Any]:
        return [module.register_forward_pre_hook(self._consumer_pre_hook) for module, _, _ in self._consumers.values()]

    # ------------------------------------------------------------------ discovery
    def _note_functional_output(self, name: str, y: Tensor) -> None:
        """A functional site's output during discovery: remember it to see which module reads it."""
        self._seen_grad_fn.setdefault(name, []).append(type(y.grad_fn) if y.grad_fn is not None else None)
        self._functional_out[id(y)] = (name, y)

    def _note_consumer_candidate(self, module: nn.Module, args: tuple) -> None:
        """A module is called during discovery: count its calls; the first module a functional
        site's output goes into is that site's consumer."""
        self._module_calls[id(module)] = self._module_calls.get(id(module), 0) + 1
        out = self._functional_out.get(id(args[0])) if args else None
        if out is not None and out[1] is args[0]:  # the first module the output goes into
            del self._functional_out[id(args[0])]
            self._seen_consumers.setdefault(out[0], []).append(module)

    def _learn_consumers(self) -> None:
        """After discovery: for every functional site, the one module its output went straight
        into, if that held on every call, the module took no other input and received no other
        site's output. When every functional site has one, measured steps read them at those
        modules' pre-hooks instead of running the tracer (see the module docstring)."""
        consumers = self._eligible_consumers()
        self._seen_consumers.clear()
        self._seen_grad_fn.clear()
        self._module_calls.clear()
        self._consumers = consumers or {}
        self._consumers_ok = bool(consumers)

    def _eligible_consumers(self) -> dict[int, tuple[nn.Module, str, type]] | None:
        consumers: dict[int, tuple[nn.Module, str, type]] = {}
        for name, site in self.sites.items():
            # Functional calls; hand-written attention is one too (its source became "attention").
            if (site.source != "functional" and name not in self._seen_grad_fn) or name in self.eval_only:
                continue  # eval-only: never in a training step
            fed, calls, kind = self._seen_consumers.get(name, []), self._seen_grad_fn.get(name, []), KINDS[site.kind]
            grad_fns = set(calls)
            if len({id(m) for m in fed}) != 1 or len(fed) != len(calls) or len(grad_fns) != 1:
                return None  # some site needs the tracer: keep it for all
            (grad_fn,) = grad_fns
            if grad_fn is None:  # an output without autograd history: nothing to check at each read
                return None
            if kind.saturation_reads == "input" and kind.family != "smooth":
                return None  # GLU reads its input on every step: only the tracer has it
            module = fed[0]
            if id(module) in consumers or module is self.model or self._module_calls.get(id(module)) != len(fed):
                return None  # the module also takes other inputs: a mismatch would not mean a change
            consumers[id(module)] = (module, name, grad_fn)
        return consumers

    # ------------------------------------------------------------------ measured steps
    def _start_consumer_reads(self) -> None:
        self._consumer_reads.clear()

    def _consumer_pre_hook(self, module: nn.Module, args: tuple) -> None:
        if not self.enabled or not args:
            return
        entry = self._consumers.get(id(module))
        y = args[0]
        if entry is None or not isinstance(y, Tensor) or in_backward():
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
