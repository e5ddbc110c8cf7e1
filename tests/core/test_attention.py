"""Attention weights of F.scaled_dot_product_attention and nn.MultiheadAttention: recomputed for a
sample on detail steps and measured as a softmax site; checked against the weights written out by
hand (SDPA) and against the ones nn.MultiheadAttention returns itself."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monitor_fixtures import CountTransfers
from torch.overrides import TorchFunctionMode

from act_diagnostics.core import ActivationMonitor
from act_diagnostics.core.attention import attention_probabilities, mha_probabilities
from act_diagnostics.core.monitor import UnmeasuredModules


def _reference(q, k, mask=None, causal=False, scale=None, gqa=False):
    """softmax(q k^T * scale + mask) of every batch element and head, as (N * H, L, S)."""
    q, k = q.float(), k.float()
    if gqa:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    L, S = scores.shape[-2:]
    if causal:
        scores = scores.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        m = mask.expand_as(scores)
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m
    return torch.softmax(scores, -1).reshape(-1, L, S)


def _qkv(heads=4, kv_heads=None, L=6, S=6, E=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, L, E, generator=g).to(dtype)
    k = torch.randn(2, kv_heads or heads, S, E, generator=g).to(dtype)
    return q, k, torch.randn(2, kv_heads or heads, S, E, generator=g).to(dtype)


def test_plain_and_scaled() -> None:
    q, k, v = _qkv(S=5)
    assert torch.allclose(attention_probabilities((q, k, v), {}, None), _reference(q, k), atol=1e-6)
    got = attention_probabilities((q, k, v), {"scale": 0.7}, None)
    assert torch.allclose(got, _reference(q, k, scale=0.7), atol=1e-6)
    assert not torch.allclose(got, _reference(q, k), atol=1e-3)  # the scale is used


def test_causal_and_masks() -> None:
    q, k, v = _qkv()
    got = attention_probabilities((q, k, v, None, 0.0, True), {}, None)
    assert torch.allclose(got[:, 1:], _reference(q, k, causal=True)[:, 1:], atol=1e-6)
    assert torch.all(got[:, 0] == 0.0)  # the first query sees one key: no choice, not counted as peaked
    bool_mask = torch.rand(6, 6, generator=torch.Generator().manual_seed(1)) > 0.3
    bool_mask[:, 0] = True  # every query sees a key
    got = attention_probabilities((q, k, v), {"attn_mask": bool_mask}, None)
    assert torch.allclose(got, _reference(q, k, mask=bool_mask), atol=1e-6)
    float_mask = torch.randn(2, 1, 6, 6)  # per batch element, broadcast over heads
    got = attention_probabilities((q, k, v, float_mask), {}, None)
    assert torch.allclose(got, _reference(q, k, mask=float_mask), atol=1e-6)


def test_a_query_that_sees_at_most_one_key_is_zero_not_nan() -> None:
    q, k, v = _qkv()
    mask = torch.ones(6, 6, dtype=torch.bool)
    mask[2] = False  # padding: query 2 sees nothing
    mask[4, 1:] = False  # query 4 sees one key
    got = attention_probabilities((q, k, v), {"attn_mask": mask}, None)
    assert torch.isfinite(got).all() and torch.all(got[:, 2] == 0) and torch.all(got[:, 4] == 0)
    assert torch.allclose(got[:, 3], _reference(q, k, mask=mask)[:, 3], atol=1e-6)
    q1, k1, v1 = _qkv(S=1)
    assert torch.all(attention_probabilities((q1, k1, v1), {}, None) == 0)  # a single key: no choice at all
    q[0, 0, 0, 0] = float("nan")  # a real NaN still shows
    assert torch.isnan(attention_probabilities((q, k, v), {"attn_mask": mask}, None)).any()


def test_grouped_query_attention_and_low_precision() -> None:
    q, k, v = _qkv(heads=4, kv_heads=2)
    got = attention_probabilities((q, k, v), {"enable_gqa": True}, None)
    assert got.shape == (8, 6, 6) and torch.allclose(got, _reference(q, k, gqa=True), atol=1e-6)
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))
    got = attention_probabilities((qb, kb, vb), {"enable_gqa": True}, None)
    assert got.dtype == torch.float32 and torch.allclose(got, _reference(qb, kb, gqa=True), atol=1e-6)


def test_float32_under_autocast() -> None:
    q, k, v = _qkv()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attention_probabilities((q, k, v), {}, None)
    assert got.dtype == torch.float32 and torch.allclose(got, _reference(q, k), atol=1e-6)


def test_sample_budget_and_three_dim_inputs() -> None:
    q, k, v = _qkv(heads=4, L=10, S=6)  # 240 weights per batch element
    ref = _reference(q, k)
    assert torch.allclose(attention_probabilities((q, k, v), {}, None), ref, atol=1e-6)  # both elements
    got = attention_probabilities((q, k, v), {}, 300)  # one element fits
    assert got.shape == (4, 10, 6) and torch.allclose(got, ref[:4], atol=1e-6)
    got = attention_probabilities((q, k, v), {}, 4 * 6 * 3)  # one element does not: three query rows
    assert got.shape == (4, 3, 6) and torch.allclose(got, ref[:4, :3], atol=1e-6)
    assert attention_probabilities((q, k, v), {}, 1).shape == (4, 1, 6)  # at least one row
    q3, k3 = q[:, 0], k[:, 0]  # (N, L, E): no head dimension
    got = attention_probabilities((q3, k3, v[:, 0]), {}, None)
    assert got.shape == (2, 10, 6) and torch.allclose(got, _reference(q3.unsqueeze(1), k3.unsqueeze(1)), atol=1e-6)
    assert attention_probabilities((q[:0], k[:0], v[:0]), {}, None) is None  # empty batch


class Attention(nn.Module):
    def __init__(self, d: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.qkv, self.out, self.heads = nn.Linear(d, 3 * d), nn.Linear(d, d), heads

    def forward(self, x):
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        self.last_qk = (q.detach(), k.detach())
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(self.attn(x)))).mean(1)


def _run(model, steps, detail_steps, monitor=True):
    torch.manual_seed(1)
    mon = ActivationMonitor(model, structure_steps=1).attach() if monitor else None
    losses, peaked = [], []
    for i in range(steps):
        if mon:
            mon.begin_step(detail=i in detail_steps)
        loss = model(torch.randn(3, 8, 16)).pow(2).mean()
        loss.backward()
        losses.append(loss.detach())
        if mon:
            mon.end_step()
        if mon and (i in detail_steps or i == 0):
            ref = _reference(*model.attn.last_qk, causal=True)[:, 1:]  # the first row sees one key
            peaked.append((ref.amax(-1) > 1 - mon.config.saturation_eps).float().sum() / (ref.shape[0] * (ref.shape[1] + 1)))
    snap = mon.snapshot() if mon else None
    if mon:
        mon.detach()
    return snap, losses, peaked, mon


def test_monitor_measures_attention_on_detail_and_discovery_steps_only() -> None:
    torch.manual_seed(0)
    model = Block()
    with torch.no_grad():
        model.attn.qkv.weight.mul_(6.0)  # large scores: many rows nearly one-hot
    plain = Block()
    plain.load_state_dict(model.state_dict())
    snap, losses, peaked, mon = _run(model, 5, detail_steps={3})
    _, plain_losses, _, _ = _run(plain, 5, detail_steps={3}, monitor=False)
    assert [float(a) for a in losses] == [float(b) for b in plain_losses]  # training is untouched
    site, st = snap.sites["attn:attention"], snap.stats["attn:attention"]
    assert (site.kind, site.source, site.n_units) == ("softmax", "attention", 8)
    assert st.calls == 2  # step 0 (discovery) and step 3 (detail)
    share = float(sum(peaked) / len(peaked))
    assert 0.1 < share < 0.9 and st.saturation == pytest.approx(share)  # peaked rows, hand-computed
    assert st.grad_rms is None and st.max_abs <= 1.0
    assert snap.stats[":gelu"].calls == 5
    assert mon.reads_functional_at_consumers  # the attention site does not bring the tracer back on every step


def test_attention_makes_no_host_sync(monkeypatch) -> None:
    model = Block()
    mon = ActivationMonitor(model, structure_steps=1).attach()
    counter = CountTransfers(monkeypatch)
    for i in range(3):
        mon.begin_step(detail=i == 1)
        model(torch.randn(3, 8, 16)).pow(2).mean().backward()
        mon.end_step()
    during_steps = counter.count
    monkeypatch.undo()
    mon.detach()
    assert during_steps == 0 and "attn:attention" in mon.sites


# ---------------------------------------------------------------- nn.MultiheadAttention
class _Capture(TorchFunctionMode):
    """Records the arguments of F.multi_head_attention_forward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple, dict]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:
            self.calls.append((args, kwargs))
        return func(*args, **kwargs)


