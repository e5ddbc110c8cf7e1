"""Programs whose hidden layers or inputs are the fault (issue 20, classes 3 to 6): no
nonlinearity at all, raw features in the thousands, dead ReLUs with tiny batches and few rows, deep
sigmoid stacks (and the shallow sigmoid nets that are fine).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from corpus_kit import (
    Program,
    TabularModule,
    blobs,
    circles,
    first_batch,
    houses,
    is_affine,
    never_firing_share,
    plain_train,
    standardised,
    tumours,
)


# ----------------------------------------------------------------- no nonlinearity
class LinearStackCircles(TabularModule):
    """"A deeper model will learn the rings": three Linear layers and no activation between them."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*circles(seed=20), batch_size=32, lr=1e-2)
        if buggy:
            self.net = nn.Sequential(nn.Linear(2, 16), nn.Linear(16, 16), nn.Linear(16, 1))
        else:
            self.net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.net(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return self.loss_fn(self(x), y)


class LinearLayersWithDropout(TabularModule):
    """fc1 -> dropout -> fc2 -> fc3 in a hand-written forward: dropout is not a nonlinearity."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=240, d=6, classes=4, seed=21), batch_size=24, lr=1e-2)
        self.fc1 = nn.Linear(6, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 4)
        self.dropout = nn.Dropout(0.2)
        self.buggy = buggy

    def forward(self, x):  # noqa: ANN001, ANN201
        x = self.fc1(x)
        if not self.buggy:
            x = F.relu(x)
        x = self.dropout(x)
        x = self.fc2(x)
        if not self.buggy:
            x = F.relu(x)
        return self.fc3(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.cross_entropy(self(x), y)


def affine_oracle(module) -> bool:  # noqa: ANN001
    """The whole model is one affine map: exact check against xW + b (float64, dropout off)."""
    return is_affine(module, tuple(module.x.shape[1:]))


class LinearRegressionNaN(TabularModule):
    """House prices on raw features with a stack of Linear layers and SGD: the loss is NaN within steps.
    The fix that solved it standardises the features; the layers stay linear (a fault left in place)."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*houses(seed=22, standardise=not buggy), batch_size=16, lr=1e-3, optimizer="sgd")
        self.layers = nn.Sequential(nn.Linear(4, 32), nn.Linear(32, 16), nn.Linear(16, 1))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.layers(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.mse_loss(self(x), y)


def nan_loss_oracle(module) -> bool:  # noqa: ANN001
    """Plain training loop: some loss within the run is not finite."""
    return not all(math.isfinite(v) for v in plain_train(module, 30))


# ----------------------------------------------------------------- input scale
class RawTumourSigmoidNet(TabularModule):
    """Tumour table straight from the CSV (areas in the thousands) into a sigmoid MLP."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(seed=23, standardise=not buggy), batch_size=32, lr=1e-2)
        self.hidden = nn.Linear(8, 16)
        self.sigmoid = nn.Sigmoid()
        self.output = nn.Linear(16, 1)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.output(self.sigmoid(self.hidden(x)))

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y)


class RawHousesTanhRegression(TabularModule):
    """House prices, raw square feet and years into a tanh MLP, batch 64."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*houses(seed=24, standardise=not buggy), batch_size=64, lr=1e-2)
        self.model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.model(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return nn.functional.mse_loss(self(x), y)


def raw_scale_oracle(module) -> bool:  # noqa: ANN001
    """Some input column's standard deviation is in the thousands (StandardScaler never ran)."""
    return bool(module.x.std(0).max() > 1000)


# ----------------------------------------------------------------- dead units
class DeadReluTinyBatches(TabularModule):
    """200 rows, batches of 5, a learning rate copied from a full-batch example."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=200, d=6, classes=3, seed=25), batch_size=5, lr=1.0 if buggy else 0.02, optimizer="sgd")
        self.net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.net(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
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

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.fc2(self.relu1(self.fc1(x)))

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.cross_entropy(self(x), y)


def dead_units_oracle(module) -> bool:  # noqa: ANN001
    """Plain training loop, then forward hooks over every row: over a quarter of some ReLU's units
    never fire."""
    plain_train(module, 40)
    return max(never_firing_share(module, module.x).values()) > 0.25


# ----------------------------------------------------------------- sigmoid in hidden layers
class DeepSigmoidVsTextbook(TabularModule):
    """A 7-hidden-layer sigmoid stack built in a loop; the fix is the textbook 2-layer sigmoid MLP."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=256, d=8, classes=3, seed=27), batch_size=32, lr=1e-2)
        depth = 7 if buggy else 1
        layers: list[nn.Module] = [nn.Linear(8, 32), nn.Sigmoid()]
        for _ in range(depth - 1):
            layers += [nn.Linear(32, 32), nn.Sigmoid()]
        self.mlp = nn.Sequential(*layers, nn.Linear(32, 3))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.mlp(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
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

    def forward(self, x):  # noqa: ANN001, ANN201
        h = self.act(self.inp(x))
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.out(h)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.cross_entropy(self(x), y)


def saturating_stack_oracle(module) -> bool:  # noqa: ANN001
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


class DeepSigmoidVsThreeLayer(TabularModule):
    """Six sigmoid hidden layers; the fix keeps two (the three-layer sigmoid MLP of the textbooks)."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=200, d=6, classes=3, seed=29), batch_size=20, lr=1e-2)
        widths = [6] + [24] * (6 if buggy else 2)
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.Sigmoid()]
        self.model = nn.Sequential(*layers, nn.Linear(24, 3))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.model(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.cross_entropy(self(x), y)


class DeepTanhVsThreeLayer(TabularModule):
    """Eight tanh hidden layers (batch 12); the fix keeps two."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=180, d=5, classes=3, seed=30), batch_size=12, lr=1e-2)
        self.first = nn.Linear(5, 20)
        self.hidden = nn.ModuleList([nn.Linear(20, 20) for _ in range(7 if buggy else 1)])
        self.last = nn.Linear(20, 3)

    def forward(self, x):  # noqa: ANN001, ANN201
        x = torch.tanh(self.first(x))
        for layer in self.hidden:
            x = torch.tanh(layer(x))
        return self.last(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.cross_entropy(self(x), y)


class ManualLoopRawIncomeTanh(TabularModule):
    """The plain-PyTorch loop pasted into training_step (manual optimisation): loan defaults from raw
    income (tens of thousands), loan amount and age into a tanh MLP."""

    def __init__(self, buggy: bool) -> None:
        g = torch.Generator().manual_seed(31)
        n = 300
        income = 20000 + 60000 * torch.rand(n, generator=g)
        amount = 5000 + 30000 * torch.rand(n, generator=g)
        age = 20 + 50 * torch.rand(n, generator=g)
        x = torch.stack([income, amount, age], 1)
        y = ((amount / income + 0.004 * (45 - age) + 0.1 * torch.randn(n, generator=g)) > 0.5).float().unsqueeze(1)
        super().__init__(x if buggy else standardised(x), y, batch_size=32, lr=1e-2)
        self.automatic_optimization = False
        self.fc1 = nn.Linear(3, 16)
        self.fc2 = nn.Linear(16, 1)
        self.criterion = nn.BCEWithLogitsLoss()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.fc2(torch.tanh(self.fc1(x)))

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        optimizer = self.optimizers()
        inputs, labels = batch
        optimizer.zero_grad()
        outputs = self(inputs)
        loss = self.criterion(outputs, labels)
        self.manual_backward(loss)
        optimizer.step()
        return loss


class XorBatchOne(TabularModule):
    """The textbook XOR net trained one row at a time with MSE; the buggy copy lost its hidden sigmoid."""

    def __init__(self, buggy: bool) -> None:
        x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]).repeat(16, 1)
        y = (x[:, :1] != x[:, 1:]).float()
        super().__init__(x, y, batch_size=1, lr=0.5, optimizer="sgd", shuffle=False)  # rows in order: [0, 0] first
        self.hidden = nn.Linear(2, 4)
        self.output = nn.Linear(4, 1)
        self.buggy = buggy

    def forward(self, x):  # noqa: ANN001, ANN201
        h = self.hidden(x)
        if not self.buggy:
            h = torch.sigmoid(h)
        return torch.sigmoid(self.output(h))

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return ((self(x) - y) ** 2).mean()


class _BeforeOutputSigmoid(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):  # noqa: ANN001, ANN201
        return torch.logit(self.module(x))


def xor_affine_oracle(module) -> bool:  # noqa: ANN001
    """Up to the output sigmoid the model is one affine map (exact check on logit(output))."""
    return is_affine(_BeforeOutputSigmoid(module), 2)


class LinearBatchNormStack(TabularModule):
    """Linear -> BatchNorm1d -> Linear -> BatchNorm1d -> Linear: normalised, still one affine map."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*circles(n=256, seed=39), batch_size=32, lr=1e-2)
        blocks: list[nn.Module] = []
        for w_in in (2, 32):
            blocks += [nn.Linear(w_in, 32), nn.BatchNorm1d(32)] + ([] if buggy else [nn.ReLU()])
        self.model = nn.Sequential(*blocks, nn.Linear(32, 1))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.model(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y)


class FlattenLinearDigits(TabularModule):
    """The MNIST MLP tutorial on 8x8 digit images: Flatten, then 64 -> 32 -> 16 -> 10, the ReLUs lost."""

    def __init__(self, buggy: bool) -> None:
        x, y = blobs(n=300, d=64, classes=10, seed=40)
        super().__init__(x.view(-1, 1, 8, 8), y, batch_size=50, lr=1e-3)
        act = nn.Identity if buggy else nn.ReLU
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), act(), nn.Linear(32, 16), act(), nn.Linear(16, 10))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.model(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        images, labels = batch
        return F.cross_entropy(self(images), labels)


class KerasIrisSigmoidStack(TabularModule):
    """Keras iris port: Dense(8, sigmoid) layers, Dense(3, softmax), categorical_crossentropy by hand.
    Buggy: five sigmoid hidden layers. Fixed: the two of the original tutorial."""

    def __init__(self, buggy: bool) -> None:
        x, y = blobs(n=150, d=4, classes=3, seed=41)
        super().__init__(x, F.one_hot(y, 3).float(), batch_size=10, lr=1e-2)
        widths = [4] + [8] * (5 if buggy else 2)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.out = nn.Linear(8, 3)

    def forward(self, x):  # noqa: ANN001, ANN201
        for dense in self.hidden:
            x = torch.sigmoid(dense(x))
        return torch.softmax(self.out(x), dim=-1)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        p = torch.clamp(self(x), 1e-7, 1 - 1e-7)
        return -(y * torch.log(p)).sum(dim=1).mean()


class DeadReluAdamRegression(TabularModule):
    """150 rows, batch 8, Adam at lr 0.1 ("it converged faster"): a regression MLP whose ReLUs die."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*houses(n=150, seed=42, standardise=True), batch_size=8, lr=0.1 if buggy else 1e-3)
        self.layers = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.layers(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.mse_loss(self(x), y)


class TutorialClampRelu(TabularModule):
    """The PyTorch "learning by examples" net: `h_relu = linear1(x).clamp(min=0)`. The buggy copy
    dropped the clamp ("it only guards against negatives"), leaving two Linear layers in a row."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*circles(n=200, seed=48), batch_size=25, lr=1e-2)
        self.linear1 = nn.Linear(2, 32)
        self.linear2 = nn.Linear(32, 1)
        self.buggy = buggy

    def forward(self, x):  # noqa: ANN001, ANN201
        h = self.linear1(x)
        h_relu = h if self.buggy else h.clamp(min=0)
        return self.linear2(h_relu)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y)


# ----------------------------------------------------------------- PROGRAMS
# Why today's code misses a buggy variant (strict xfail reasons; issue 20's classes).
LINEAR_GAP = "class 3: no rule missing-nonlinearity yet (consecutive Linear layers with nothing nonlinear between)"
NAN_GAP = "class 3: a non-finite loss is not reported when the model has no activation site"
SCALE_GAP = "class 4: no rule input-scale yet (raw features in the thousands)"
SHALLOW_SIGMOID_GAP = "class 6: a shallow, unsaturated sigmoid MLP gets a saturating-hidden-activation warning"
SMALL_DATA_GAP = "class 5: with tiny batches and few rows dead units never reach the evidence threshold"
PROGRAMS: list[Program] = [
    Program(
        name="linear_stack_circles",
        story="three Linear layers, no activation, on two rings (BCEWithLogits)",
        build=LinearStackCircles,
        rules=("missing-nonlinearity",),
        oracle=affine_oracle,
    ),
    Program(
        name="linear_layers_with_dropout",
        story="fc1 -> dropout -> fc2 -> fc3 in a hand-written forward, cross_entropy",
        build=LinearLayersWithDropout,
        rules=("missing-nonlinearity",),
        oracle=affine_oracle,
    ),
    Program(
        name="linear_regression_nan_loss",
        story="raw house features into a linear stack with SGD: NaN loss; fixed by standardising",
        build=LinearRegressionNaN,
        rules=("non-finite",),
        oracle=nan_loss_oracle,
        residual={"missing-nonlinearity": affine_oracle},
    ),
    Program(
        name="raw_tumour_features_sigmoid_net",
        story="tumour table in raw units (areas in the thousands) into a sigmoid MLP",
        build=RawTumourSigmoidNet,
        rules=("input-scale",),
        oracle=raw_scale_oracle,
    ),
    Program(
        name="raw_house_features_tanh_regression",
        story="raw square feet and years into a tanh MLP regression, batch 64",
        build=RawHousesTanhRegression,
        rules=("input-scale",),
        oracle=raw_scale_oracle,
    ),
    Program(
        name="dead_relu_tiny_batches_high_lr",
        story="200 rows, batches of 5, SGD at lr 1.0: ReLU units die",
        build=DeadReluTinyBatches,
        rules=("dead-units",),
        site="net.3",
        oracle=dead_units_oracle,
        steps=40,
        buggy_xfail=SMALL_DATA_GAP,
    ),
    Program(
        name="dead_relu_bad_init_batch_one",
        story="batch size 1, 60 rows, every bias initialised to -3: the ReLU never fires",
        build=DeadReluBadInitBatchOne,
        rules=("dead-units",),
        site="relu1",
        oracle=dead_units_oracle,
        steps=40,
        buggy_xfail=SMALL_DATA_GAP,
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
    ),
    Program(
        name="xor_batch_one_lost_hidden_sigmoid",
        story="textbook XOR net, batch 1, MSE; the buggy copy lost its hidden sigmoid",
        build=XorBatchOne,
        rules=("missing-nonlinearity",),
        oracle=xor_affine_oracle,
        steps=40,
    ),
    Program(
        name="deep_sigmoid_vs_three_layer_sigmoid",
        story="six sigmoid hidden layers (batch 20); the fix is a three-layer sigmoid MLP (two hidden)",
        build=DeepSigmoidVsThreeLayer,
        rules=("saturating-hidden-activation",),
        oracle=saturating_stack_oracle,
        fixed_xfail=SHALLOW_SIGMOID_GAP,
    ),
    Program(
        name="deep_tanh_vs_three_layer_tanh",
        story="torch.tanh over eight hidden layers (batch 12); the fix keeps two",
        build=DeepTanhVsThreeLayer,
        rules=("saturating-hidden-activation",),
        oracle=saturating_stack_oracle,
    ),
    Program(
        name="manual_loop_raw_income_tanh",
        story="tutorial loop in training_step (manual optimisation), raw incomes into a tanh MLP",
        build=ManualLoopRawIncomeTanh,
        rules=("input-scale",),
        oracle=raw_scale_oracle,
    ),
    Program(
        name="linear_batchnorm_stack",
        story="Linear -> BatchNorm1d twice, then Linear, on two rings: no nonlinearity",
        build=LinearBatchNormStack,
        rules=("missing-nonlinearity",),
        oracle=affine_oracle,
    ),
    Program(
        name="flatten_linear_digits",
        story="MNIST-tutorial MLP on 8x8 images, Flatten then three Linear layers, the ReLUs lost",
        build=FlattenLinearDigits,
        rules=("missing-nonlinearity",),
        oracle=affine_oracle,
    ),
    Program(
        name="keras_iris_sigmoid_stack",
        story="Keras iris port, 5 sigmoid hidden layers; fixed: the tutorial's 2, softmax + hand CE",
        build=KerasIrisSigmoidStack,
        rules=("saturating-hidden-activation",),
        oracle=saturating_stack_oracle,
        fixed_xfail=SHALLOW_SIGMOID_GAP,
    ),
    Program(
        name="dead_relu_adam_regression",
        story="150 rows, batch 8, Adam at lr 0.1: the regression MLP's ReLUs die",
        build=DeadReluAdamRegression,
        rules=("dead-units",),
        site="layers.3",
        oracle=dead_units_oracle,
        steps=40,
        buggy_xfail=SMALL_DATA_GAP,
    ),
    Program(
        name="tutorial_clamp_relu_dropped",
        story="PyTorch tutorial net whose ReLU is .clamp(min=0); the buggy copy dropped the clamp",
        build=TutorialClampRelu,
        rules=("missing-nonlinearity",),
        oracle=affine_oracle,
    ),
]
