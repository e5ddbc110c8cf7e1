"""Activation sites: where in the model an activation is applied, and what surrounds it.

A *site* is one call position of an activation: a module (``encoder.layers.0.activation``), a
functional call inside a module's forward (``encoder.layers.0:relu``), or a further call of a
module or function already seen in the same forward pass (``block.act#1``). Sites are created the
first time they run and keep their name for the life of the monitor, so charts line up across steps.

The structural facts the rules need (what feeds a site, what consumes its output) are learned at
run time during the first training steps, by watching tensors flow; see :mod:`tracer`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Site:
    """One activation call position and the structure around it."""

    name: str
    kind: str
    family: str
    # "module", "functional" or "attention" (F.scaled_dot_product_attention weights, or a softmax
    # recognised as hand-written attention during the structure steps: core/attention.py)
    source: str
    owner: str  # module path whose forward made the call ("" is the root module)
    module_type: str  # class name of the activation module, or the function's name
    index: int  # order of first call in the forward pass: 0 is closest to the input
    unit_dim: int
    n_units: int
    shape: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)
    # Parametrised layer whose output this site's input is (e.g. "encoder.0" of type "Linear").
    feeding_layer: str | None = None
    feeding_layer_type: str | None = None
    # What consumes the output: layer names, "mul" (a gate), "loss:<fn>", "output", "activation".
    consumers: set[str] = field(default_factory=set)
    consumer_layer_types: set[str] = field(default_factory=set)
    # Other sites this one's output feeds (e.g. a softmax after a ReLU).
    consumer_sites: set[str] = field(default_factory=set)
    # Shape of the tensor each loss received from this site ({"cross_entropy": [N, C]}): a view or
    # reshape on the way ((N, L, C) -> (N * L, C)) changes which dim holds the classes.
    loss_input_shapes: dict[str, list[int]] = field(default_factory=dict)
    # Losses that got the output with its dims reordered (a transpose or permute: (N, L, C) ->
    # (N, C, L) for nll_loss). Its shape alone cannot say which dim of the output holds the classes.
    reordered_losses: set[str] = field(default_factory=set)
    # Losses that got one class of the output (probs[:, 1] into BCE), not its classes; judged
    # against the output of the same call (sequence lengths may vary from call to call).
    partial_losses: set[str] = field(default_factory=set)
    # The dim of this output a hand-written class loss picked each row's class on
    # ({"handwritten_cross_entropy(clamp)": 1} for -log(p.gather(1, y[:, None])) or p[range(n), y]),
    # recorded where the loss read the output in its own layout.
    loss_class_dims: dict[str, int] = field(default_factory=dict)
    # Which call of its module or function in a forward pass this is: 0, or k for ``<base>#k``.
    call_index: int = 0

    @property
    def position(self) -> str:
        """The call position shared by every call of one module or function: ``block.act#1`` ->
        ``block.act``. Repeated calls (a shared encoder, a time step) are not extra depth."""
        suffix = f"#{self.call_index}"
        return self.name[: -len(suffix)] if self.call_index and self.name.endswith(suffix) else self.name

    @property
    def depth_position(self) -> tuple[str, str | None]:
        """Where the call sits in the network's depth: its call position and the layer feeding it.
        Repeated calls fed by one layer (a shared encoder applied twice) are one position; one
        activation module shared by a stack's layers (``self.act`` after each of 8 Linears) is as
        many positions as layers feeding it."""
        return self.position, self.feeding_layer

    @property
    def is_gate(self) -> bool:
        """Its output multiplies another tensor (LSTM-style gates, squeeze-excitation, GLU)."""
        return "mul" in self.consumers or self.kind == "glu"

    @property
    def is_output(self) -> bool:
        """Its output leaves the model or goes straight into a loss."""
        return "output" in self.consumers or any(c.startswith("loss:") for c in self.consumers)

    @property
    def losses(self) -> list[str]:
        return sorted(c[5:] for c in self.consumers if c.startswith("loss:"))

    @property
    def feeds_layer(self) -> bool:
        return bool(self.consumer_layer_types)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("consumers", "consumer_layer_types", "consumer_sites", "reordered_losses", "partial_losses"):
            d[key] = sorted(d[key])
        d["shape"] = list(self.shape)
        return d


def call_name(base: str, call_index: int) -> str:
    """Name of the ``call_index``-th call (0-based) of one module or function in a forward pass."""
    return base if call_index == 0 else f"{base}#{call_index}"


def functional_base(owner: str, fn_name: str) -> str:
    """``encoder.layers.0:relu``; a function called in the root module's forward is ``:relu``."""
    return f"{owner}:{fn_name}"


# Layers whose output features are on the last dim, whatever the tensor's rank.
FEATURES_LAST_LAYERS = ("Linear", "LazyLinear", "Bilinear", "NonDynamicallyQuantizableLinear")


def default_unit_dim(ndim: int, feeding_layer_type: str | None) -> int:
    """Channel dimension 1 for conv-shaped outputs, the last dimension otherwise.

    4-D and 5-D outputs are images / volumes (N, C, ...), except after a Linear layer, whose
    features are always last (channels-last blocks such as ConvNeXt's: (N, H, W, C)). A 3-D output
    is (N, C, L) only when a convolution or a channel normalisation produced it; otherwise it is
    (N, T, features).
    """
    if ndim <= 1:
        return 0
    if ndim >= 4:
        return ndim - 1 if feeding_layer_type in FEATURES_LAST_LAYERS else 1
    if ndim == 3 and feeding_layer_type and feeding_layer_type.startswith(
        ("Conv", "BatchNorm", "InstanceNorm", "GroupNorm", "LazyConv", "LazyBatchNorm")
    ):
        return 1
    return ndim - 1
