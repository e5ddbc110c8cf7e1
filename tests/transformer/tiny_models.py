"""Tiny transformers and mixture-of-experts layers for the issue-19 tests (a plain module, imported
by name as the rules tests import snapshot_builders), and plain-torch oracles for their statistics."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from act_diagnostics.core import ActivationMonitor
from act_diagnostics.rules import RULE_IDS, RuleEngine
from tests.core.monitor_fixtures import CountTransfers  # noqa: F401 - the transformer tests count host reads too

VOCAB, LENGTH = 16, 16


class Block(nn.Module):
    """Pre-LN decoder block over F.scaled_dot_product_attention, optionally with QK-LayerNorm;
    ``eager``: the same attention written by hand (scores, causal -inf mask, F.softmax, @ v)."""

    def __init__(self, d: int, heads: int, qk_norm: bool = False, eager: bool = False) -> None:
        super().__init__()
        self.heads, self.eager = heads, eager
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm, self.k_norm = nn.LayerNorm(d // heads), nn.LayerNorm(d // heads)

    def qk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in self.qkv(self.ln1(x)).split(d, -1))
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qk(x)
        if self.eager:
            n = x.shape[1]
            scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
            scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=x.device).tril(), float("-inf"))
            a = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(x.shape)
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(x.shape)
        x = x + self.proj(a)
        return x + self.ff(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, d: int = 32, heads: int = 2, layers: int = 2, qk_norm: bool = False, eager: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.randn(LENGTH, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads, qk_norm, eager) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB)

    def hidden(self, x: torch.Tensor, upto: int) -> torch.Tensor:
        h = self.embed(x) + self.pos[: x.shape[1]]
        for block in self.blocks[:upto]:
            h = block(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln(self.hidden(x, len(self.blocks))))


def copy_batches(seed: int = 1, batch: int = 16) -> Iterator[torch.Tensor]:
    """Sequences whose second half repeats the first: attention has something to find."""
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randint(0, VOCAB, (batch, LENGTH + 1), generator=g)
        x[:, LENGTH // 2 :] = x[:, : LENGTH + 1 - LENGTH // 2].clone()
        yield x


def lm_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x[:, :-1]).reshape(-1, VOCAB), x[:, 1:].reshape(-1))


@torch.no_grad()
def max_attention_logit(model: TinyLM, x: torch.Tensor, layer: int) -> torch.Tensor:
    """Oracle: per head, the largest causal q.k / sqrt(d_head) of ``layer`` on ``x``, plain torch."""
    block = model.blocks[layer]
    q, k, _ = block.qk(model.hidden(x, layer))
    n = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return scores.amax(dim=(0, 2, 3))


def only(*rule_ids: str, **thresholds: float) -> RuleEngine:
    return RuleEngine(disable=[r for r in RULE_IDS if r not in rule_ids], thresholds=thresholds or None)


def train(
    model: nn.Module,
    steps: int,
    lr: float | Callable[[int], float],
    engine: RuleEngine,
    loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lm_loss,
    batches: Iterator[torch.Tensor] | None = None,
    log_every: int = 5,
    detail_every: int = 5,
    on_snapshot: Callable[[int, object, torch.Tensor], None] | None = None,
    scale_batch: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> list:
    """Adam training under a torch-only monitor; a snapshot judged every ``log_every`` steps (a
    detail step every ``detail_every``). Returns the findings."""
    batches = batches if batches is not None else copy_batches()
    opt = torch.optim.Adam(model.parameters(), lr=lr(0) if callable(lr) else lr)
    mon = ActivationMonitor(model).attach()
    try:
        for step in range(steps):
            if callable(lr):
                for group in opt.param_groups:
                    group["lr"] = lr(step)
            x = next(batches)
            mon.begin_step(detail=step % detail_every == detail_every - 1 or step == 0)
            loss = loss_fn(model, x) if scale_batch is None else loss_fn(model, scale_batch(step, x))
            opt.zero_grad()
            loss.backward()
            mon.measure_param_grads()
            opt.step()
            mon.end_step()
            if step % log_every == log_every - 1 or step == 0:
                snap = mon.snapshot(step=step)
                engine.evaluate(snap, preflight=step == 0)
                if on_snapshot is not None:
                    on_snapshot(step, snap, x)
    finally:
        mon.detach()
    return engine.findings


def counting_batches(seed: int = 1, batch: int = 16) -> Iterator[torch.Tensor]:
    """x_t = x_0 + t (mod VOCAB): every next token is certain, so the loss can reach 0."""
    g = torch.Generator().manual_seed(seed)
    while True:
        yield (torch.randint(0, VOCAB, (batch, 1), generator=g) + torch.arange(LENGTH + 1)) % VOCAB


def z_loss(coefficient: float) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """Cross-entropy plus PaLM's z-loss ``coefficient * logsumexp(logits)**2``."""

    def loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = model(x[:, :-1]).reshape(-1, VOCAB)
        return F.cross_entropy(logits, x[:, 1:].reshape(-1)) + coefficient * torch.logsumexp(logits, -1).pow(2).mean()

    return loss


