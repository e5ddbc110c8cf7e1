"""Notions: what the core's structural facts mean for judging, in one place every rule reads.

The core records facts (core/sites.py, core/snapshot.py, core/facts.py): what consumes each
activation's output, which layer feeds it, which layers' outputs leave the model or enter a loss,
each parameter's scale at attach, the rows of the pre-flight batch. This module turns them into the
notions the rules judge by:

* **gate**: an activation whose output multiplies another tensor (LSTM gates, squeeze-excitation,
  GLU/SwiGLU); its scale and saturation are its job.
* **gate bottleneck**: an activation whose consumer layer feeds a gate (the ReLU inside
  squeeze-excitation, between its two 1x1 convolutions): a few units on a side path that only
  modulates the main signal.
* **head**: an activation after the feature extractor whose consumer layer's output is a model
  output or a loss input (BERT's pooler tanh before the classifier, MobileNet's classifier
  hardswish); heads follow their own initialisation conventions and are no part of the depth.
* **hidden stack**: the hidden activations that make the network's depth, in forward order, one per
  depth position, without heads, gates, gate bottlenecks, softmaxes and outputs.
* **small-init parameter / small-scale branch**: a parameter (not a bias) whose largest value at
  attach is ~0 (LayerScale's gamma 1e-6, ReZero's alpha 0, SkipInit, a zero-initialised last
  BatchNorm of a residual block, adaLN-zero's modulation), and the activations of the block it
  scales: their gradients start ~0 by design while the block learns.
* **degenerate batch**: one row, or rows all the same: statistics across the batch mean nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from act_diagnostics.core.sites import Site
from act_diagnostics.core.snapshot import SiteStats, Snapshot

# A parameter whose largest |value| at initialisation is at or below this scales what it multiplies
# to ~0 (LayerScale starts at 1e-6 in ConvNeXt and 1e-5 in CaiT; ReZero, SkipInit, zero-init BN
# and adaLN-zero at 0). Ordinary initialisations stay far above: N(0, 0.01) weights reach ~0.03.
SMALL_SCALE = 1e-3

# Output activations left out of the depth chain: a probability output's gradient is the loss's
# (p - y) / (p (1 - p)), which grows as the model gets confident and the activation's own derivative
# p (1 - p) shrinks it again one step back. Across that one layer the gradient falls 1000x on a
# healthy classifier at 100% training accuracy: not depth.
SQUASHING_OUTPUT_FAMILIES = ("sigmoid", "tanh", "softmax")


def is_hidden(site: Site) -> bool:
    """An activation inside the network: not an output, not a gate, not a softmax (attention, outputs)."""
    return not site.is_output and not site.is_gate and site.family != "softmax"


def gate_bottlenecks(sites: Iterable[Site]) -> set[str]:
    """Sites whose consumer layer feeds a gate (squeeze-excitation's ReLU between its two convs)."""
    sites = list(sites)
    gate_inputs = {s.feeding_layer for s in sites if s.is_gate and s.feeding_layer}
    return {s.name for s in sites if is_hidden(s) and gate_inputs & s.consumers}


def heads(sites: Iterable[Site], output_layers: Iterable[str]) -> set[str]:
    """Hidden sites whose consumer layer's output is a model output or a loss input."""
    outputs = set(output_layers)
    return {s.name for s in sites if is_hidden(s) and outputs & s.consumers}


def small_init_params(param_scales: dict[str, float], small: float = SMALL_SCALE) -> list[str]:
    """Parameters (biases are not recorded) whose largest |value| at attach is at most ``small``."""
    return sorted(name for name, scale in param_scales.items() if scale <= small)


def _contains(scope: str, site: Site) -> bool:
    return site.owner == scope or site.owner.startswith(scope + ".") or site.name.startswith(scope + ".")


def small_scale_scopes(sites: Iterable[Site], param_scales: dict[str, float], small: float = SMALL_SCALE) -> set[str]:
    """Module paths of the blocks that a small-init parameter scales.

    The parameter's module when it holds activations itself (a ConvNeXt block's own gamma, ReZero's
    alpha); else its parent (``blocks.0.ls1.gamma`` -> ``blocks.0``, ``layer1.0.bn3.weight`` ->
    ``layer1.0``), one more level up when that module is a numbered child of a container
    (``blocks.0.adaLN_modulation.1.weight`` -> ``blocks.0``). A scope holding every site (a
    class token on a wrapper) or the root scales no branch."""
    sites = list(sites)
    scopes: set[str] = set()
    for name in small_init_params(param_scales, small):
        module = name.rpartition(".")[0]
        if not any(_contains(module, s) for s in sites):
            parts = module.split(".")
            dropped = parts.pop() if parts else ""
            if dropped.isdigit() and parts:
                parts.pop()
            module = ".".join(parts)
        if module and not all(_contains(module, s) for s in sites):
            scopes.add(module)
    return scopes


def small_scale_branch_sites(sites: Iterable[Site], param_scales: dict[str, float], small: float = SMALL_SCALE) -> set[str]:
    """Sites inside a block scaled by a small-init parameter."""
    sites = list(sites)
    scopes = small_scale_scopes(sites, param_scales, small)
    return {s.name for s in sites if any(_contains(scope, s) for scope in scopes)}


def degenerate_batch(snapshot: Snapshot) -> bool:
    """The window's measured batch had one row, or rows all the same (None facts: not degenerate)."""
    return snapshot.batch_rows == 1 or snapshot.batch_spread == 0.0


@dataclass(frozen=True)
class Notions:
    """Every notion of one snapshot, computed once per evaluation and shared by the rules."""

    gates: frozenset[str]
    gate_bottlenecks: frozenset[str]
    heads: frozenset[str]
    small_scale_branches: frozenset[str]
    # Hidden stack, forward order, one site per depth position.
    hidden_stack: tuple[str, ...]
    degenerate_batch: bool

    @classmethod
    def of(cls, snapshot: Snapshot) -> Notions:
        sites = [s for s, _ in snapshot.ordered()]
        bottlenecks = gate_bottlenecks(sites)
        head_names = heads(sites, snapshot.output_layers)
        stack: dict[tuple[str, str | None], str] = {}
        for s in sites:
            if is_hidden(s) and s.source != "attention" and s.name not in head_names and s.name not in bottlenecks:
                stack.setdefault(s.depth_position, s.name)
        return cls(
            gates=frozenset(s.name for s in sites if s.is_gate),
            gate_bottlenecks=frozenset(bottlenecks),
            heads=frozenset(head_names),
            small_scale_branches=frozenset(small_scale_branch_sites(sites, snapshot.param_scales)),
            hidden_stack=tuple(stack.values()),
            degenerate_batch=degenerate_batch(snapshot),
        )

    def stack_pairs(self, snapshot: Snapshot) -> list[tuple[Site, SiteStats]]:
        """The hidden stack as (site, stats) pairs."""
        return [(snapshot.sites[n], snapshot.stats[n]) for n in self.hidden_stack]

    def gradient_chain(self, snapshot: Snapshot) -> list[tuple[Site, SiteStats]]:
        """What gradient flow across depth is judged on, forward order: the hidden activations and
        heads (every call: an unrolled cell's calls see different gradients), plus the final output
        activation unless it squashes (sigmoid, tanh, softmax). Gates, gate bottlenecks, attention
        and activations inside a small-scale branch (whose gradient starts ~0 by design) are left out."""
        skip = self.gate_bottlenecks | self.small_scale_branches
        ordered = snapshot.ordered()
        chain = [(s, st) for s, st in ordered if is_hidden(s) and s.source != "attention" and s.name not in skip]
        outputs = [(s, st) for s, st in ordered if s.is_output and not s.is_gate and s.name not in skip]
        last_is_output = outputs and (not chain or outputs[-1][0].index > chain[-1][0].index)
        if last_is_output and outputs[-1][0].family not in SQUASHING_OUTPUT_FAMILIES:
            chain.append(outputs[-1])
        return chain
