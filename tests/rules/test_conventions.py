"""Architecture conventions the rules respect, end to end (monitor -> facts -> notions -> rules) on
tiny hand-made models, each checked against a plain-torch oracle; and the same judgements on
hand-built facts."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from snapshot_builders import make_site, make_snapshot, relu_stats

from act_diagnostics.core import ActivationMonitor
from act_diagnostics.rules import RULE_IDS, RuleEngine


def only(*rule_ids: str) -> RuleEngine:
    return RuleEngine(disable=[r for r in RULE_IDS if r not in rule_ids])


def run(model: nn.Module, batches, loss_fn, steps: int, engine: RuleEngine, log_every: int = 5, lr: float = 1e-3):
    """Plain training loop: pre-flight on step 0, a judged window every ``log_every`` steps."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    mon = ActivationMonitor(model).attach()
    try:
        for step in range(steps):
            log = step == 0 or (step + 1) % log_every == 0
            mon.begin_step(detail=log)
            x, y = batches(step)
            loss = loss_fn(model(x), y)
            loss.backward()
            if log:
                mon.measure_param_grads()
            opt.step()
            opt.zero_grad(set_to_none=True)
            mon.end_step()
            if log:
                engine.evaluate(mon.snapshot(step=step), preflight=step == 0)
    finally:
        mon.detach()
    return engine


def classes(n: int = 32, d: int = 16, k: int = 4):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(d, k, generator=g)

    def batch(step: int):
        x = torch.randn(n, d, generator=g)
        return x, (x @ w).argmax(1)

    return batch


# ---------------------------------------------------------------- residual scale (LayerScale)
class ScaledBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)
        self.gamma = nn.Parameter(torch.full((32,), 1e-6))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.gamma * self.fc2(self.act(self.fc1(h)))


class BlockNet(nn.Module):
    """ConvNeXt-style: a stem without activation, residual blocks whose GELU branch is scaled by a
    LayerScale gamma of 1e-6 held by the block, a norm and an MLP head (Linear, ReLU, Linear)."""

    def __init__(self, blocks: int = 4) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 32)
        self.blocks = nn.Sequential(*[ScaledBlock() for _ in range(blocks)])
        self.norm = nn.LayerNorm(32)
        self.head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.stem(x))))


def test_layerscale_branches_are_not_vanishing_gradient():
    torch.manual_seed(0)
    model = BlockNet()
    before = [b.fc1.weight.detach().clone() for b in model.blocks]
    grads: dict[str, float] = {}  # at the first step
    for i, block in enumerate(model.blocks):
        block.act.register_full_backward_hook(lambda m, gi, go, i=i: grads.setdefault(f"block{i}", float(go[0].pow(2).mean().sqrt())) and None)
    model.head[1].register_full_backward_hook(lambda m, gi, go: grads.setdefault("head", float(go[0].pow(2).mean().sqrt())) and None)
    engine = run(model, classes(), F.cross_entropy, 30, only("vanishing-gradient"))
    assert [f.rule for f in engine.findings] == []
    # Oracle (plain torch hooks): at the first step the gradient at the blocks' GELU is > 1000x
    # below the head's, which AUTOTRAINER's test reads as vanishing, yet every block learns.
    assert max(grads[f"block{i}"] for i in range(4)) / grads["head"] < 1e-3 and grads["block0"] < 1e-4, grads
    moved = [float((b.fc1.weight - w0).norm() / w0.norm()) for b, w0 in zip(model.blocks, before)]
    assert min(moved) > 1e-3, moved


def test_the_branch_notion_is_what_keeps_it_quiet():
    """Hand-built: a first site inside a LayerScale branch with a 1e-10 gradient, against 1e-3 at
    the head: flagged without the parameter fact, not with it."""
    sites = [
        make_site("blocks.0.act", "gelu", index=0, owner="blocks.0"),
        make_site("blocks.1.act", "gelu", index=1, owner="blocks.1"),
        make_site("head_act", "relu", index=2, owner=""),
        make_site("out", "relu", index=3, owner="", consumers={"output"}),
    ]
    grads = [1e-10, 1e-10, 1e-3, 1e-3]
    snap = make_snapshot([(s, relu_stats([0.5] * 8, grad_rms=g)) for s, g in zip(sites, grads)])
    engine = only("vanishing-gradient")
    for step in (100, 200):
        snap.step = step
        engine.evaluate(snap)
    assert [f.rule for f in engine.findings] == ["vanishing-gradient"]
    snap.param_scales = {"blocks.0.gamma": 1e-6, "blocks.1.gamma": 1e-6, "head.weight": 0.3}
    quiet = only("vanishing-gradient")
    for step in (100, 200):
        snap.step = step
        quiet.evaluate(snap)
    assert quiet.findings == []