# ---------------------------------------------------------------- mixtures of experts
class Expert(nn.Module):
    """Mixtral's expert MLP (MixtralBlockSparseTop2MLP): w2(silu(w1 x) * w3 x)."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.w1, self.w2, self.w3 = nn.Linear(d, hidden, bias=False), nn.Linear(hidden, d, bias=False), nn.Linear(d, hidden, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


class MixtralStyleMoE(nn.Module):
    """The forward of Hugging Face's MixtralSparseMoeBlock (and, with ``shared``, Qwen2MoeSparseMoeBlock's
    shared expert behind a sigmoid gate), written out: transformers is not installed here."""

    def __init__(self, d: int = 16, experts: int = 4, top_k: int = 2, shared: bool = False) -> None:
        super().__init__()
        self.num_experts, self.top_k = experts, top_k
        self.gate = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList(Expert(d, 2 * d) for _ in range(experts))
        self.shared = shared
        if shared:
            self.shared_expert, self.shared_expert_gate = Expert(d, 2 * d), nn.Linear(d, 1, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_dim)
        router_logits = self.gate(hidden_states)
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(hidden_states.dtype)
        final = torch.zeros((batch_size * sequence_length, hidden_dim), dtype=hidden_states.dtype)
        expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        for expert_idx in range(self.num_experts):
            idx, top_x = torch.where(expert_mask[expert_idx])
            current_state = hidden_states[None, top_x].reshape(-1, hidden_dim)
            current = self.experts[expert_idx](current_state) * routing_weights[top_x, idx, None]
            final.index_add_(0, top_x, current.to(hidden_states.dtype))
        if self.shared:
            final = final + F.sigmoid(self.shared_expert_gate(hidden_states)) * self.shared_expert(hidden_states)
        return final.reshape(batch_size, sequence_length, hidden_dim), router_logits


class HandRouterMoE(nn.Module):
    """A hand-written router: logits -> softmax (or sigmoid) -> Tensor.topk -> per-expert dispatch."""

    def __init__(self, d: int = 16, experts: int = 4, top_k: int = 1, sigmoid: bool = False) -> None:
        super().__init__()
        self.router = nn.Linear(d, experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d)) for _ in range(experts))
        self.top_k, self.sigmoid = top_k, sigmoid

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(-1, x.shape[-1])
        logits = self.router(flat)
        probs = logits.sigmoid() if self.sigmoid else logits.softmax(-1)
        weights, chosen = probs.topk(self.top_k)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (chosen == e).nonzero(as_tuple=True)
            out = out.index_add(0, rows, expert(flat[rows]) * weights[rows, slot, None])
        return out.reshape(x.shape), logits


class MoEClassifier(nn.Module):
    """Features -> one MoE layer (residual) -> a classifier over VOCAB classes per position."""

    def __init__(self, moe: nn.Module, d: int = 16) -> None:
        super().__init__()
        self.inp, self.moe, self.head = nn.Linear(8, d), moe, nn.Linear(d, VOCAB)
        self.router_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        y, self.router_logits = self.moe(h)
        return self.head(h + y)


def load_balancing_loss(router_logits: torch.Tensor, experts: int, top_k: int) -> torch.Tensor:
    """Switch Transformer's auxiliary loss (Fedus et al. 2021), as Hugging Face's load_balancing_loss_func:
    experts * sum_e (share of tokens routed to e) * (mean router probability of e)."""
    probs = router_logits.softmax(-1)
    chosen = F.one_hot(probs.topk(top_k).indices, experts).float().sum(1)
    return experts * (chosen.mean(0) / top_k * probs.mean(0)).sum()


def moe_batches(seed: int = 3, batch: int = 8, length: int = 8) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, VOCAB, generator=g)
    while True:
        x = torch.randn(batch, length, 8, generator=g)
        yield x, (x @ w).argmax(-1)


def route_counts(model: MoEClassifier, x: torch.Tensor) -> torch.Tensor:
    """Oracle: tokens per expert for ``x`` from the router's own logits, plain torch (softmax top-k)."""
    with torch.no_grad():
        _, logits = model.moe(model.inp(x))
        probs = logits.sigmoid() if getattr(model.moe, "sigmoid", False) else logits.softmax(-1)
        return torch.bincount(probs.topk(model.moe.top_k).indices.reshape(-1), minlength=probs.shape[-1])


class LMWithMoE(nn.Module):
    """A one-block decoder with a hand-routed MoE layer after it: attention, a router and a loss."""

    def __init__(self) -> None:
        super().__init__()
        self.lm = TinyLM(d=16, layers=1)
        self.moe = HandRouterMoE(d=16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lm.hidden(x, 1)
        y, _ = self.moe(h)
        return self.lm.head(self.lm.ln(h + y))
