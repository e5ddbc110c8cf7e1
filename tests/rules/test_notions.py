"""rules/notions.py: structural facts in (hand-built sites and snapshots), notions out."""

from __future__ import annotations

import pytest
from snapshot_builders import make_site, make_snapshot, relu_stats

from act_diagnostics.core import SiteStats
from act_diagnostics.rules.notions import (
    Notions,
    degenerate_batch,
    gate_bottlenecks,
    heads,
    small_init_params,
    small_scale_branch_sites,
    small_scale_scopes,
)


def site(name, kind="relu", index=0, consumers=("next",), feeding=None, owner=None, **kw):
    return make_site(name, kind, index=index, consumers=set(consumers), feeding_layer=feeding, owner=owner or name.rpartition(".")[0], **kw)


# Squeeze-excitation: conv -> relu -> [se.fc1 -> se.act -> se.fc2 -> se.gate] * main
SE = [
    site("block.act", index=0, consumers={"se.fc1", "mul_main"}, feeding="block.conv"),
    site("block.se.act", index=1, consumers={"block.se.fc2"}, feeding="block.se.fc1"),
    site("block.se.gate", "sigmoid", index=2, consumers={"mul"}, feeding="block.se.fc2"),
]
# BERT-style pooler: encoder GELUs, tanh on [CLS] into the classifier whose logits go to the loss.
BERT = [
    site("enc.0.act", "gelu", index=0, consumers={"enc.0.out"}, feeding="enc.0.in"),
    site("enc.1.act", "gelu", index=1, consumers={"enc.1.out"}, feeding="enc.1.in"),
    site("pooler.act", "tanh", index=2, consumers={"classifier"}, feeding="pooler.dense"),
]


@pytest.mark.parametrize(
    "sites,expected",
    [
        (SE, {"block.se.act"}),  # the ReLU between SE's two convs feeds the gate's layer
        (BERT, set()),  # no gate
        ([site("a", consumers={"fc"}), site("g", "sigmoid", index=1, consumers={"mul"}, feeding="other")], set()),
        # GLU-style: the gate itself is no bottleneck of itself
        ([site("ffn.act", "silu", consumers={"mul"}, feeding="ffn.gate")], set()),
    ],
)
def test_gate_bottleneck(sites, expected):
    assert gate_bottlenecks(sites) == expected


@pytest.mark.parametrize(
    "sites,output_layers,expected",
    [
        (BERT, {"classifier"}, {"pooler.act"}),
        (BERT, set(), set()),  # no fact recorded: no head
        # MobileNet classifier: hardswish between the two classifier Linears
        ([site("features.act", index=0, consumers={"classifier.0"}), site("classifier.1", "hardswish", index=1, consumers={"classifier.3"})], {"classifier.3"}, {"classifier.1"}),
        # an output activation (sigmoid into the loss) is an output, not a head
        ([site("out", "sigmoid", consumers={"loss:binary_cross_entropy"})], {"fc"}, set()),
        # a gate feeding the output layer is a gate
        ([site("g", "sigmoid", consumers={"mul", "fc"})], {"fc"}, set()),
    ],
)
def test_head(sites, output_layers, expected):
    assert heads(sites, output_layers) == expected


CONVNEXT = [
    site("stem_act", "gelu", index=0, owner=""),
    site("stages.0.blocks.0.mlp.act", "gelu", index=1, owner="stages.0.blocks.0.mlp"),
    site("stages.0.blocks.1:gelu", "gelu", index=2, owner="stages.0.blocks.1"),
    site("head.act", "gelu", index=3, owner="head"),
]


