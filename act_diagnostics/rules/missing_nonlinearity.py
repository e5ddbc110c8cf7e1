"""missing-nonlinearity: linear layers stacked with nothing nonlinear between them.

Two linear maps in a row are one linear map: ``Linear(784, 128) -> Linear(128, 10)`` with no
activation between them can learn no more than ``Linear(784, 10)``, however many layers are
stacked (Goodfellow et al., Deep Learning, 6.1: without a nonlinearity the network stays a linear
function of its input; UMLAUT, CHI 2021, checks for missing activations). The core records which
parametrised layer's output went straight into which next one, through same-value ops only
(views, reshapes, dropout, flatten): ``Snapshot.network.layer_links``. This rule strings those
links into chains of linear layers (BatchNorm between them is affine per sample: it neither breaks
nor lengthens a chain) and reports each chain of at least two.

Deliberate factorisations are told apart: a low-rank pair (LoRA's A then B, a bottleneck narrower
than both its sides) is an info note, and a depthwise convolution followed by a pointwise one (a
separable convolution) is not a chain. The finding's site is the chain's first layer.
"""

from __future__ import annotations

from act_diagnostics.core.network import NetworkFacts
from act_diagnostics.rules.base import Rule, RuleContext
from act_diagnostics.rules.finding import Finding

# Layers computing a linear map of their input (plus a bias).
LINEAR_LAYERS = (
    "Linear", "LazyLinear", "NonDynamicallyQuantizableLinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
    "ConvTranspose2d", "ConvTranspose3d", "LazyConv1d", "LazyConv2d", "LazyConv3d",
    "matmul",  # x.mm(self.w): a product with a bare parameter (core/network.py)
)
# Layers affine per sample (at inference): between two linear layers they change nothing.
AFFINE_LAYERS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d")
# Linear layers in a chain before it is reported (the rule's definition: at least two).
MIN_CHAIN = 2

FIX = (
    "Put an activation between the layers (nn.ReLU(), nn.GELU(), ...); without one they compute a single "
    "linear map and the extra layers add parameters, not capacity. If a single linear map is what you want, "
    "use one layer."
)


def linear_chains(network: NetworkFacts) -> list[list[tuple[str, str]]]:
    """Maximal chains of (layer, type) linked output to input, each starting and ending at a linear
    layer, with only linear or affine layers inside; separable convolutions are not chained."""
    types: dict[str, str] = {}
    nxt: dict[str, list[str]] = {}
    has_prev: set[str] = set()
    for a, ta, b, tb in network.layer_links:
        types[a], types[b] = ta, tb
        if ta not in LINEAR_LAYERS + AFFINE_LAYERS or tb not in LINEAR_LAYERS + AFFINE_LAYERS:
            continue
        if network.layer_widths.get(a, (None, None, False))[2] or network.layer_widths.get(b, (None, None, False))[2]:
            continue  # a grouped (depthwise) convolution: a deliberate factorisation
        nxt.setdefault(a, []).append(b)
        has_prev.add(b)
    chains: list[list[tuple[str, str]]] = []
    for start in [a for a in nxt if a not in has_prev]:
        chain, seen = [start], {start}
        while nxt.get(chain[-1]):
            following = next((b for b in nxt[chain[-1]] if b not in seen), None)
            if following is None:
                break
            chain.append(following)
            seen.add(following)
        while chain and types.get(chain[-1]) not in LINEAR_LAYERS:  # a trailing BatchNorm adds nothing
            chain.pop()
        while chain and types.get(chain[0]) not in LINEAR_LAYERS:
            chain.pop(0)
        if sum(types.get(layer) in LINEAR_LAYERS for layer in chain) >= MIN_CHAIN:
            chains.append([(layer, types[layer]) for layer in chain])
    return chains


def _low_rank(network: NetworkFacts, chain: list[tuple[str, str]]) -> bool:
    """A two-layer chain whose inner width is narrower than both its outer widths (LoRA, a deliberate
    low-rank factorisation)."""
    linear = [layer for layer, type_name in chain if type_name in LINEAR_LAYERS]
    if len(linear) != 2 or not all(layer in network.layer_widths for layer in linear):
        return False
    (a_in, a_out, _), (_, b_out, _) = (network.layer_widths[layer] for layer in linear)
    if a_in is None or a_out is None or b_out is None:
        return False
    return a_out < min(a_in, b_out)


class MissingNonlinearity(Rule):
    id = "missing-nonlinearity"
    defaults = {}
    resolvable = False  # the model's structure: it cannot resolve while training

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        network = ctx.snapshot.network
        out = []
        no_sites = not ctx.snapshot.sites
        for chain in linear_chains(network):
            path = " -> ".join(f"{layer} ({type_name})" for layer, type_name in chain)
            n = sum(type_name in LINEAR_LAYERS for _, type_name in chain)
            if _low_rank(network, chain):
                msg = (
                    f"{path}: a low-rank pair with nothing nonlinear between (a factorised linear map, as in LoRA); "
                    "fine if intended"
                )
                out.append(self.finding(ctx, chain[0][0], "info", msg, FIX, linear_layers=n))
                continue
            whole = " and the model has no activation at all: it is a linear model" if no_sites else ""
            msg = f"{path}: {n} linear layers with nothing nonlinear between them compute a single linear map{whole}"
            out.append(self.finding(ctx, chain[0][0], "warning", msg, FIX, linear_layers=n))
        return out
