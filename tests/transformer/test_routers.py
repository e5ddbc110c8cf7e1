"""dead-experts: each router's token shares, checked against the router's own top-k in plain torch,
on Mixtral- and Qwen-MoE-style blocks and hand-written softmax and sigmoid routers; a router biased
toward one expert with no auxiliary loss is flagged, the same MoE trained with a load-balancing loss
is not."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tiny_models import VOCAB, HandRouterMoE, MixtralStyleMoE, MoEClassifier, load_balancing_loss, moe_batches, only, route_counts

from act_diagnostics.core import ActivationMonitor
from act_diagnostics.core.routers import expert_totals


def test_expert_totals_count_the_top_k_choices() -> None:
    probs = torch.rand(10, 5).softmax(-1)
    _, idx = probs.topk(2)
    totals = expert_totals(probs, idx)
    assert torch.equal(totals[:5], torch.bincount(idx.reshape(-1), minlength=5).float())
    assert torch.allclose(totals[5:10], probs.sum(0)) and totals[10] == 10


@pytest.mark.parametrize(
    "moe",
    [
        lambda: MixtralStyleMoE(top_k=2),
        lambda: MixtralStyleMoE(top_k=2, shared=True),  # Qwen2-MoE: a shared expert behind a sigmoid gate
        lambda: HandRouterMoE(top_k=1),
        lambda: HandRouterMoE(top_k=2, sigmoid=True),
    ],
    ids=["mixtral", "qwen-moe", "hand-softmax", "hand-sigmoid"],
)
def test_router_shares_match_the_oracle(moe) -> None:
    model = MoEClassifier(moe())
    x, y = next(moe_batches())
    with ActivationMonitor(model) as mon:
        out = model(x)
        F.cross_entropy(out.reshape(-1, VOCAB), y.reshape(-1)).backward()
        out.topk(3)  # a topk over plain logits is no router
        snap = mon.snapshot()
    assert list(snap.routers) == ["moe:router"]
    r = snap.routers["moe:router"]
    counts = route_counts(model, x)
    assert r.tokens == 64 and r.top_k == model.moe.top_k
    assert r.shares == pytest.approx((counts / counts.sum()).tolist())
    assert r.imbalance == pytest.approx(float(counts.max() / counts.sum() * len(counts)))
    with ActivationMonitor(model) as mon:  # two ranks, same data: tokens add up, shares stay
        F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1)).backward()
        both = mon.snapshot(all_gather=lambda t: torch.stack((t, t))).routers["moe:router"]
    assert both.tokens == 128 and both.shares == pytest.approx(r.shares)


def _train(moe: nn.Module, bias: float, aux: float, steps: int = 60):
    torch.manual_seed(0)
    model = MoEClassifier(moe)
    if bias:
        with torch.no_grad():
            moe.router.bias[0] += bias  # the router starts biased toward expert 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    engine = only("dead-experts")
    batches = moe_batches()
    with ActivationMonitor(model) as mon:
        for step in range(steps):
            x, y = next(batches)
            loss = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
            if aux:
                loss = loss + aux * load_balancing_loss(model.router_logits, 4, moe.top_k)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(detail=step % 5 == 3)
            if step % 10 == 9:
                engine.evaluate(mon.snapshot(step=step))
    return [f for f in engine.findings if f.rule == "dead-experts"], route_counts(model, x)


@pytest.mark.parametrize("sigmoid", [False, True], ids=["softmax", "sigmoid"])
def test_a_router_biased_toward_one_expert_without_aux_loss_is_flagged(sigmoid: bool) -> None:
    # A negligible auxiliary loss: its own softmax and top-k recompute the routing (a second
    # "router" at the root with the same load), which must not double the finding.
    findings, counts = _train(HandRouterMoE(top_k=1, sigmoid=sigmoid), bias=4.0, aux=1e-6)
    assert counts[0] >= 0.95 * counts.sum()  # the oracle: expert 0 takes (nearly) every token
    (f,) = findings
    assert f.site == "moe:router" and f.severity == "error" and f.evidence["dead"] == 3
    assert f.evidence["dead_experts"] == "1 2 3" and f.evidence["imbalance"] > 3.5
    assert "load-balancing" in f.recommendation


@pytest.mark.parametrize("moe", [lambda: HandRouterMoE(top_k=1), lambda: MixtralStyleMoE(top_k=2)], ids=["hand", "mixtral"])
def test_a_balanced_router_with_aux_loss_raises_nothing(moe) -> None:
    findings, counts = _train(moe(), bias=0.0, aux=0.1)
    assert findings == [] and counts.min() > 0


def test_extra_scalars_name_each_loss_call_and_router() -> None:
    from act_diagnostics.core.transformer_stats import extra_scalars

    model = MoEClassifier(HandRouterMoE(top_k=1))
    x, y = next(moe_batches())
    with ActivationMonitor(model) as mon:
        F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1)).backward()
        snap = mon.snapshot()
    scalars = extra_scalars(snap)
    assert set(scalars) == {"loss/cross_entropy", "router/moe:router"}
    assert scalars["loss/cross_entropy"]["log_z_mean"] == snap.log_z["cross_entropy"].mean
    router = scalars["router/moe:router"]
    assert router["imbalance"] == snap.routers["moe:router"].imbalance and sum(router[f"share_{e}"] for e in range(4)) == pytest.approx(1.0)
