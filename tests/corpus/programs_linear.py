"""No nonlinearity: Linear layers in a row (through dropout, batch norm, Flatten, a lost
`clamp(min=0)`, hand-written matrix products), and NaN losses in models with no activation at all.
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
    houses,
    is_affine,
    never_firing_share,
    plain_train,
    tumours,
)


class LinearStackCircles(TabularModule):
    """"A deeper model will learn the rings": three Linear layers and no activation between them."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*circles(seed=20), batch_size=32, lr=1e-2)
        if buggy:
            self.net = nn.Sequential(nn.Linear(2, 16), nn.Linear(16, 16), nn.Linear(16, 1))
        else:
            self.net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
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

    def forward(self, x):
        x = self.fc1(x)
        if not self.buggy:
            x = F.relu(x)
        x = self.dropout(x)
        x = self.fc2(x)
        if not self.buggy:
            x = F.relu(x)
        return self.fc3(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)


def _dead_after_training(module, layer: str, steps: int = 30) -> bool:
    """Plain torch: after the program's training, at least a quarter of ReLU ``layer``'s units never
    fire over the training data."""
    plain_train(module, steps)
    return never_firing_share(module.net, module.x)[layer] >= 0.25


def affine_oracle(module) -> bool:
    """The whole model is one affine map: exact check against xW + b (float64, dropout off)."""
    return is_affine(module, tuple(module.x.shape[1:]))


class LinearBatchNormStack(TabularModule):
    """Linear -> BatchNorm1d -> Linear -> BatchNorm1d -> Linear: normalised, still one affine map."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*circles(n=256, seed=39), batch_size=32, lr=1e-2)
        blocks: list[nn.Module] = []
        for w_in in (2, 32):
            blocks += [nn.Linear(w_in, 32), nn.BatchNorm1d(32)] + ([] if buggy else [nn.ReLU()])
        self.model = nn.Sequential(*blocks, nn.Linear(32, 1))

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y)


class FlattenLinearDigits(TabularModule):
    """The MNIST MLP tutorial on 8x8 digit images: Flatten, then 64 -> 32 -> 16 -> 10, the ReLUs lost."""

    def __init__(self, buggy: bool) -> None:
        x, y = blobs(n=300, d=64, classes=10, seed=40)
        super().__init__(x.view(-1, 1, 8, 8), y, batch_size=50, lr=1e-3)
        act = nn.Identity if buggy else nn.ReLU
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), act(), nn.Linear(32, 16), act(), nn.Linear(16, 10))

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self(images), labels)


class TutorialClampRelu(TabularModule):
    """The PyTorch "learning by examples" net: `h_relu = linear1(x).clamp(min=0)`. The buggy copy
    dropped the clamp ("it only guards against negatives"), leaving two Linear layers in a row."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*circles(n=200, seed=48), batch_size=25, lr=1e-2)
        self.linear1 = nn.Linear(2, 32)
        self.linear2 = nn.Linear(32, 1)
        self.buggy = buggy

    def forward(self, x):
        h = self.linear1(x)
        h_relu = h if self.buggy else h.clamp(min=0)
        return self.linear2(h_relu)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y)


class ScratchTwoMatmuls(TabularModule):
    """The PyTorch tutorial's tensor-only net as parameters: `x.mm(w1).clamp(min=0).mm(w2)`; the
    buggy copy lost the clamp, two matrix products in a row."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*circles(n=200, seed=53), batch_size=20, lr=1e-2)
        self.w1 = nn.Parameter(torch.randn(2, 32) * 0.5)
        self.w2 = nn.Parameter(torch.randn(32, 1) * 0.2)
        self.buggy = buggy

    def forward(self, x):
        h = x.mm(self.w1)
        return (h if self.buggy else h.clamp(min=0)).mm(self.w2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y)


class XorBatchOne(TabularModule):
    """The textbook XOR net trained one row at a time with MSE; the buggy copy lost its hidden sigmoid."""

    def __init__(self, buggy: bool) -> None:
        x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]).repeat(16, 1)
        y = (x[:, :1] != x[:, 1:]).float()
        super().__init__(x, y, batch_size=1, lr=0.5, optimizer="sgd", shuffle=False)  # rows in order: [0, 0] first
        self.hidden = nn.Linear(2, 4)
        self.output = nn.Linear(4, 1)
        self.buggy = buggy

    def forward(self, x):
        h = self.hidden(x)
        if not self.buggy:
            h = torch.sigmoid(h)
        return torch.sigmoid(self.output(h))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self(x) - y) ** 2).mean()


class _BeforeOutputSigmoid(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        return torch.logit(self.module(x))


def xor_affine_oracle(module) -> bool:
    """Up to the output sigmoid the model is one affine map (exact check on logit(output))."""
    return is_affine(_BeforeOutputSigmoid(module), 2)


class LinearRegressionNaN(TabularModule):
    """House prices on raw features with a stack of Linear layers and SGD: the loss is NaN within steps.
    The fix that solved it standardises the features; the layers stay linear (a fault left in place)."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*houses(seed=22, standardise=not buggy), batch_size=16, lr=1e-3, optimizer="sgd")
        self.layers = nn.Sequential(nn.Linear(4, 32), nn.Linear(32, 16), nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), y)


