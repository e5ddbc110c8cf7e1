"""Hidden layers: ReLU units that die with tiny batches and few rows (a learning rate too high, a
bad init, batch size 1), and deep sigmoid or tanh stacks against the 2-3 layer nets that are fine.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F
from corpus_kit import (
    Program,
    TabularModule,
    blobs,
    first_batch,
    houses,
    never_firing_share,
    plain_train,
)


class DeadReluTinyBatches(TabularModule):
    """200 rows, batches of 5, a learning rate copied from a full-batch example."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=200, d=6, classes=3, seed=25), batch_size=5, lr=1.0 if buggy else 0.02, optimizer="sgd")
        self.net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)


class DeadReluBadInitBatchOne(TabularModule):
    """Per-sample training (batch 1, 60 rows) after a custom init that makes every bias -3."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=60, d=4, classes=3, seed=26), batch_size=1, lr=0.01, optimizer="sgd")
        self.fc1 = nn.Linear(4, 16)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(16, 3)
        if buggy:
            for layer in (self.fc1, self.fc2):
                nn.init.uniform_(layer.weight, -0.1, 0.1)
                nn.init.constant_(layer.bias, -3.0)

    def forward(self, x):
        return self.fc2(self.relu1(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)


class DeadReluAdamRegression(TabularModule):
    """150 rows, batch 8, Adam at lr 0.1 ("it converged faster"): a regression MLP whose ReLUs die."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*houses(n=150, seed=42, standardise=True), batch_size=8, lr=0.1 if buggy else 1e-3)
        self.layers = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.layers(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), y)


def dead_units_oracle(module) -> bool:
    """Plain training loop, then forward hooks over every row: over a quarter of some ReLU's units
    never fire."""
    plain_train(module, 40)
    return max(never_firing_share(module, module.x).values()) > 0.25


class DeepSigmoidVsTextbook(TabularModule):
    """A 7-hidden-layer sigmoid stack built in a loop; the fix is the textbook 2-layer sigmoid MLP."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=256, d=8, classes=3, seed=27), batch_size=32, lr=1e-2)
        depth = 7 if buggy else 1
        layers: list[nn.Module] = [nn.Linear(8, 32), nn.Sigmoid()]
        for _ in range(depth - 1):
            layers += [nn.Linear(32, 32), nn.Sigmoid()]
        self.mlp = nn.Sequential(*layers, nn.Linear(32, 3))

    def forward(self, x):
        return self.mlp(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)


class DeepSigmoidVsRelu(TabularModule):
    """A deep sigmoid stack (functional torch.sigmoid in a loop, batch 64); the fix uses ReLU."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=256, d=10, classes=4, seed=28), batch_size=64, lr=1e-2)
        self.inp = nn.Linear(10, 24)
        self.hidden = nn.ModuleList([nn.Linear(24, 24) for _ in range(6)])
        self.out = nn.Linear(24, 4)
        self.act = torch.sigmoid if buggy else torch.relu
        if not buggy:  # the fix's init: He et al. for ReLU
            for layer in [self.inp, *self.hidden]:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def forward(self, x):
        h = self.act(self.inp(x))
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.out(h)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)



def _relu_stack_firing_rates(module: DeepSigmoidVsRelu) -> list:
    """Per layer feeding torch.relu (functional: no nn.ReLU to hook), the share of the training rows
    on which each unit's pre-activation is positive, i.e. on which the unit fires."""
    rates: list = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: rates.append((out > 0).float().mean(0)))
             for layer in (module.inp, *module.hidden)]
    try:
        with torch.no_grad():
            module(module.x)
    finally:
        for h in hooks:
            h.remove()
    return rates


def quarter_of_a_layer_dead_oracle(module: DeepSigmoidVsRelu) -> bool:
    """The fix's 24-wide ReLU layers lose units (the fixed variant's dead-units warnings): after the
    program's 30 steps, a quarter of some layer's units fire on under 1% of the training rows (rules.md's
    dead unit, the rate the rule tests), most of them units that fired on more rows than that at
    initialisation (they died in training, as the finding says). Measured (seed 0): units under 1% per
    layer [0, 0, 0, 1, 1, 0, 3] at init, [0, 4, 3, 6, 6, 5, 6] of 24 after 30 steps."""
    before = _relu_stack_firing_rates(module)
    plain_train(module, 30)
    for at_init, trained in zip(before, _relu_stack_firing_rates(module), strict=True):
        dead, died = trained < 0.01, (trained < 0.01) & (at_init >= 0.01)
        if float(dead.float().mean()) >= 0.25 and 2 * int(died.sum()) > int(dead.sum()):
            return True
    return False


