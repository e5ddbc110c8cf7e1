"""Small healthy and faulty training set-ups, built in code (no downloads), for tests, demos and
benchmarks. Every scenario trains in seconds on a CPU.

Example::

    from act_diagnostics.scenarios import SCENARIOS, train
    run = train("softmax_into_cross_entropy")
    print([f.rule for f in run.findings])   # ['activation-loss-mismatch']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from act_diagnostics.callbacks.schedule import StepSchedule
from act_diagnostics.core import ActivationMonitor, Snapshot
from act_diagnostics.rules import Finding, RuleEngine

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Setup:
    """A model, its synthetic data set, the loss and the optimiser settings."""

    model: nn.Module
    inputs: Tensor
    targets: Tensor
    loss_fn: LossFn
    lr: float
    optimizer: str = "sgd"  # "sgd" (momentum 0.9) or "adam"
    batch_size: int = 64


@dataclass(frozen=True)
class Scenario:
    name: str
    healthy: bool
    expects: tuple[str, ...]  # rule ids that must fire (empty for healthy scenarios)
    description: str
    build: Callable[[torch.Generator], Setup]
    steps: int = 150


@dataclass
class Run:
    """What :func:`train` returns."""

    scenario: Scenario
    setup: Setup
    engine: RuleEngine
    losses: list[float] = field(default_factory=list)
    preflight: Snapshot | None = None
    last: Snapshot | None = None

    @property
    def findings(self) -> list[Finding]:
        return self.engine.findings

    def rules(self, min_severity: str = "warning") -> set[str]:
        order = ("info", "warning", "error")
        return {f.rule for f in self.findings if order.index(f.severity) >= order.index(min_severity)}


# ---------------------------------------------------------------------------- synthetic data
def _classes(g: torch.Generator, n: int, d: int, classes: int) -> tuple[Tensor, Tensor]:
    """Gaussian inputs labelled by a fixed random linear teacher (learnable, not trivial)."""
    x = torch.randn(n, d, generator=g)
    teacher = torch.randn(d, classes, generator=g)
    return x, (x @ teacher).argmax(1)


def _binary(g: torch.Generator, n: int, d: int) -> tuple[Tensor, Tensor]:
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    return x, (x @ w > 0).float().unsqueeze(1)


def _images(g: torch.Generator, n: int, classes: int) -> tuple[Tensor, Tensor]:
    x = torch.randn(n, 3, 8, 8, generator=g)
    teacher = torch.randn(3 * 4, classes, generator=g)
    pooled = F.avg_pool2d(x, 4).flatten(1)  # (n, 3*2*2): labels depend on coarse spatial colour
    return x, (pooled @ teacher).argmax(1)


def _sequences(g: torch.Generator, n: int, t: int, d: int, classes: int) -> tuple[Tensor, Tensor]:
    x = torch.randn(n, t, d, generator=g)
    teacher = torch.randn(d, classes, generator=g)
    return x, (x.mean(1) @ teacher).argmax(1)


def _mlp(sizes: list[int], act: Callable[[], nn.Module], head: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    if head is not None:
        layers.append(head)
    return nn.Sequential(*layers)


def _kaiming(model: nn.Sequential, bias: float = 0.0) -> nn.Sequential:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, bias)
    return model


# ---------------------------------------------------------------------------- healthy models
def kaiming_relu_mlp(g: torch.Generator) -> Setup:
    x, y = _classes(g, 2048, 32, 10)
    return Setup(_kaiming(_mlp([32, 128, 128, 128, 10], nn.ReLU)), x, y, F.cross_entropy, lr=0.02)


class BnReluCnn(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(32, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean((2, 3)))


def bn_relu_cnn(g: torch.Generator) -> Setup:
    x, y = _images(g, 1024, 10)
    return Setup(BnReluCnn(), x, y, F.cross_entropy, lr=0.05, batch_size=32)


class PreNormTransformer(nn.Module):
    def __init__(self, d: int = 32, classes: int = 5, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(d, d)
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


def prenorm_gelu_transformer(g: torch.Generator) -> Setup:
    x, y = _sequences(g, 1024, 8, 32, 5)
    return Setup(PreNormTransformer(), x, y, F.cross_entropy, lr=1e-3, optimizer="adam", batch_size=32)


class SdpaBlock(nn.Module):
    """A pre-norm block whose attention calls F.scaled_dot_product_attention (causal) directly."""

    def __init__(self, d: int, heads: int, scale: float | None, qk_norm: bool = False) -> None:
        super().__init__()
        self.heads, self.scale = heads, scale
        self.norm, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        # QK-LayerNorm (Dehghani et al. 2023): queries and keys normalised per head before the dot product.
        self.qk_norm = nn.ModuleList((nn.LayerNorm(d // heads), nn.LayerNorm(d // heads))) if qk_norm else None

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.qk_norm is not None:
            q, k = self.qk_norm[0](q), self.qk_norm[1](k)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(x)


class SdpaTransformer(nn.Module):
    """Blocks with their own attention, as most current transformer code writes it."""

    def __init__(
        self, d: int = 32, heads: int = 4, classes: int = 5, blocks: int = 2, scale: float | None = None, qk_norm: bool = False
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(d, d)
        self.blocks = nn.ModuleList(SdpaBlock(d, heads, scale, qk_norm) for _ in range(blocks))
        self.head = nn.Linear(d, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(1))


def sdpa_transformer(g: torch.Generator) -> Setup:
    x, y = _sequences(g, 1024, 8, 32, 5)
    return Setup(SdpaTransformer(), x, y, F.cross_entropy, lr=1e-3, optimizer="adam", batch_size=32)


class ResidualSiluGatedNet(nn.Module):
    """Residual SiLU blocks with sigmoid (squeeze-excitation style) gates and a sigmoid binary head."""

    def __init__(self, d: int = 32, width: int = 64, blocks: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList(nn.ModuleDict({"fc": nn.Linear(width, width), "gate": nn.Linear(width, width)}) for _ in range(blocks))
        self.act = nn.SiLU()
        self.gate_act = nn.Sigmoid()
        self.out = nn.Linear(width, 1)
        self.out_act = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for block in self.blocks:
            b = cast(nn.ModuleDict, block)  # nn.ModuleList is not generic: its items type as nn.Module
            h = h + self.act(b["fc"](h)) * self.gate_act(b["gate"](h))
        return self.out_act(self.out(h))


def residual_silu_gated_net(g: torch.Generator) -> Setup:
    x, y = _binary(g, 2048, 32)
    return Setup(ResidualSiluGatedNet(), x, y, F.binary_cross_entropy, lr=1e-3, optimizer="adam")


class LstmGeluHead(nn.Module):
    def __init__(self, d: int = 16, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden, 64), nn.GELU(), nn.Linear(64, classes))

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def lstm_gelu_head(g: torch.Generator) -> Setup:
    x, y = _sequences(g, 1024, 10, 16, 4)
    return Setup(LstmGeluHead(), x, y, F.cross_entropy, lr=3e-3, optimizer="adam", batch_size=32)


# ---------------------------------------------------------------------------- faulty models
def collapsed_attention(g: torch.Generator) -> Setup:
    """Attention scores scaled by 16 instead of 1/sqrt(head_dim): nearly one-hot attention rows"""
    x, y = _sequences(g, 1024, 8, 32, 5)
    return Setup(SdpaTransformer(scale=16.0), x, y, F.cross_entropy, lr=1e-3, optimizer="adam", batch_size=32)


def attention_logit_growth(g: torch.Generator) -> Setup:
    """Adam at 0.03 without QK-norm: the largest attention logit grows past 30, attention entropy collapses later"""
    x, y = _sequences(g, 1024, 8, 32, 5)
    return Setup(SdpaTransformer(), x, y, F.cross_entropy, lr=0.03, optimizer="adam", batch_size=32)


def attention_logit_growth_fixed(g: torch.Generator) -> Setup:
    """attention_logit_growth after the advice: QK-LayerNorm, same rate, data and steps; the logits stay near 10"""
    x, y = _sequences(g, 1024, 8, 32, 5)
    return Setup(SdpaTransformer(qk_norm=True), x, y, F.cross_entropy, lr=0.03, optimizer="adam", batch_size=32)


def deep_sigmoid_mlp(g: torch.Generator) -> Setup:
    """Nine sigmoid hidden layers in a ten-layer MLP (Glorot & Bengio 2010): saturating hidden activations, vanishing gradient."""
    x, y = _classes(g, 2048, 32, 10)
    return Setup(_mlp([32] + [64] * 9 + [10], nn.Sigmoid), x, y, F.cross_entropy, lr=0.05)


def deep_sigmoid_mlp_fixed(g: torch.Generator) -> Setup:
    """deep_sigmoid_mlp after the advice: GELU in the hidden layers, Kaiming init, same data and steps."""
    x, y = _classes(g, 2048, 32, 10)
    return Setup(_kaiming(_mlp([32] + [64] * 9 + [10], nn.GELU)), x, y, F.cross_entropy, lr=0.05)


def born_dead_relu_mlp(g: torch.Generator) -> Setup:
    """A strongly negative bias: most ReLU units never fire, from the first step."""
    x, y = _classes(g, 2048, 32, 10)
    model = _kaiming(_mlp([32, 128, 128, 128, 10], nn.ReLU))
    for layer in [m for m in model if isinstance(m, nn.Linear)][1:3]:  # the second and third layers
        nn.init.normal_(layer.weight, std=0.05)
        nn.init.constant_(layer.bias, -1.0)
    return Setup(model, x, y, F.cross_entropy, lr=0.01)


def dying_relu_mlp(g: torch.Generator) -> Setup:
    """Healthy Kaiming-initialised ReLU units killed by a learning rate far too high."""
    x, y = _classes(g, 2048, 32, 10)
    return Setup(_kaiming(_mlp([32, 128, 128, 128, 10], nn.ReLU)), x * 3, y, F.cross_entropy, lr=0.4)


def softmax_into_cross_entropy(g: torch.Generator) -> Setup:
    """A softmax output layer fed to F.cross_entropy, which applies log_softmax itself: softmax twice."""
    x, y = _classes(g, 2048, 32, 10)
    model = _kaiming(_mlp([32, 128, 10], nn.ReLU, head=nn.Softmax(dim=1)))
    return Setup(model, x, y, F.cross_entropy, lr=0.05)


def sigmoid_into_bce_with_logits(g: torch.Generator) -> Setup:
    x, y = _binary(g, 2048, 32)
    model = _kaiming(_mlp([32, 64, 1], nn.ReLU, head=nn.Sigmoid()))
    return Setup(model, x, y, F.binary_cross_entropy_with_logits, lr=0.05)


def softmax_dim1_size1(g: torch.Generator) -> Setup:
    """A one-output binary model normalised with softmax(dim=1): always 1.0, learns nothing."""
    x, y = _binary(g, 2048, 32)
    model = _kaiming(_mlp([32, 64, 1], nn.ReLU, head=nn.Softmax(dim=1)))
    loss = lambda p, t: F.binary_cross_entropy(p.clamp(1e-6, 1 - 1e-6), t)  # noqa: E731
    return Setup(model, x, y, loss, lr=0.05)


def relu_on_logits(g: torch.Generator) -> Setup:
    x, y = _classes(g, 2048, 32, 10)
    model = _kaiming(_mlp([32, 128, 10], nn.ReLU, head=nn.ReLU()))
    return Setup(model, x, y, F.cross_entropy, lr=0.05)


def exploding(g: torch.Generator) -> Setup:
    """Weights initialised far too large in a deep ReLU stack: activations and gradients blow up."""
    x, y = _classes(g, 2048, 32, 10)
    model = _mlp([32] + [64] * 8 + [10], nn.ReLU)
    for m in model.modules():
        if isinstance(m, nn.Linear):  # gain 4/sqrt(2) = 2.8x per ReLU layer instead of Kaiming's 1x
            nn.init.normal_(m.weight, std=4.0 / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
    return Setup(model, x, y, F.cross_entropy, lr=1e-6)


class LogOfActivation(nn.Module):
    """Takes the log of a tanh activation (negative half -> NaN), a classic NaN source."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 10)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.relu(torch.log(self.act(self.fc1(x)))))