def _mha_case(mha: nn.MultiheadAttention, x: torch.Tensor, **call_kwargs):
    """(what mha_probabilities reads from the call nn.MultiheadAttention makes, the weights that
    nn.MultiheadAttention itself returns in eval mode, per head, as (N * H, L, S))."""
    with _Capture() as capture:
        mha(x, x, x, need_weights=False, **call_kwargs)
    (args, kwargs), = capture.calls
    got = mha_probabilities(F.multi_head_attention_forward, args, kwargs, None)
    mha.eval()
    with torch.no_grad():
        _, want = mha(x, x, x, need_weights=True, average_attn_weights=False, **call_kwargs)
    mha.train()
    return got, want.reshape(-1, *want.shape[-2:])


def test_multihead_attention_weights_match_its_own() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, dropout=0.5, batch_first=True)  # dropout: not in the weights
    x = torch.randn(3, 5, 16)
    got, want = _mha_case(mha, x)
    assert got.shape == (12, 5, 5) and torch.allclose(got, want, atol=1e-6)
    causal = nn.Transformer.generate_square_subsequent_mask(5)  # float, -inf above the diagonal
    padding = torch.zeros(3, 5)
    padding[1, 3:] = float("-inf")  # the second element's last two keys are padding
    got, want = _mha_case(mha, x, attn_mask=causal, key_padding_mask=padding)
    assert torch.all(got.reshape(3, 4, 5, 5)[:, :, 0] == 0)  # the first query sees one key
    assert torch.allclose(got.reshape(3, 4, 5, 5)[:, :, 1:], want.reshape(3, 4, 5, 5)[:, :, 1:], atol=1e-6)
    bool_mask = torch.zeros(5, 5, dtype=torch.bool)
    bool_mask[:, 3] = True  # True: blocked (nn.MultiheadAttention's convention)
    got, want = _mha_case(mha, x, attn_mask=bool_mask)
    assert torch.all(got[..., 3] == 0) and torch.allclose(got, want, atol=1e-6)