def log_z_drift_oracle(module: DeepSigmoidVsRelu) -> bool:
    """Adam at 1e-2 drives the 4 classes' margins up once the separable blobs are fit (loss ~1e-6):
    the mean log Z (logsumexp over the classes) of the logits over the training rows ends at 20 or more
    and at least 10 above its start (the zoo's criterion for this fault). Measured: 1.7 at init,
    50.1 after 30 steps, 61 after 100 (flat from there); with PaLM's z-loss (1e-4) 4.7 at step 30."""
    with torch.no_grad():
        start = float(torch.logsumexp(module(module.x), dim=1).mean())
    plain_train(module, 30)
    with torch.no_grad():
        end = float(torch.logsumexp(module(module.x), dim=1).mean())
    return abs(end) >= 20 and abs(end - start) >= 10

class DeepSigmoidVsThreeLayer(TabularModule):
    """Six sigmoid hidden layers; the fix keeps two (the three-layer sigmoid MLP of the textbooks)."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=200, d=6, classes=3, seed=29), batch_size=20, lr=1e-2)
        widths = [6] + [24] * (6 if buggy else 2)
        layers: list[nn.Module] = []
        for w_in, w_out in itertools.pairwise(widths):
            layers += [nn.Linear(w_in, w_out), nn.Sigmoid()]
        self.model = nn.Sequential(*layers, nn.Linear(24, 3))

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)


class DeepTanhVsThreeLayer(TabularModule):
    """Eight tanh hidden layers (batch 12); the fix keeps two."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=180, d=5, classes=3, seed=30), batch_size=12, lr=1e-2)
        self.first = nn.Linear(5, 20)
        self.hidden = nn.ModuleList([nn.Linear(20, 20) for _ in range(7 if buggy else 1)])
        self.last = nn.Linear(20, 3)

    def forward(self, x):
        x = torch.tanh(self.first(x))
        for layer in self.hidden:
            x = torch.tanh(layer(x))
        return self.last(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)


