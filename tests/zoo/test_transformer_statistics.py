"""The transformer statistics measured where they should be on the real Hugging Face models: each
attention layer's largest pre-softmax logit, log Z of the logits Hugging Face hands to
``cross_entropy`` inside the model, and each MoE router's expert shares, against plain-torch
oracles (tests/zoo/oracles.py) on the same batch."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("timm")
pytest.importorskip("transformers")

import oracles
import zoo_data as data
from zoo_faults import moe_gates
from zoo_models import CASES, causal_lm

from act_diagnostics.core import ActivationMonitor

DECODERS = ["gpt2", "llama", "mistral", "qwen2", "mixtral-moe", "qwen2-moe"]
MOES = ["mixtral-moe", "qwen2-moe"]


def _measured(name: str, implementation: str = "sdpa") -> tuple[torch.nn.Module, tuple, object]:
    """One measured training step (detail) of the case's model on 8 windows, no optimiser step:
    the oracles then see the same weights and batch."""
    torch.manual_seed(0)
    net = CASES[name].build()
    net.config._attn_implementation = implementation
    net.train()
    batch = (data.byte_windows()[:8],)
    mon = ActivationMonitor(net, structure_steps=1).attach()
    try:
        mon.begin_step(detail=True)
        _same_forward(batch)(net).backward()
        mon.end_step()
        snap = mon.snapshot(step=0)
    finally:
        mon.detach()
    return net, batch, snap


def _same_forward(batch: tuple):
    """The case's loss on ``batch`` with the same dropout masks every time (GPT-2 keeps dropout 0.1)."""

    def forward(net: torch.nn.Module) -> torch.Tensor:
        torch.manual_seed(1)
        return causal_lm(net, batch)

    return forward


def _layers(net: torch.nn.Module) -> int:
    return net.config.num_hidden_layers if hasattr(net.config, "num_hidden_layers") else net.config.n_layer


@pytest.mark.parametrize("name", DECODERS)
def test_every_attention_layer_has_its_largest_logit(name: str) -> None:
    net, batch, snap = _measured(name)
    sites = [s for s, site in snap.sites.items() if site.source == "attention"]
    assert len(sites) == _layers(net), sites
    measured = [snap.stats[s].max_logit for s in sites]
    net.zero_grad(set_to_none=True)
    expected = oracles.max_attention_logits(net, _same_forward(batch))
    # The monitor's sample (16 windows of 4 heads x 32 x 32 weights) holds all 8 windows: the same maximum.
    assert measured == pytest.approx(expected, rel=1e-4, abs=1e-5), (sites, measured, expected)


@pytest.mark.parametrize("name", DECODERS)
def test_log_z_of_the_loss_computed_inside_the_model(name: str) -> None:
    net, batch, snap = _measured(name)
    z = snap.log_z["cross_entropy"]
    expected = oracles.loss_input_log_z(net, [_same_forward(batch)])
    assert z.rows == 8 * data.SEQ_LEN  # Hugging Face shifts the labels, not the logits: every row reaches the loss
    assert math.isclose(z.mean, expected, rel_tol=1e-5)
    assert z.min <= z.mean <= z.max


@pytest.mark.parametrize("name", MOES)
def test_each_router_is_recognised_with_its_expert_shares(name: str) -> None:
    net, batch, snap = _measured(name)
    gates = moe_gates(net)
    assert set(snap.routers) == {f"model.layers.{i}.mlp.gate:router" for i in range(len(gates))}
    expected = oracles.expert_shares(net, gates, [_same_forward(batch)])
    for i, shares in enumerate(expected):
        r = snap.routers[f"model.layers.{i}.mlp.gate:router"]
        assert r.tokens == 8 * data.SEQ_LEN and r.top_k == 2 and r.experts == 4
        assert r.shares == pytest.approx(shares.tolist(), abs=1e-6)
    # Qwen2-MoE's shared-expert gate (a sigmoid, no top-k) is a gate, not a router.
    assert not [k for k in snap.routers if "shared" in k or k.endswith("mlp:router")]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_eager_attention_has_its_largest_logit(name: str) -> None:
    """attn_implementation="eager" (matmul, additive mask, F.softmax, dropout, matmul): each layer's
    softmax is an attention site, keeps its softmax name, and its largest logit (read from the
    softmax's input) is the one the SDPA oracle recomputes from q and k on the same weights and batch."""
    net, batch, snap = _measured(name, "eager")
    sites = [s for s, site in snap.sites.items() if site.source == "attention"]
    assert len(sites) == _layers(net) and all(s.endswith(":softmax") for s in sites), sites
    assert all(snap.stats[s].saturation_samples > 0 for s in sites)  # the peaked-row share is measured
    measured = [snap.stats[s].max_logit for s in sites]
    net.zero_grad(set_to_none=True)
    net.config._attn_implementation = "sdpa"
    expected = oracles.max_attention_logits(net, _same_forward(batch))
    assert measured == pytest.approx(expected, rel=1e-4, abs=1e-5), (sites, measured, expected)
    assert all(len(snap.stats[s].max_logit_heads) == net.config.num_attention_heads for s in sites)


def test_timm_vit_without_fused_attention_has_the_same_largest_logits() -> None:
    """timm's Attention with fused_attn off (q * scale @ k^T, Tensor.softmax, attn_drop, @ v): each
    block's softmax is an attention site, with the largest logit per head the SDPA recomputation
    gives on the same weights and images (3 images: the recomputed sample holds all of them)."""
    torch.manual_seed(0)
    net = CASES["vit-tiny"].build().train()
    images = data.digit_images()[0][:3]

    def peaks(fused: bool) -> dict[str, list[float]]:
        for block in net.blocks:
            block.attn.fused_attn = fused
        mon = ActivationMonitor(net, structure_steps=1).attach()
        try:
            mon.begin_step(detail=True)
            net(images).pow(2).mean().backward()
            mon.end_step()
            snap = mon.snapshot(step=0)
        finally:
            mon.detach()
        return {name: snap.stats[name].max_logit_heads for name, site in snap.sites.items() if site.source == "attention"}

    eager, fused = peaks(False), peaks(True)
    assert list(eager) == [f"blocks.{i}.attn:softmax" for i in range(len(net.blocks))], list(eager)
    assert list(fused) == [f"blocks.{i}.attn:attention" for i in range(len(net.blocks))]
    for (_, e), (_, f) in zip(eager.items(), fused.items()):
        assert e == pytest.approx(f, rel=1e-4, abs=1e-5)