@pytest.mark.parametrize(
    "scales,scopes,branch_sites",
    [
        # LayerScale held by the block itself / by a LayerScale module inside it
        ({"stages.0.blocks.1.gamma": 1e-6, "stages.0.blocks.0.ls.gamma": 1e-6}, {"stages.0.blocks.1", "stages.0.blocks.0"},
         {"stages.0.blocks.0.mlp.act", "stages.0.blocks.1:gelu"}),
        # zero-initialised last BatchNorm of a residual block
        ({"stages.0.blocks.0.bn3.weight": 0.0}, {"stages.0.blocks.0"}, {"stages.0.blocks.0.mlp.act"}),
        # adaLN-zero: the zero modulation Linear is a numbered child of a Sequential in the block
        ({"stages.0.blocks.0.adaLN_modulation.1.weight": 0.0}, {"stages.0.blocks.0"}, {"stages.0.blocks.0.mlp.act"}),
        # ordinary weights (N(0, 0.01) reaches ~0.03), and small parameters of the root or of a
        # wrapper holding every site (a class token), scale no branch
        ({"stages.0.blocks.0.mlp.fc1.weight": 0.03, "cls_token": 1e-6}, set(), set()),
        ({"stages.cls_token": 0.0, "stages.0.blocks.0.mlp.fc1.weight": 0.5}, set(), set()),
    ],
)
def test_small_scale_branch(scales, scopes, branch_sites):
    sites = CONVNEXT if not any(k.startswith("stages.cls") for k in scales) else [s for s in CONVNEXT if s.name.startswith("stages")]
    assert small_scale_scopes(sites, scales) == scopes
    assert small_scale_branch_sites(sites, scales) == branch_sites


def test_small_init_params_threshold():
    assert small_init_params({"a": 0.0, "b": 1e-3, "c": 2e-3}) == ["a", "b"]
    assert small_init_params({"a": 0.05}, small=0.1) == ["a"]


@pytest.mark.parametrize("rows,spread,expected", [(1, 3.0, True), (32, 0.0, True), (32, 1.5, False), (None, None, False)])
def test_degenerate_batch(rows, spread, expected):
    snap = make_snapshot([(site("a"), relu_stats([0.5] * 8))])
    snap.batch_rows, snap.batch_spread = rows, spread
    assert degenerate_batch(snap) is expected


def test_hidden_stack_leaves_out_heads_gates_bottlenecks_and_repeated_calls():
    pairs = [(s, relu_stats([0.5] * 8)) for s in SE]
    shared = site("enc.0.act#1", "gelu", index=5, consumers={"enc.0.out"}, feeding="enc.0.in", call_index=1)
    pairs += [(s, relu_stats([0.5] * 8)) for s in [*BERT[:2], shared, BERT[2]]]
    for i, (s, _) in enumerate(pairs):
        s.index = i
    out = site("out", "sigmoid", index=len(pairs), consumers={"loss:binary_cross_entropy"})
    snap = make_snapshot(pairs + [(out, SiteStats())])
    snap.output_layers = ("classifier",)
    n = Notions.of(snap)
    assert n.hidden_stack == ("block.act", "enc.0.act", "enc.1.act")
    assert n.heads == {"pooler.act"} and n.gates == {"block.se.gate"} and n.gate_bottlenecks == {"block.se.act"}
    # The gradient chain keeps every call and the head, leaves out the squashing output.
    assert [s.name for s, _ in n.gradient_chain(snap)] == ["block.act", "enc.0.act", "enc.1.act", "enc.0.act#1", "pooler.act"]


def test_gradient_chain_leaves_out_small_scale_branches_and_keeps_a_linear_output():
    pairs = [(s, relu_stats([0.5] * 8)) for s in CONVNEXT]
    out = site("out", "relu", index=9, consumers={"output"}, owner="")
    snap = make_snapshot(pairs + [(out, relu_stats([0.5] * 8))])
    snap.param_scales = {"stages.0.blocks.0.gamma": 1e-6, "stages.0.blocks.1.gamma": 1e-6}
    assert [s.name for s, _ in Notions.of(snap).gradient_chain(snap)] == ["stem_act", "head.act", "out"]
