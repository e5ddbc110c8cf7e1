"""Hand-written ("eager") attention: the structural fact (a softmax over the keys of scores made by
a product of two computed tensors, whose weights are multiplied by a third tensor) recorded for the
attention forms users and libraries write, and not for softmaxes that are not attention; its
largest logit per head read from the softmax's input, and its peaked-row share from its output,
checked against hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monitor_fixtures import CountTransfers

from act_diagnostics.core import ActivationMonitor
from act_diagnostics.core.attention import head_logit_peaks

NEG_INF = float("-inf")
D, HEADS, T = 16, 4, 6


def _split(x: torch.Tensor, proj: nn.Linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, t, d = x.shape
    return tuple(s.view(b, t, HEADS, d // HEADS).transpose(1, 2) for s in proj(x).split(d, -1))  # type: ignore[return-value]


class NanoGPT(nn.Module):
    """nanoGPT's manual path: scale, masked_fill(-inf) from a causal buffer, F.softmax, nn.Dropout, @ v."""

    def __init__(self) -> None:
        super().__init__()
        self.c_attn, self.c_proj, self.attn_dropout = nn.Linear(D, 3 * D), nn.Linear(D, D), nn.Dropout(0.1)
        self.register_buffer("bias", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = _split(x, self.c_attn)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, : x.shape[1], : x.shape[1]] == 0, NEG_INF)
        att = self.attn_dropout(F.softmax(att, dim=-1))
        return self.c_proj((att @ v).transpose(1, 2).reshape(x.shape))