class ScratchLogisticRegressionNaN(TabularModule):
    """Logistic regression by hand on the raw table: 1 / (1 + exp(-z)), then log: no activation
    function anywhere, and log(0) turns the loss infinite, then NaN. Fixed: standardised features."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(seed=50, standardise=not buggy), batch_size=16, lr=0.05, optimizer="sgd")
        self.w = nn.Parameter(torch.randn(8, 1) * 0.1)
        self.b = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return 1 / (1 + torch.exp(-(x @ self.w + self.b)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        p = self(x)
        return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def nan_loss_oracle(module) -> bool:
    """Plain training loop: some loss within the run is not finite."""
    return not all(math.isfinite(v) for v in plain_train(module, 30))


class GatedVersusLinearStack(TabularModule):
    """Three Linear layers in a row; the fix makes the hidden layers gated linear units,
    `fc(x) * sigmoid(gate(x))` (nonlinear through the product, no ReLU anywhere)."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*circles(n=240, seed=55), batch_size=24, lr=1e-2)
        self.fc1, self.fc2, self.out = nn.Linear(2, 16), nn.Linear(16, 16), nn.Linear(16, 1)
        self.gate1, self.gate2 = (None, None) if buggy else (nn.Linear(2, 16), nn.Linear(16, 16))

    def forward(self, x):
        h = self.fc1(x) if self.gate1 is None else self.fc1(x) * torch.sigmoid(self.gate1(x))
        h = self.fc2(h) if self.gate2 is None else self.fc2(h) * torch.sigmoid(self.gate2(h))
        return self.out(h)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y)


PROGRAMS: list[Program] = [
    Program(
        name="linear_stack_circles",
        story="three Linear layers, no activation, on two rings (BCEWithLogits)",
        build=LinearStackCircles,
        rules=("missing-nonlinearity",),
        site="net.0",
        oracle=affine_oracle,
        # The fix's second ReLU loses a quarter of its 16 units in training (dead-units warns).
        residual={"dead-units": lambda module: _dead_after_training(module, "3")},
    ),
    Program(
        name="linear_layers_with_dropout",
        story="fc1 -> dropout -> fc2 -> fc3 in a hand-written forward, cross_entropy",
        build=LinearLayersWithDropout,
        rules=("missing-nonlinearity",),
        site="fc1",
        oracle=affine_oracle,
    ),
    Program(
        name="linear_batchnorm_stack",
        story="Linear -> BatchNorm1d twice, then Linear, on two rings: no nonlinearity",
        build=LinearBatchNormStack,
        rules=("missing-nonlinearity",),
        site="model.0",
        oracle=affine_oracle,
    ),
    Program(
        name="flatten_linear_digits",
        story="MNIST-tutorial MLP on 8x8 images, Flatten then three Linear layers, the ReLUs lost",
        build=FlattenLinearDigits,
        rules=("missing-nonlinearity",),
        site="model.1",
        oracle=affine_oracle,
    ),
    Program(
        name="tutorial_clamp_relu_dropped",
        story="PyTorch tutorial net whose ReLU is .clamp(min=0); the buggy copy dropped the clamp",
        build=TutorialClampRelu,
        rules=("missing-nonlinearity",),
        site="linear1",
        oracle=affine_oracle,
    ),
    Program(
        name="scratch_two_matmuls",
        story="x.mm(w1).mm(w2) with parameters: the tutorial's clamp(min=0) lost",
        build=ScratchTwoMatmuls,
        rules=("missing-nonlinearity",),
        oracle=affine_oracle,
    ),
    Program(
        name="xor_batch_one_lost_hidden_sigmoid",
        story="textbook XOR net, batch 1, MSE; the buggy copy lost its hidden sigmoid",
        build=XorBatchOne,
        rules=("missing-nonlinearity",),
        site="hidden",
        oracle=xor_affine_oracle,
        steps=40,
        csv_logger=False,
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
        name="scratch_logistic_regression_nan",
        story="logistic regression by hand (1 / (1 + exp(-z)), log) on raw features: infinite, then NaN loss",
        build=ScratchLogisticRegressionNaN,
        rules=("non-finite",),
        oracle=nan_loss_oracle,
        csv_logger=False,
    ),
    Program(
        name="gated_units_versus_linear_stack",
        story="three Linear layers in a row; fixed with gated linear units fc(x) * sigmoid(gate(x))",
        build=GatedVersusLinearStack,
        rules=("missing-nonlinearity",),
        site="fc1",
        oracle=affine_oracle,
    ),
]