def nan_producing(g: torch.Generator) -> Setup:
    x, y = _classes(g, 2048, 32, 10)
    return Setup(LogOfActivation(), x, y, F.cross_entropy, lr=0.01)


def poorly_initialised_mlp(g: torch.Generator) -> Setup:
    """Weights with std 0.01 in a deep ReLU stack: the signal collapses layer after layer."""
    x, y = _classes(g, 2048, 32, 10)
    model = _mlp([32] + [128] * 5 + [10], nn.ReLU)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
    return Setup(model, x, y, F.cross_entropy, lr=0.01)


def saturated_tanh_mlp(g: torch.Generator) -> Setup:
    """Inputs scaled by 50 into a tanh layer: nearly every unit sits at +-1."""
    x, y = _classes(g, 2048, 32, 10)
    return Setup(_mlp([32, 64, 64, 10], nn.Tanh), x * 50, y, F.cross_entropy, lr=1e-3)


def _s(fn: Callable[[torch.Generator], Setup], healthy: bool, expects: tuple[str, ...] = (), steps: int = 150) -> Scenario:
    return Scenario(fn.__name__, healthy, expects, (fn.__doc__ or fn.__name__).strip().split("\n")[0], fn, steps)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        _s(kaiming_relu_mlp, True),
        _s(bn_relu_cnn, True),
        _s(prenorm_gelu_transformer, True),
        _s(sdpa_transformer, True),
        _s(residual_silu_gated_net, True),
        _s(lstm_gelu_head, True),
        _s(deep_sigmoid_mlp_fixed, True),
        _s(deep_sigmoid_mlp, False, ("saturating-hidden-activation", "vanishing-gradient")),
        _s(born_dead_relu_mlp, False, ("dead-units",)),
        _s(dying_relu_mlp, False, ("dead-units",)),
        _s(softmax_into_cross_entropy, False, ("activation-loss-mismatch",), steps=10),
        _s(sigmoid_into_bce_with_logits, False, ("activation-loss-mismatch",), steps=10),
        _s(softmax_dim1_size1, False, ("output-activation-mismatch",), steps=10),
        _s(relu_on_logits, False, ("output-activation-mismatch",), steps=10),
        _s(exploding, False, ("exploding-activations", "exploding-gradient"), steps=60),
        _s(nan_producing, False, ("non-finite",), steps=5),
        _s(poorly_initialised_mlp, False, ("signal-propagation",), steps=5),
        _s(saturated_tanh_mlp, False, ("saturation",), steps=60),
        _s(collapsed_attention, False, ("attention-collapse",), steps=60),
        _s(attention_logit_growth, False, ("attention-logit-growth",)),
        _s(attention_logit_growth_fixed, True),
    ]
}