class HuggingFace(nn.Module):
    """Hugging Face's eager_attention_forward: matmul * scaling + an additive mask at the dtype's
    minimum, F.softmax in float32 cast back, F.dropout, torch.matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.o = nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = _split(x, self.qkv)
        t = x.shape[1]
        mask = torch.full((t, t), torch.finfo(x.dtype).min).triu(1)[None, None]
        w = torch.matmul(q, k.transpose(2, 3)) * q.shape[-1] ** -0.5 + mask
        w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype).type(v.dtype)
        w = F.dropout(w, p=0.1, training=self.training)
        return self.o(torch.matmul(w, v).transpose(1, 2).reshape(x.shape))


class Timm(nn.Module):
    """timm's Attention with fused_attn off: q scaled first, Tensor.softmax, attn_drop, @ v."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj, self.attn_drop = nn.Linear(D, 3 * D), nn.Linear(D, D), nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = _split(x, self.qkv)
        attn = (q * (D // HEADS) ** -0.5) @ k.transpose(-2, -1)
        attn = self.attn_drop(attn.softmax(dim=-1))
        return self.proj((attn @ v).transpose(1, 2).reshape(x.shape))


class Einsum(nn.Module):
    """einsum for both products, an ALiBi-style bias added to the scores, nn.Softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.o, self.softmax = nn.Linear(D, 3 * D), nn.Linear(D, D), nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = _split(x, self.qkv)
        pos = torch.arange(x.shape[1])
        bias = -(pos[None, :] - pos[:, None]).abs().float() * 0.5
        w = self.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(D // HEADS) + bias)
        return self.o(torch.einsum("bhqk,bhkd->bhqd", w, v).transpose(1, 2).reshape(x.shape))


class MergedHeads(nn.Module):
    """Heads merged into the batch (B * H, T, d): bmm, torch.softmax, bmm."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.o = nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.reshape(-1, x.shape[1], D // HEADS) for t in _split(x, self.qkv))
        w = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(D // HEADS), dim=-1)
        return self.o(torch.bmm(w, v).view(x.shape[0], HEADS, x.shape[1], -1).transpose(1, 2).reshape(x.shape))


class Classifier(nn.Module):
    """Per-token classifier: Linear -> softmax over classes, the model's output."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(D, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.head(x), dim=-1)


class Router(nn.Module):
    """A mixture-of-experts router: softmax over experts of a Linear, top-2, a weighted sum."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(D, 4)
        self.experts = nn.ModuleList(nn.Linear(D, D) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(self.gate(x), dim=-1)
        weights, chosen = probs.topk(2, dim=-1)
        outs = torch.stack([e(x) for e in self.experts], dim=-2)  # (B, T, E, D)
        picked = outs.gather(-2, chosen[..., None].expand(*chosen.shape, D))
        return (weights[..., None] * picked).sum(-2)


class MixtureGate(nn.Module):
    """A soft mixture: gate logits x @ W.t() (a parameter), softmax over experts, einsum with the
    experts' outputs (a product with a third tensor, but the softmax read no scores)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, D) * 0.1)
        self.experts = nn.ModuleList(nn.Linear(D, D) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = F.softmax(x @ self.w.t(), dim=-1)
        return torch.einsum("bte,bted->btd", g, torch.stack([e(x) for e in self.experts], dim=-2))


class WeightedSum(nn.Module):
    """Scores q @ k^T, but the softmax weights a sum by broadcasting, not by a matrix product."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = _split(x, self.qkv)
        w = F.softmax(q @ k.transpose(-2, -1), dim=-1)
        return (w[..., None] * v[:, :, None]).sum(-2).transpose(1, 2).reshape(x.shape)


class OverQueries(nn.Module):
    """Scores normalised over the queries (dim=-2), not the keys: not a softmax over the keys."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = _split(x, self.qkv)
        w = F.softmax(q @ k.transpose(-2, -1), dim=-2)
        return (w @ v).transpose(1, 2).reshape(x.shape)


# (model, its softmax site, recognised as attention)
CASES = [
    (NanoGPT, ":softmax", True),
    (HuggingFace, ":softmax", True),
    (Timm, ":softmax", True),
    (Einsum, "softmax", True),
    (MergedHeads, ":softmax", True),
    (Classifier, ":softmax", False),
    (Router, ":softmax", False),
    (MixtureGate, ":softmax", False),
    (WeightedSum, ":softmax", False),
    (OverQueries, ":softmax", False),
]


def _measure(model: nn.Module, steps: int = 1, detail=lambda i: True, x: torch.Tensor | None = None) -> tuple[ActivationMonitor, object]:
    torch.manual_seed(0)
    x = torch.randn(2, T, D) if x is None else x
    mon = ActivationMonitor(model, structure_steps=1).attach()
    try:
        for i in range(steps):
            mon.begin_step(detail=detail(i))
            model(x).pow(2).mean().backward()
            mon.end_step()
        return mon, mon.snapshot(step=steps)
    finally:
        mon.detach()


@pytest.mark.parametrize(("cls", "site", "attention"), CASES, ids=[c[0].__name__ for c in CASES])
def test_the_fact_is_recorded_for_attention_only(cls, site: str, attention: bool) -> None:
    _, snap = _measure(cls())
    (name,) = [n for n, s in snap.sites.items() if s.kind == "softmax"]
    s = snap.sites[name]
    assert name == site or name.endswith(site)  # the name is kept: logged scalars stay where they were
    assert (s.source == "attention") == attention, (name, s.source)
    assert (snap.stats[name].max_logit is not None) == attention
    if attention:
        assert len(snap.stats[name].max_logit_heads) == (1 if cls is MergedHeads else HEADS)


class GivenLogits(nn.Module):
    """Attention over scores the test chooses: k is the identity, so q @ k^T = q (scale 1), plus a
    mask (``"causal"`` -inf, ``"padding"`` the dtype's minimum on the last key) or an additive bias."""

    def __init__(self, mask: str) -> None:
        super().__init__()
        self.mask = mask

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        k = torch.eye(T).expand(*q.shape[:2], T, T)
        v = q * 2.0
        scores = q @ k.transpose(-2, -1)
        if self.mask == "causal":
            scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), NEG_INF)
        elif self.mask == "padding":
            pad = torch.zeros(T)
            pad[-1] = torch.finfo(q.dtype).min
            scores = scores + pad
        else:
            scores = scores + self.bias()
        return F.softmax(scores, dim=-1) @ v

    @staticmethod
    def bias() -> torch.Tensor:
        pos = torch.arange(T)
        return (pos[None, :] - pos[:, None]).clamp(max=0).float() * 0.25 + 2.0  # ALiBi-like, shifted up


def _logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, HEADS, T, T, generator=g)
    q[0, 1, 0, 5] = 40.0  # above the diagonal (causal: blocked) and the last key (padding: blocked)
    q[1, 2, 3, 1] = 25.0  # a peaked row every mask lets through
    return q.requires_grad_()


@pytest.mark.parametrize("mask", ["causal", "padding", "bias"])
def test_largest_logit_and_peaked_rows_against_hand_computed_scores(mask: str) -> None:
    q = _logits()
    _, snap = _measure(GivenLogits(mask), x=q)
    name = ":softmax"
    assert snap.sites[name].source == "attention"
    scores = q.detach().clone()
    if mask == "causal":
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), NEG_INF)
        assert scores[0, 1].max() < 40.0
    elif mask == "padding":
        scores[..., -1] = NEG_INF  # the dtype's minimum never wins a max
    else:
        scores = scores + GivenLogits.bias()  # what the softmax sees, bias included
    expected = scores.amax(dim=(0, 2, 3))
    assert snap.stats[name].max_logit_heads == pytest.approx(expected.tolist(), rel=1e-6)
    assert snap.stats[name].max_logit == pytest.approx(float(expected.max()), rel=1e-6)
    # The peaked-row share (attention-collapse) comes from the softmax's output itself.
    probs = torch.softmax(scores, dim=-1)
    peaked = (probs.amax(-1) > 1 - 0.01).float().mean()
    assert snap.stats[name].saturation == pytest.approx(float(peaked), abs=1e-6) and float(peaked) > 0


