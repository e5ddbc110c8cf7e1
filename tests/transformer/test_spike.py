"""activation-spike: one scaled batch makes the activation RMS of every site jump in its window;
confirmed by a plain-torch forward of the same batch, flagged at the earliest site with a detail
request; the same run without the scaled batch raises nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tiny_models import only

from act_diagnostics.core import ActivationMonitor, Site, SiteStats, Snapshot
from act_diagnostics.rules.activation_spike import spike_score

SPIKE_STEP = 60


def test_spike_score_is_median_and_mad() -> None:
    history = [1.0, 1.1, 0.9, 1.0, 1.2, 0.8, 1.0, 1.05]
    score, ratio = spike_score(history, 3.0)
    median = np.median(history)
    mad = np.median(np.abs(np.array(history) - median)) * 1.4826
    assert score == pytest.approx((3.0 - median) / mad) and ratio == pytest.approx(3.0 / median)
    assert spike_score([2.0] * 8, 2.02)[0] == pytest.approx(1.0)  # MAD floored at 1% of the median


def _run(scale: float, steps: int = 80):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    engine = only("activation-spike")
    g = torch.Generator().manual_seed(2)
    first_rms: list[float] = []  # oracle: the first activation's RMS per step, plain torch
    requests: list[list[str]] = []
    with ActivationMonitor(model) as mon:
        for step in range(steps):
            x = torch.randn(64, 8, generator=g)
            if step == SPIKE_STEP:
                x = x * scale
            y = x.sum(1, keepdim=True).sin()
            with torch.no_grad():  # GELU written out: F.gelu here would be a site of its own
                h = model[0](x)
                first_rms.append(float((0.5 * h * (1 + torch.erf(h / 2**0.5))).pow(2).mean().sqrt()))
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step()
            engine.evaluate(mon.snapshot(step=step))
            requests.append(list(engine.requests.detail))
    return engine.findings, first_rms, requests


def test_one_scaled_batch_is_flagged_at_the_earliest_site_and_asks_for_detail() -> None:
    findings, rms, requests = _run(scale=30.0)
    score, ratio = spike_score(rms[SPIKE_STEP - 32 : SPIKE_STEP], rms[SPIKE_STEP])
    assert score > 6 and ratio > 2  # the oracle sees the spike
    (f,) = [f for f in findings if f.rule == "activation-spike"]
    assert f.step == SPIKE_STEP and f.site == "1"  # the first GELU: where it starts
    assert f.evidence["spiked_sites"] == 2 and f.evidence["score"] >= 6
    assert requests[SPIKE_STEP] == ["1", "3"] and not any(requests[:SPIKE_STEP]) and not any(requests[SPIKE_STEP + 1 :])
    assert "clip" in f.recommendation


def test_the_same_run_without_the_scaled_batch_is_clean() -> None:
    findings, _, _ = _run(scale=1.0)
    assert findings == []


def test_history_survives_a_checkpoint() -> None:
    from act_diagnostics.rules import RuleEngine

    engine = only("activation-spike")
    rule = next(r for r in engine.rules if r.id == "activation-spike")
    for v in [1.0, 1.1, 0.9, 1.0, 1.2, 0.8, 1.0, 1.05]:
        rule._series("s|rms").append(v)
    restored = RuleEngine()
    restored.load_state_dict(engine.state_dict())
    again = next(r for r in restored.rules if r.id == "activation-spike")
    assert list(again._series("s|rms")) == list(rule._series("s|rms"))


def test_a_learning_rate_jump_in_a_decoder_is_flagged_where_it_starts() -> None:
    from tiny_models import TinyLM, train

    torch.manual_seed(0)
    model = TinyLM()
    oracle: dict[int, float] = {}

    def ff_rms(step, snap, x):  # between steps the monitor measures nothing: plain torch
        with torch.no_grad():
            block = model.blocks[0]
            h = model.hidden(x[:, :-1], 0)
            h = h + block.proj(F.scaled_dot_product_attention(*block.qk(h), is_causal=True).transpose(1, 2).reshape(h.shape))
            oracle[step] = float(block.ff[1](block.ff[0](block.ln2(h))).pow(2).mean().sqrt())

    findings = train(model, 60, lambda s: 1e-3 if s < 50 else 0.3, only("activation-spike"), log_every=1, detail_every=10, on_snapshot=ff_rms)
    f = findings[0]
    assert 50 <= f.step <= 55 and f.site == "blocks.0.ff.1"  # the first GELU, right after the jump
    before = [oracle[s] for s in range(18, 50)]
    assert spike_score(before, oracle[f.step])[1] > 2  # the oracle sees the jump in that site's RMS too


def _judge_series(site: Site, values: list[float], quantity: str, routers: dict[str, object]) -> list:
    """Feed one site's series to the rule, one snapshot per value; the findings it raises."""
    engine = only("activation-spike")
    for step, value in enumerate(values):
        stats = SiteStats(calls=1, rms=1.0, grad_rms=1e-5)
        setattr(stats, quantity, value)
        engine.evaluate(Snapshot(step=step, window_steps=1, stats={site.name: stats}, sites={site.name: site}, routers=routers))
    return [f for f in engine.findings if f.rule == "activation-spike"]


def _site(kind: str, family: str, consumers: set[str], owner: str = "moe", source: str = "module") -> Site:
    return Site(name=f"{owner}:{kind}", kind=kind, family=family, source=source, owner=owner, module_type=kind, index=0,
                unit_dim=1, n_units=4, shape=(2, 4), consumers=consumers)


ROUTER = {"moe:router": None}  # the tracer saw a top-k read a site of module "moe" (core/routers.py)
STEADY = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.02, 0.98, 1.0]


@pytest.mark.parametrize(
    ("site", "routers", "flagged"),
    [
        (_site("gelu", "smooth", {"moe.w2"}), {}, True),  # the signal path
        (_site("sigmoid", "sigmoid", {"moe.w2"}, owner="mlp"), ROUTER, True),  # a sigmoid of a module that routes nothing
        (_site("sigmoid", "sigmoid", {"mul"}), {}, False),  # a gate: a shared expert's sigmoid gate times its output
        (_site("glu", "other", {"moe.w2"}), {}, False),  # a GLU gates by construction
        (_site("softmax", "softmax", {"activation"}), {}, False),  # probabilities: a router's softmax, an output's
        (_site("sigmoid", "sigmoid", {"activation"}), ROUTER, False),  # the sigmoid a router's top-k reads
        (_site("softmax", "softmax", {"matmul"}, source="attention"), {}, False),  # attention weights
    ],
    ids=["signal", "sigmoid-not-router", "sigmoid-gate", "glu", "softmax", "sigmoid-router", "attention"],
)
@pytest.mark.parametrize("quantity", ["rms", "grad_rms"])
def test_only_the_signal_path_is_judged(site: Site, routers: dict[str, object], flagged: bool, quantity: str) -> None:
    scale = 1.0 if quantity == "rms" else 2e-5  # a router's gradient RMS is ~2e-5 on a healthy Mixtral
    values = [v * scale for v in [*STEADY, 10.0]]
    findings = _judge_series(site, values, quantity, routers)
    assert spike_score(values[:-1], values[-1])[0] > 6  # the series spikes by the score and the ratio alike
    assert [(f.step, f.site, f.evidence["quantity"]) for f in findings] == ([(len(STEADY), site.name, quantity)] if flagged else [])
