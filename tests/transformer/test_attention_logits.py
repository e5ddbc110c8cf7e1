"""attention-logit-growth: the largest pre-softmax logit per head, from the attention sample, checked
against plain torch; a decoder trained at a high learning rate without QK-norm is flagged before
its attention collapses, the same decoder at a sane rate or with QK-LayerNorm is not."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from tiny_models import TinyLM, copy_batches, lm_loss, max_attention_logit, only, train

from act_diagnostics.core import ActivationMonitor
from act_diagnostics.core.attention import attention_probabilities, mha_probabilities
from act_diagnostics.rules import RULE_IDS


def _qk(heads=2, n=3, length=5, dim=4):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(n, heads, length, dim, generator=g) * 3 for _ in range(3))


def test_sdpa_peaks_per_head_leave_out_masked_keys() -> None:
    q, k, v = _qk()
    scores = q @ k.transpose(-2, -1) / 2.0  # scale 1/sqrt(4)
    peaks: list[torch.Tensor] = []
    attention_probabilities((q, k, v), {}, None, peaks)
    assert torch.allclose(peaks[0], scores.amax(dim=(0, 2, 3)))
    causal = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    peaks.clear()
    attention_probabilities((q, k, v, None, 0.0, True), {}, None, peaks)
    assert torch.allclose(peaks[0], causal.amax(dim=(0, 2, 3)))
    # A float mask: a bias, not part of the logit; the dtype's minimum (Hugging Face) blocks its key.
    mask = torch.zeros(5, 5)
    top = scores.flatten(0, 1).amax(0)  # where each head's largest logit sits, blocked below
    mask[top == top.max()] = torch.finfo(torch.float32).min
    mask[0, 0] = 0.0
    expected = scores.masked_fill(mask <= -1e4, float("-inf")).amax(dim=(0, 2, 3))
    peaks.clear()
    attention_probabilities((q, k, v, mask + 0.5), {}, None, peaks)
    assert torch.allclose(peaks[0], expected)
    assert not torch.allclose(peaks[0], scores.amax(dim=(0, 2, 3)))  # the blocked key was left out


def test_multihead_attention_peaks_match_its_own_projections() -> None:
    mha = nn.MultiheadAttention(8, 2, batch_first=False)
    x = torch.randn(6, 3, 8) * 2
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[:, -1] = True  # the last key is padding
    peaks: list[torch.Tensor] = []
    args = (x, x, x, 8, 2, mha.in_proj_weight, mha.in_proj_bias, None, None, False, 0.0, mha.out_proj.weight, mha.out_proj.bias)
    mha_probabilities(F.multi_head_attention_forward, args, {"key_padding_mask": pad}, None, peaks)
    w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
    q = (x @ w[:8].T + b[:8]).reshape(6, 3, 2, 4).permute(1, 2, 0, 3)
    k = (x @ w[8:16].T + b[8:16]).reshape(6, 3, 2, 4).permute(1, 2, 0, 3)
    scores = (q @ k.transpose(-2, -1) / 2.0)[..., :-1]
    assert torch.allclose(peaks[0], scores.amax(dim=(0, 2, 3)), atol=1e-5)


def test_monitor_reports_the_oracle_max_logit_per_head_and_keeps_it_on_detail_steps() -> None:
    model = TinyLM()
    x = next(copy_batches())
    with ActivationMonitor(model) as mon:  # the `with` opens a detail step
        lm_loss(model, x).backward()
        mon.step()  # a plain step: no attention sample
        lm_loss(model, x).backward()
        snap = mon.snapshot()
    for layer in range(2):
        stats = snap.stats[f"blocks.{layer}:attention"]
        oracle = max_attention_logit(model, x[:, :-1], layer)
        assert len(stats.max_logit_heads) == 2  # one per head
        assert torch.allclose(torch.tensor(stats.max_logit_heads, dtype=torch.float64), oracle.double(), atol=1e-4)
        assert math.isclose(stats.max_logit, float(oracle.max()), rel_tol=1e-5)


def test_max_columns_reduce_by_max_across_ranks() -> None:
    model = TinyLM()
    x = next(copy_batches())
    maxima = []
    for gather in (None, lambda t: torch.stack((t, t * 0.5))):  # a second rank with half the values
        torch.manual_seed(0)
        model = TinyLM()
        with ActivationMonitor(model) as mon:
            lm_loss(model, x).backward()
            snap = mon.snapshot(all_gather=gather)
        maxima.append(snap.stats["blocks.1:attention"].max_logit)
        if gather is not None:  # the counters are sums: twice the calls
            assert snap.stats["blocks.1:attention"].calls == 2
    assert maxima[0] == maxima[1] and maxima[0] > 0  # max, not sum (1.5x) nor mean (0.75x)


def _first(findings, rule):
    return next((f for f in findings if f.rule == rule), None)


def test_high_learning_rate_without_qk_norm_is_flagged_before_attention_collapses() -> None:
    model = TinyLM()
    seen: dict[int, float] = {}

    def oracle(step, snap, x):  # independent max logit of the last block, on the same batch
        seen[step] = float(max_attention_logit(model, x[:, :-1], 1).max())

    findings = train(model, 60, 0.03, only("attention-logit-growth", "attention-collapse"), on_snapshot=oracle)
    growth = _first(findings, "attention-logit-growth")
    assert growth is not None and growth.site.endswith(":attention")
    assert growth.evidence["max_logit"] >= 30 and growth.evidence["growth"] >= 2
    assert max(seen.values()) >= 30 and min(seen.values()) < 15  # the oracle sees the growth too
    collapse = _first(findings, "attention-collapse")
    assert collapse is None or growth.step < collapse.step
    assert "QK-LayerNorm" in growth.recommendation


def test_sane_rate_or_qk_norm_raise_nothing() -> None:
    for lr, qk_norm in ((1e-3, False), (0.03, True)):
        torch.manual_seed(0)
        findings = train(TinyLM(qk_norm=qk_norm), 60, lr, only("attention-logit-growth"))
        assert [f for f in findings if f.rule == "attention-logit-growth"] == [], (lr, qk_norm)


# ---------------------------------------------------------------- attention written by hand
def test_eager_attention_max_logit_per_head_matches_the_oracle() -> None:
    model = TinyLM(eager=True)
    x = next(copy_batches())
    with ActivationMonitor(model) as mon:
        lm_loss(model, x).backward()
        snap = mon.snapshot()
    for layer in range(2):
        name = f"blocks.{layer}:softmax"  # the softmax's own name: its scalars stay where they were
        assert snap.sites[name].source == "attention" and f"blocks.{layer}:attention" not in snap.sites
        oracle = max_attention_logit(model, x[:, :-1], layer)
        assert torch.allclose(torch.tensor(snap.stats[name].max_logit_heads, dtype=torch.float64), oracle.double(), atol=1e-5)


def test_eager_attention_gets_the_findings_of_the_same_model_over_sdpa() -> None:
    """The same decoder, the same seed and data, attention by SDPA or by hand: the same findings
    (rule, severity) from every rule, at a high learning rate (logit growth) and at a sane one."""
    for lr in (0.03, 1e-3):
        found = []
        for eager in (False, True):
            torch.manual_seed(0)
            findings = train(TinyLM(eager=eager), 60, lr, only(*RULE_IDS))
            found.append(sorted({(f.rule, f.severity, f.site.rsplit(":", 1)[0]) for f in findings if f.severity != "info"}))
        assert found[0] == found[1], (lr, found)
        assert (lr == 0.03) == any(rule == "attention-logit-growth" for rule, _, _ in found[1]), (lr, found)