class KerasIrisSigmoidStack(TabularModule):
    """Keras iris port: Dense(8, sigmoid) layers, Dense(3, softmax), categorical_crossentropy by hand.
    Buggy: five sigmoid hidden layers. Fixed: the two of the original tutorial."""

    def __init__(self, buggy: bool) -> None:
        x, y = blobs(n=150, d=4, classes=3, seed=41)
        super().__init__(x, F.one_hot(y, 3).float(), batch_size=10, lr=1e-2)
        widths = [4] + [8] * (5 if buggy else 2)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        for dense in self.hidden:
            x = torch.sigmoid(dense(x))
        return torch.softmax(self.out(x), dim=-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        p = torch.clamp(self(x), 1e-7, 1 - 1e-7)
        return -(y * torch.log(p)).sum(dim=1).mean()


def saturating_stack_oracle(module) -> bool:
    """At least 4 sigmoid/tanh layers in a row (read from autograd's graph), and the gradient at the
    first one's output is under a tenth of the gradient at the last one's (node hooks, one step)."""
    x, y = first_batch(module)
    loss = module.training_step((x, y), 0)
    nodes, frontier, seen = [], [loss.grad_fn], set()
    while frontier:
        node = frontier.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ in ("SigmoidBackward0", "TanhBackward0"):
            nodes.append(node)
        frontier += [fn for fn, _ in node.next_functions]
    nodes.sort(key=lambda n: n._sequence_nr())  # creation order = forward order
    if len(nodes) < 4:
        return False
    rms: dict[int, float] = {}
    for i in (0, len(nodes) - 1):
        nodes[i].register_hook(lambda grad_in, grad_out, i=i: rms.__setitem__(i, float(grad_out[0].pow(2).mean().sqrt())))
    loss.backward()
    return rms[0] < 0.1 * rms[len(nodes) - 1]


class SparseBagOfWordsBatchTwo(TabularModule):
    """Bag-of-words rows (60 words, ~4 present per row), 120 rows, batches of 2, a wide ReLU layer:
    most units see few words. Buggy: SGD at lr 3.0 kills them. Fixed: lr 0.05, where units that
    fire rarely are alive (over the data set nearly every one fires)."""

    def __init__(self, buggy: bool) -> None:
        g = torch.Generator().manual_seed(56)
        words = (torch.rand(120, 60, generator=g) < 0.07).float()
        y = (words @ torch.randn(60, 3, generator=g)).argmax(1)
        super().__init__(words, y, batch_size=2, lr=3.0 if buggy else 0.05, optimizer="sgd")
        self.hidden = nn.Linear(60, 48)
        self.relu = nn.ReLU()
        self.classify = nn.Linear(48, 3)

    def forward(self, x):
        return self.classify(self.relu(self.hidden(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)


PROGRAMS: list[Program] = [
    Program(
        name="dead_relu_tiny_batches_high_lr",
        story="200 rows, batches of 5, SGD at lr 1.0: ReLU units die",
        build=DeadReluTinyBatches,
        rules=("dead-units",),
        site="net.3",
        oracle=dead_units_oracle,
        steps=40,
    ),
    Program(
        name="dead_relu_bad_init_batch_one",
        story="batch size 1, 60 rows, every bias initialised to -3: the ReLU never fires",
        build=DeadReluBadInitBatchOne,
        rules=("dead-units",),
        site="relu1",
        oracle=dead_units_oracle,
        steps=40,
    ),
    Program(
        name="dead_relu_adam_regression",
        story="150 rows, batch 8, Adam at lr 0.1: the regression MLP's ReLUs die",
        build=DeadReluAdamRegression,
        rules=("dead-units",),
        site="layers.3",
        oracle=dead_units_oracle,
        steps=40,
    ),
    Program(
        name="deep_sigmoid_vs_textbook_mlp",
        story="7 sigmoid hidden layers; the fix is the textbook 2-layer sigmoid MLP",
        build=DeepSigmoidVsTextbook,
        rules=("saturating-hidden-activation",),
        oracle=saturating_stack_oracle,
    ),
    Program(
        name="deep_functional_sigmoid_vs_relu",
        story="torch.sigmoid in a loop over 7 layers (batch 64); the fix uses ReLU with He init",
        build=DeepSigmoidVsRelu,
        rules=("saturating-hidden-activation",),
        oracle=saturating_stack_oracle,
        # What the fix leaves in place, each confirmed over the whole data set after plain training.
        residual={"dead-units": quarter_of_a_layer_dead_oracle, "output-logit-divergence": log_z_drift_oracle},
    ),
    Program(
        name="deep_sigmoid_vs_three_layer_sigmoid",
        story="six sigmoid hidden layers (batch 20); the fix is a three-layer sigmoid MLP (two hidden)",
        build=DeepSigmoidVsThreeLayer,
        rules=("saturating-hidden-activation",),
        oracle=saturating_stack_oracle,
    ),
    Program(
        name="deep_tanh_vs_three_layer_tanh",
        story="torch.tanh over eight hidden layers (batch 12); the fix keeps two",
        build=DeepTanhVsThreeLayer,
        rules=("saturating-hidden-activation",),
        oracle=saturating_stack_oracle,
    ),
    Program(
        name="keras_iris_sigmoid_stack",
        story="Keras iris port, 5 sigmoid hidden layers; fixed: the tutorial's 2, softmax + hand CE",
        build=KerasIrisSigmoidStack,
        rules=("saturating-hidden-activation",),
        oracle=saturating_stack_oracle,
    ),
    Program(
        name="sparse_bag_of_words_batch_two",
        story="bag-of-words rows, batch 2, a wide ReLU layer: SGD at lr 3.0 kills the units",
        build=SparseBagOfWordsBatchTwo,
        rules=("dead-units",),
        site="relu",
        oracle=dead_units_oracle,
        steps=40,
    ),
]
