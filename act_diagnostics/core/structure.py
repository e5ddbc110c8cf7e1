"""Structural facts: what feeds each site and what consumes its output, learned by watching tensors.

During the first ``structure_steps`` training steps the monitor's module hooks and the tracer
(:mod:`tracer`) report what they see here: a site's output (:meth:`StructureFacts.note_activation_call`),
a parametrised layer's output, a module reading an activation's output, a loss reading it. The
facts land on the :class:`~act_diagnostics.core.sites.Site` records (``feeding_layer``,
``consumers``, ``consumer_sites``, ``loss_input_shapes``, ``reordered_losses``,
``partial_losses``) and in :attr:`StructureFacts.losses_seen`; the rules judge them.

The tensors seen in one step are kept by id only until the step ends (:meth:`StructureFacts.clear`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from act_diagnostics.core.attention import EagerAttention
from act_diagnostics.core.facts import OutputLayers
from act_diagnostics.core.kinds import output_range
from act_diagnostics.core.modules import first_tensor, has_params, is_leaf, tensors
from act_diagnostics.core.network import NetworkWatch
from act_diagnostics.core.sites import Site
from act_diagnostics.core.state import SiteState
from act_diagnostics.core.tracer import REGRESSION_LOSSES


def reads_classes(shape: torch.Size, unit_dim: int, value: Tensor, reordered: bool) -> bool:
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


class StructureFacts:
    """Records the structural facts of ``sites`` (shared with the monitor) as tensors flow.

    The tracer calls :meth:`produced_by`, :meth:`reordered`, :meth:`mark_produced`,
    :meth:`add_consumer`, :meth:`note_loss` and :meth:`note_targets`, reads
    :attr:`in_module_forward`, and reports layer links and losses to :attr:`network`; the monitor's
    module hooks call the ``note_*`` methods below them. ``in_forward`` tells whether a module's
    forward is running (the monitor's owner stack); ``network`` is shared with the monitor.
    """

    def __init__(
        self,
        sites: dict[str, Site],
        states: dict[str, SiteState],
        network: NetworkWatch | None = None,
        in_forward: Callable[[], bool] | None = None,
    ) -> None:
        self.sites = sites
        self.states = states
        self.network = network if network is not None else NetworkWatch()
        self._in_forward = in_forward if in_forward is not None else (lambda: False)
        # Loss function -> {"calls", "input_shape", "target_shape", "target_dtype"}.
        self.losses_seen: dict[str, dict[str, Any]] = {}
        # id -> (site, via, tensor, dims reordered on the way: a transpose or permute).
        self._produced: dict[int, tuple[str, str, Tensor, bool]] = {}
        # id -> (layer name, layer type, tensor): parametrised layers' outputs of this step.
        self._layer_out: dict[int, tuple[str, str, Tensor]] = {}
        self._output_shape: dict[str, torch.Size] = {}  # site -> shape of its latest output
        self._whole_losses: dict[str, set[str]] = {}  # site -> losses seen reading its classes
        self.output_layers = OutputLayers()  # layers whose output is a model output or loss input
        self.eager_attention = EagerAttention()  # hand-written attention (core/attention.py)

    def clear(self) -> None:
        """Let go of this step's tensors: no activation tensor may outlive its step."""
        self._produced.clear()
        self._layer_out.clear()
        self.eager_attention.clear()

    def held(self) -> dict[str, int]:
        """How many of this step's tensors are kept (for leak checks)."""
        return {"produced": len(self._produced), "layer_outputs": len(self._layer_out), "scores": self.eager_attention.held()}

    # ------------------------------------------------------------------ what the tracer asks
    @property
    def in_module_forward(self) -> bool:
        """A module's forward is running (loss-building ops are followed only outside them)."""
        return self._in_forward()

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

    def note_eager_op(self, func: Any, args: tuple, kwargs: dict, result: Any) -> None:
        """An op of hand-written attention's pattern ran (attention.EAGER_OPS): scores made or
        carried on, or a softmax's weights multiplied by the values (``source`` becomes "attention")."""
        self.eager_attention.note_op(func, args, kwargs, result, self.produced_by, self.sites)

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

    def same_layout(self, site: str, value: Any) -> bool:
        """``value`` has the shape of ``site``'s output in this call (no reshape on the way)."""
        shape = self._output_shape.get(site)
        return shape is not None and isinstance(value, Tensor) and value.shape == shape

    def note_class_dim(self, site: str, loss: str, dim: int) -> None:
        """A hand-written class loss picked each row's class on ``dim`` of ``site``'s output."""
        if site in self.sites:
            self.sites[site].loss_class_dims[loss] = dim

    def note_loss(self, loss: str, prediction: Any, target: Any) -> None:
        self.output_layers.note(prediction, self._layer_out)  # loss-input layers
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
        one_class = shape is not None and not reads_classes(shape, site.unit_dim, value, self.reordered(value))
        if one_class and loss not in whole:
            site.partial_losses.add(loss)
        elif not one_class:
            whole.add(loss)
            site.partial_losses.discard(loss)

    # ------------------------------------------------------------------ what the module hooks report
    def feeding_layer(self, x: Any) -> tuple[str, str] | None:
        """(name, type) of the parametrised layer whose output of this step ``x`` is."""
        entry = self._layer_out.get(id(x)) if isinstance(x, Tensor) else None
        return None if entry is None else (entry[0], entry[1])

    def note_activation_call(self, name: str, x: Tensor | None, y: Tensor) -> None:
        """Site ``name`` turned ``x`` into ``y``: link it to what made ``x``, and follow ``y``."""
        site = self.sites.get(name)
        if site is None:
            return
        if x is not None:
            self.eager_attention.note_softmax(site, x, y)  # reads attention scores
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

    def note_layer_inputs(self, module: nn.Module, name: str, args: tuple) -> None:
        """A module is called: a parametrised layer reading an activation's output consumes it."""
        if self._produced and has_params(module):
            for arg in args:
                source = self.produced_by(arg)
                if source is not None and source[0] in self.sites:
                    site = self.sites[source[0]]
                    site.consumers.add(name)
                    site.consumer_layer_types.add(type(module).__name__)

    def note_module_output(self, module: nn.Module, name: str, is_model: bool, args: tuple, output: Any) -> None:
        """A module returned: the model's outputs, a layer's output (what may feed a site), or an
        activation's output passed on by a parameter-free leaf (Dropout, Flatten, pooling)."""
        if is_model:
            self.output_layers.note(output, self._layer_out)  # output layers
            for t in tensors(output):
                source = self.produced_by(t)
                if source is not None:
                    self.add_consumer(source[0], "output")
        elif has_params(module):
            out = first_tensor(output)
            if out is not None:
                self._layer_out[id(out)] = (name, type(module).__name__, out)
                self.network.layer_output(*self._layer_out[id(out)])  # layer links (missing-nonlinearity)
        elif self._produced and is_leaf(module):
            source = self.produced_by(args[0] if args else None)
            out = first_tensor(output)
            if source is not None and out is not None:
                self.mark_produced(out, *source, reordered=self.reordered(args[0]))