def test_multihead_attention_extra_keys_sequence_first_and_budget() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, add_bias_kv=True, add_zero_attn=True)  # (L, N, E), two extra keys
    x = torch.randn(6, 4, 16)
    got, want = _mha_case(mha, x)
    assert got.shape == (8, 6, 8) and torch.allclose(got, want, atol=1e-6)
    with _Capture() as capture:
        mha(x, x, x, need_weights=False)
    (args, kwargs), = capture.calls
    small = mha_probabilities(F.multi_head_attention_forward, args, kwargs, 2 * 6 * 8 * 2)  # two elements fit
    assert small.shape == (4, 6, 8) and torch.allclose(small, want[:4], atol=1e-6)


class EncoderModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True)  # dropout: RNG in use
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def test_transformer_encoder_attention_is_a_site_and_training_is_untouched() -> None:
    def run(monitor: bool):
        torch.manual_seed(0)
        model = EncoderModel()
        mon = ActivationMonitor(model, structure_steps=1).attach() if monitor else None
        losses = []
        for i in range(4):
            if mon:
                mon.begin_step(detail=i == 2)
            loss = model(torch.randn(3, 6, 16)).pow(2).mean()
            loss.backward()
            losses.append(float(loss.detach()))
            if mon:
                mon.end_step()
        snap = mon.snapshot() if mon else None
        if mon:
            mon.detach()
        return losses, snap

    plain, _ = run(False)
    losses, snap = run(True)
    assert losses == plain  # same dropout masks: the recomputation draws no random numbers
    names = [n for n in snap.sites if snap.sites[n].source == "attention"]
    assert names == ["encoder.layers.0.self_attn:attention", "encoder.layers.1.self_attn:attention"]
    for name in names:
        st = snap.stats[name]
        assert st.calls == 2 and st.elements == 2 * 3 * 4 * 6 * 6 and st.saturation_samples == 2 * 3 * 4 * 6
        assert st.mean == pytest.approx(1 / 6)  # every row sums to one over 6 keys


def test_an_attention_call_that_cannot_be_read_stops_attention_only(monkeypatch) -> None:
    import act_diagnostics.core.calls as calls_module

    def broken(*args, **kwargs):
        raise ValueError("unexpected input")

    monkeypatch.setattr(calls_module, "read_attention", broken)
    model = Block()
    mon = ActivationMonitor(model, structure_steps=1).attach()
    with pytest.warns(UnmeasuredModules, match="cannot recompute the attention weights.*unexpected input") as record:
        for _ in range(3):
            mon.begin_step(detail=True)
            model(torch.randn(3, 8, 16)).pow(2).mean().backward()
            mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    assert len([r for r in record if issubclass(r.category, UnmeasuredModules)]) == 1
    assert mon.failure is None and snap.stats[":gelu"].calls == 3 and not any(":attention" in n for n in snap.sites)