# ---------------------------------------------------------------- heads initialised small
class SmallInitHead(nn.Module):
    """MobileNet-style: a Kaiming ReLU trunk, then a classifier Linear -> Hardswish -> Linear, both
    Linears N(0, 0.01) as torchvision initialises MobileNet's classifier."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(4):
            lin = nn.Linear(16 if i == 0 else 64, 64)
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(64, 128), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(128, 4))
        for m in self.classifier:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def test_a_small_initialised_head_is_no_signal_collapse():
    torch.manual_seed(0)
    model = SmallInitHead()
    x, _ = classes()(0)
    # Oracle: across the whole model the pre-activation std drops > 10x at the head's hardswish,
    # while the trunk keeps its scale.
    stds, h = [], x
    with torch.no_grad():
        for m in [*model.features, *model.classifier[:2]]:
            if isinstance(m, (nn.ReLU, nn.Hardswish)):
                stds.append(float(h.std()))
            h = m(h)
    assert max(stds) / stds[-1] > 10 and max(stds[:-1]) / min(stds[:-1]) < 10
    engine = run(model, classes(), F.cross_entropy, 1, only("signal-propagation"))
    assert engine.findings == []


# ---------------------------------------------------------------- heads are not hidden stacks
class Pooler(nn.Module):
    """BERT-style: GELU encoder layers, a tanh pooler on the first token, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)) for _ in range(6))
        self.pooler, self.pool_act, self.classifier = nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.view(x.shape[0], 2, 8).repeat(1, 3, 2)  # (N, 6 tokens, 16)
        for layer in self.layers:
            h = h + layer(h)
        return self.classifier(self.pool_act(self.pooler(h[:, 0])))


def test_a_pooler_tanh_is_no_saturating_hidden_stack():
    torch.manual_seed(0)
    engine = run(Pooler(), classes(), F.cross_entropy, 10, only("saturating-hidden-activation"))
    assert engine.findings == []


def test_a_deep_sigmoid_stack_is_still_flagged_and_a_shallow_one_is_an_info_note():
    torch.manual_seed(0)
    deep = nn.Sequential(*[m for i in range(4) for m in (nn.Linear(16, 32) if i == 0 else nn.Linear(32, 32), nn.Sigmoid())], nn.Linear(32, 4))
    engine = run(deep, classes(), F.cross_entropy, 10, only("saturating-hidden-activation"))
    assert [(f.severity, f.evidence["depth"]) for f in engine.findings] == [("warning", 5)]
    shallow = nn.Sequential(nn.Linear(16, 32), nn.Sigmoid(), nn.Linear(32, 32), nn.Sigmoid(), nn.Linear(32, 4))
    engine = run(shallow, classes(), F.cross_entropy, 10, only("saturating-hidden-activation"))
    assert {f.severity for f in engine.findings} <= {"info"}


# ---------------------------------------------------------------- degenerate pre-flight batches
def test_a_single_all_zeros_row_is_not_judged_in_preflight():
    """A correct ReLU MLP initialised as Keras does (Glorot weights, zero biases), fed one all-zeros
    row: every pre-activation is 0, and statistics across rows describe one row; nothing about the
    model follows from it."""
    torch.manual_seed(0)
    model = nn.Sequential(*[m for i in range(4) for m in (nn.Linear(16 if i == 0 else 64, 64), nn.ReLU())], nn.Linear(64, 4))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    zeros = lambda step: (torch.zeros(1, 16), torch.zeros(1, dtype=torch.long))  # noqa: E731
    engine = run(model, zeros, F.cross_entropy, 1, RuleEngine())
    assert [f.rule for f in engine.findings if f.severity != "info"] == []
    # The same model, a real batch: judged, and clean.
    engine = run(model, classes(), F.cross_entropy, 1, RuleEngine())
    assert [f.rule for f in engine.findings if f.severity != "info"] == []
