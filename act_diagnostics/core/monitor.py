"""ActivationMonitor: finds every activation site of a model and keeps its statistics on the device.

Torch only; the Lightning callbacks drive it through :meth:`~HookLifecycle.begin_step`,
:meth:`~HookLifecycle.end_step` and :meth:`~WindowSnapshots.snapshot`. Used on its own::

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

The monitor is a coordinator: it holds the options, the sites and their states, and the state of
the open step, and takes its behaviour from one part per concern, each in its own module, on a
common base that declares the state they share:

=================  ==============================================================================
monitor_state.py   MonitorState: the shared state with its types and owners, the parts' methods
lifecycle.py       hooks on and off (attach, pause, detach), the step protocol, the tracer's entry
discovery.py       call positions and owners, Site and SiteState creation, selection, unit_dim
calls.py           module, functional and attention calls measured (the hot path)
consumers.py       functional sites read at their consumer modules, so plain steps need no tracer
gradients.py       activation-gradient hooks (AMP scale), feeding-layer gradient norms (FSDP shards)
reruns.py          reentrant checkpoint re-runs matched to the calls that wait for their gradient
windows.py         the window's totals: snapshot, stash and restore
structure.py       StructureFacts: what feeds and consumes each site (an object of its own, which
                   the tracer and the module hooks report to)
=================  ==============================================================================
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn

from act_diagnostics.core.calls import CallMeasurement
from act_diagnostics.core.config import MonitorConfig
from act_diagnostics.core.consumers import ConsumerReads
from act_diagnostics.core.discovery import SiteDiscovery
from act_diagnostics.core.errors import MonitorFailure, UnmeasuredModules, failure_message
from act_diagnostics.core.extras import ExtraTotals  # transformer statistics beside the sites
from act_diagnostics.core.facts import BatchFacts
from act_diagnostics.core.gradients import GradientMeasurement
from act_diagnostics.core.lifecycle import HookLifecycle
from act_diagnostics.core.modules import compiled_modules
from act_diagnostics.core.network import NetworkWatch
from act_diagnostics.core.reruns import CheckpointReruns
from act_diagnostics.core.structure import StructureFacts
from act_diagnostics.core.tracer import ActivationTracer
from act_diagnostics.core.windows import WindowSnapshots, WindowStash

# Also importable from here, where the callbacks and older code find them.
__all__ = ["ActivationMonitor", "MonitorFailure", "UnmeasuredModules", "WindowStash", "compiled_modules"]


def _unattached_monitor() -> ActivationMonitor:
    """What a copied or unpickled monitor becomes (see ActivationMonitor.__reduce__)."""
    return ActivationMonitor(nn.Module())


class ActivationMonitor(
    HookLifecycle, SiteDiscovery, CallMeasurement, ConsumerReads, GradientMeasurement, CheckpointReruns, WindowSnapshots
):
    """Watches every activation site of ``model``; see the module docstring for use."""

    def __init__(self, model: nn.Module, config: MonitorConfig | None = None, **options: Any) -> None:
        _check_model(model)
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
        # The state the parts share, declared with its types and owners in core/monitor_state.py.
        self.model = model
        self.config = config if config is not None else MonitorConfig(**options)
        self.functional = self.config.functional
        self.sites = {}
        self.states = {}
        self.steps = 0
        self.window_steps = 0
        self.failure = None
        # The open step, read by every part (the tracer reads the first four on every torch call).
        self.enabled = False
        self.learning_structure = False
        self.activation_depth = 0
        self.detail = False
        self._training = True
        self._measured_in_step = False
        self._forward_in_step = False
        self._deferred = False
        self._tracer_entered = False
        self._stopped_for_jit_trace = False
        self._names = {}  # filled by attach
        self.extras = ExtraTotals()
        self.network = NetworkWatch()
        self._facts = StructureFacts(self.sites, self.states, self.network, lambda: self.in_module_forward)
        self._tracer = ActivationTracer(self, self._facts, self._fail)
        self.param_scales = {}  # read at attach
        self.batch_facts = BatchFacts()
        # Each part's own state (its _init_* method); a part touches only its own private
        # attributes and the shared ones above, and calls the others' methods.
        self._init_lifecycle()
        self._init_discovery()
        self._init_calls()
        self._init_consumers()
        self._init_gradients()
        self._init_reruns()
        self._init_windows()

    def __reduce__(self) -> tuple[Callable[[], ActivationMonitor], tuple[()]]:
        # The model's hooks are this monitor's bound methods, so copying or pickling the model while
        # they are on (an EMA or SWA copy made with deepcopy, torch.save(model)) would take the
        # monitor along: its windows, its tensors and the autograd node types it learned (which do not
        # pickle), and a copy whose forwards measure themselves. The copy's hooks get an unattached
        # monitor instead: they do nothing, and the copy trains and saves as the plain model would.
        return (_unattached_monitor, ())

    def __enter__(self) -> ActivationMonitor:
        self.attach()
        self.begin_step(detail=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close_step()  # the step the last step() opened ran nothing, unless the block raised in it
        self.detach()

    @property
    def losses_seen(self) -> dict[str, dict[str, Any]]:
        """Each loss function seen while learning structure: its input/target shapes, target dtype."""
        return self._facts.losses_seen

    def bookkeeping(self) -> dict[str, int]:
        """How much the monitor keeps besides the sites' totals: for leak and growth checks (each
        per-step count is 0 after :meth:`end_step`)."""
        return {
            **self._discovery_sizes(),
            **self._call_sizes(),
            **self._facts.held(),
            "losses": len(self.losses_seen),
            "hooks": self._hook_count(),
        }

    def observe_loss(self, loss: Any) -> None:
        """Count a loss value of the open step, and whether it is NaN/Inf (on its device, no sync):
        the Lightning callback hands each step's loss here (rules: non-finite, with no site)."""
        if not self.enabled or self.failure is not None:
            return
        try:
            with self._no_torch_function():
                self.network.observe_loss(loss)
        except Exception as exc:  # noqa: BLE001 - diagnostics must never break training
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """Disable the monitor for the run with one warning: hooks never raise into training."""
        if self.failure is not None:
            return
        self.failure = exc
        self.enabled = self._stopped_for_jit_trace = False
        self.learning_structure = False  # the tracer now passes every call straight through
        warnings.warn(failure_message(exc), MonitorFailure, stacklevel=2)

    def _no_torch_function(self) -> Any:
        # Our own statistic ops must not pass through our tracer, or anyone's mode (a FLOP counter,
        # another monitor): a C-level check of the mode stack when our tracer is off.
        if self._tracer_entered or torch._C._is_torch_function_mode_enabled():
            return torch._C.DisableTorchFunction()
        return nullcontext()


def _check_model(model: Any) -> None:
    """A clear error for what cannot carry the monitor's Python hooks."""
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