# ---------------------------------------------------------------------------- training
def _optimizer(setup: Setup) -> torch.optim.Optimizer:
    if setup.optimizer == "adam":
        return torch.optim.Adam(setup.model.parameters(), lr=setup.lr)
    return torch.optim.SGD(setup.model.parameters(), lr=setup.lr, momentum=0.9)


def train(
    scenario: str | Scenario,
    steps: int | None = None,
    log_every: int = 25,
    seed: int = 0,
    engine: RuleEngine | None = None,
    on_step: Callable[[int, Setup, ActivationMonitor], None] | None = None,
    default_schedule: bool = False,
) -> Run:
    """Train ``scenario`` with a plain torch loop under an :class:`ActivationMonitor`.

    The first step is the pre-flight check (``engine.evaluate(snapshot, preflight=True)``); then the
    engine judges one snapshot every ``log_every`` steps and once at the end. Every step is measured,
    or with ``default_schedule`` the steps the callback's default schedule measures (the first window
    densely, then about five a window; the others run the bare model).
    """
    sc = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    setup = sc.build(g)
    engine = engine if engine is not None else RuleEngine()
    run = Run(sc, setup, engine)
    opt = _optimizer(setup)
    model, n = setup.model.train(), setup.inputs.shape[0]
    total = sc.steps if steps is None else steps
    mon = ActivationMonitor(model).attach()
    schedule = StepSchedule(log_every) if default_schedule else None
    try:
        for step in range(total):
            log = step == 0 or (step + 1) % log_every == 0 or step == total - 1
            if schedule is None:
                mon.begin_step(detail=log)
            else:
                plan = schedule.plan(step)
                log = plan.log or (step == total - 1 and mon.window_steps > 0)
                if plan.measure or log:
                    mon.begin_step(detail=plan.detail)
                else:
                    mon.pause()  # an unmeasured step runs the bare model
            idx = torch.randint(0, n, (setup.batch_size,), generator=g)
            loss = setup.loss_fn(model(setup.inputs[idx]), setup.targets[idx])
            loss.backward()
            if log and mon.detail:
                mon.measure_param_grads()
            opt.step()
            opt.zero_grad(set_to_none=True)
            mon.end_step()
            run.losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, setup, mon)
            if step == 0:
                run.preflight = mon.snapshot(step=1)
                engine.evaluate(run.preflight, preflight=True)
            elif log:
                run.last = mon.snapshot(step=step + 1)
                engine.evaluate(run.last)
    finally:
        mon.detach()
    return run