def test_head_logit_peaks_of_a_three_d_input_is_one_head() -> None:
    s = torch.tensor([[[1.0, NEG_INF], [3.0, -2.0]], [[torch.finfo(torch.float32).min, 0.5], [-1.0, 2.5]]])
    assert head_logit_peaks(s).tolist() == [3.0]
    four = s.view(1, 2, 2, 2)  # two heads
    assert head_logit_peaks(four).tolist() == [3.0, 2.5]


def test_the_logits_are_read_on_detail_steps_only_and_the_site_at_its_consumer() -> None:
    """Plain steps measure the softmax as before (read at the Dropout after it, no tracer), and
    read no logit: a window without a detail step has none."""
    model = NanoGPT()
    mon, snap = _measure(model, steps=3, detail=lambda i: i == 0)
    assert mon.reads_functional_at_consumers
    assert snap.stats[":softmax"].calls == 3 and snap.stats[":softmax"].max_logit is not None
    mon2 = ActivationMonitor(model, structure_steps=1).attach()
    x = torch.randn(2, T, D)
    for i in range(3):
        mon2.begin_step(detail=i == 0)
        model(x).pow(2).mean().backward()
        mon2.end_step()
        if i == 0:
            mon2.snapshot(step=1)  # the detail step's window
    plain = mon2.snapshot(step=3)
    mon2.detach()
    assert plain.sites[":softmax"].source == "attention" and plain.stats[":softmax"].calls == 2
    assert plain.stats[":softmax"].max_logit is None


def test_eager_attention_makes_no_host_sync(monkeypatch) -> None:
    model = HuggingFace()
    mon = ActivationMonitor(model, structure_steps=1).attach()
    counter = CountTransfers(monkeypatch)
    for i in range(3):
        mon.begin_step(detail=i != 1)
        model(torch.randn(2, T, D)).pow(2).mean().backward()
        mon.end_step()
    during_steps = counter.count
    monkeypatch.undo()
    snap = mon.snapshot(step=3)
    mon.detach()
    assert during_steps == 0 and snap.sites[":softmax"].source == "attention" and snap.stats[":softmax"].max_logit is not None
