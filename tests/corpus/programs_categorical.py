"""Class losses fed the wrong thing: a sigmoid into a categorical loss (built-in or written by hand,
through an epsilon and `log` into `nll_loss`, picked with gather or by indexing), a softmax over a
size-1 dim into cross-entropy by hand, or a softmax into `cross_entropy`, which applies its own
(through a clamp, a division by the row sum, in a tutorial loop with batch size 1).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from corpus_kit import (
    EPS,
    Program,
    TabularModule,
    blobs,
    first_batch,
    one_hot,
    parameter_grads_all_zero,
    producer,
    relu_layer_dies,
    rows_sum_to_one,
)


def categorical_crossentropy(y_true, y_pred):
    """Ported from Keras: clip the probabilities, sum the log-likelihood over the classes."""
    p = y_pred.clamp(EPS, 1 - EPS)
    return -(y_true * p.log()).sum(1).mean()


class KerasSigmoidCategorical(TabularModule):
    """Keras `Dense(3, activation='sigmoid')` + `categorical_crossentropy` on one-hot labels."""

    def __init__(self, buggy: bool) -> None:
        x, y = blobs(n=150, d=4, classes=3, seed=1)
        super().__init__(x, one_hot(y, 3), batch_size=10, lr=1e-2)
        self.dense1 = nn.Linear(4, 16)
        self.dense2 = nn.Linear(16, 3)
        self.buggy = buggy

    def forward(self, x):
        h = F.relu(self.dense1(x))
        logits = self.dense2(h)
        return torch.sigmoid(logits) if self.buggy else F.softmax(logits, dim=1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return categorical_crossentropy(y, self(x))


def sigmoid_categorical_oracle(module) -> bool:
    """One class per row (one-hot targets) while the loss input comes from a sigmoid, whose rows do
    not sum to 1: the likelihood rewards pushing every class to 1."""
    x, y = first_batch(module)
    out = module(x)
    one_class_per_row = bool(((y == 0) | (y == 1)).all()) and rows_sum_to_one(y) if y.dim() == 2 else True
    return one_class_per_row and producer(out) == "sigmoid" and not rows_sum_to_one(out)


class SigmoidLogNLL(TabularModule):
    """10-class digits-like task: `log(sigmoid(z) + eps)` into `F.nll_loss`."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=300, d=16, classes=10, seed=2), batch_size=32, lr=3e-3)
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
        self.buggy = buggy

    def forward(self, x):
        z = self.net(x)
        return torch.log(torch.sigmoid(z) + 1e-8) if self.buggy else F.log_softmax(z, dim=1)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.nll_loss(self(images), labels)


def sigmoid_log_nll_oracle(module) -> bool:
    """nll_loss reads log-probabilities: exp of each row must sum to 1; from a sigmoid it does not."""
    x, _ = first_batch(module)
    out = module(x)
    return producer(out) == "sigmoid" and not rows_sum_to_one(out.exp(), tol=1e-3)


class SigmoidIntoCrossEntropy(TabularModule):
    """`nn.CrossEntropyLoss()(torch.sigmoid(logits), y)`: the sigmoid left from a binary tutorial."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=256, d=6, classes=4, seed=4), batch_size=64, lr=1e-2)
        self.layer1 = nn.Linear(6, 24)
        self.layer2 = nn.Linear(24, 4)
        self.loss_fn = nn.CrossEntropyLoss()
        self.buggy = buggy

    def forward(self, x):
        return self.layer2(torch.relu(self.layer1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        preds = torch.sigmoid(logits) if self.buggy else logits
        return self.loss_fn(preds, y)


def sigmoid_into_ce_oracle(module) -> bool:
    """The tensor cross_entropy reads is bounded to (0, 1) by a sigmoid: softmax of it is nearly flat."""
    x, y = first_batch(module)
    captured = []
    original = module.loss_fn.forward
    module.loss_fn.forward = lambda inp, tgt: captured.append(inp) or original(inp, tgt)
    module.training_step((x, y), 0)
    module.loss_fn.forward = original
    (inp,) = captured
    return producer(inp) == "sigmoid" and bool(((inp > 0) & (inp < 1)).all())


class SigmoidSoftTargetsCrossEntropy(TabularModule):
    """F.cross_entropy with one-hot float targets (class probabilities) on torch.sigmoid of the scores."""

    def __init__(self, buggy: bool) -> None:
        x, y = blobs(n=200, d=5, classes=4, seed=38)
        super().__init__(x, one_hot(y, 4), batch_size=25, lr=1e-2)
        self.fc1 = nn.Linear(5, 20)
        self.fc2 = nn.Linear(20, 4)
        self.buggy = buggy

    def forward(self, x):
        scores = self.fc2(F.relu(self.fc1(x)))
        return torch.sigmoid(scores) if self.buggy else scores

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)


def sigmoid_into_soft_ce_oracle(module) -> bool:
    """cross_entropy reads values a sigmoid bounded to (0, 1): its softmax of them stays nearly flat
    (no class can get more than e / (e + C - 1) of the mass)."""
    x, _ = first_batch(module)
    out = module(x)
    return producer(out) == "sigmoid" and bool(((out > 0) & (out < 1)).all())


class SoftmaxClampCrossEntropy(TabularModule):
    """Softmax at the end of the Sequential, clamped "for stability", then F.cross_entropy."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=240, d=6, classes=5, seed=12), batch_size=48, lr=1e-2)
        layers = [nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 5)]
        self.net = nn.Sequential(*layers, nn.Softmax(dim=1)) if buggy else nn.Sequential(*layers)
        self.buggy = buggy

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        if self.buggy:
            out = out.clamp(1e-7, 1 - 1e-7)
        return F.cross_entropy(out, y)


class SoftmaxRowSumCrossEntropy(TabularModule):
    """Softmax, then divided by its row sum "to make sure", then nn.CrossEntropyLoss."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=200, d=4, classes=3, seed=13), batch_size=8, lr=1e-2)
        self.fc = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        self.criterion = nn.CrossEntropyLoss()
        self.buggy = buggy

    def forward(self, x):
        out = self.fc(x)
        if self.buggy:
            out = torch.softmax(out, dim=1)
            out = out / out.sum(dim=1, keepdim=True)
        return out

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self(x), y)


def softmax_into_ce_oracle(module) -> bool:
    """cross_entropy reads rows that already sum to 1 (a softmax made them): the loss applies a
    second softmax, so even a perfect one-hot prediction keeps it above log(1 + (C-1)/e)."""
    x, _ = first_batch(module)
    out = module(x)
    return producer(out) == "softmax" and rows_sum_to_one(out, tol=1e-3)


class IrisTutorialBatchOne(TabularModule):
    """The iris tutorial trained one row at a time: nn.Softmax(dim=1) and nn.CrossEntropyLoss."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=90, d=4, classes=3, seed=16), batch_size=1, lr=0.01, optimizer="sgd")
        self.fc1 = nn.Linear(4, 10)
        self.fc2 = nn.Linear(10, 10)
        self.fc3 = nn.Linear(10, 3)
        self.softmax = nn.Softmax(dim=1)
        self.buggy = buggy

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return self.softmax(x) if self.buggy else x

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.CrossEntropyLoss()(self(x), y)


class SortedDuplicatesSoftmaxCE(TabularModule):
    """A CSV with duplicated records, read in file order: the first batch is 16 identical rows.
    nn.Softmax at the end of a 4-layer ReLU MLP, into F.cross_entropy."""

    def __init__(self, buggy: bool) -> None:
        x, y = blobs(n=160, d=6, classes=3, seed=35)
        x[:16], y[:16] = x[0], y[0]
        super().__init__(x, y, batch_size=16, lr=1e-2, shuffle=False)
        layers: list[nn.Module] = []
        for w_in in (6, 24, 24, 24):
            layers += [nn.Linear(w_in, 24), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(24, 3), *([nn.Softmax(dim=1)] if buggy else []))

    def forward(self, x):
        return self.mlp(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)


class SigmoidGatherNLL(TabularModule):
    """Negative log-likelihood by hand, picking each row's class with gather, on sigmoid outputs."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=210, d=5, classes=3, seed=57), batch_size=30, lr=1e-2)
        self.fc1 = nn.Linear(5, 16)
        self.fc2 = nn.Linear(16, 3)
        self.buggy = buggy

    def forward(self, x):
        z = self.fc2(F.relu(self.fc1(x)))
        return torch.sigmoid(z) if self.buggy else torch.softmax(z, dim=1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        picked = self(x).gather(1, y.unsqueeze(1)).clamp(min=1e-7)
        return -torch.log(picked).mean()


def sparse_categorical_crossentropy(y_true, y_pred):
    """Ported from Keras: clip the probabilities, then -log of each row's true class, picked by index."""
    y_pred = y_pred.clamp(EPS, 1 - EPS)
    return -torch.log(y_pred[torch.arange(len(y_true)), y_true]).mean()


class KerasSigmoidSparseCategorical(TabularModule):
    """Keras `Dense(3, activation='sigmoid')` + `sparse_categorical_crossentropy` on integer labels."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=180, d=4, classes=3, seed=61), batch_size=16, lr=1e-2)
        self.dense1 = nn.Linear(4, 16)
        self.dense2 = nn.Linear(16, 3)
        self.act = nn.Sigmoid() if buggy else nn.Softmax(dim=1)

    def forward(self, x):
        return self.act(self.dense2(F.relu(self.dense1(x))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return sparse_categorical_crossentropy(y, self(x))


class LastStepSoftmaxByHand(TabularModule):
    """A GRU classifier keeping the last step as (N, 1, C) (`out[:, -1:]`); the training step
    applies `torch.softmax(logits, dim=1)`, the (N, C) tutorial's dim, and the cs231n loss
    `-log(probs[range(m), y]).sum() / m`."""

    def __init__(self, buggy: bool) -> None:
        x, y = blobs(n=160, d=12, classes=3, seed=62)
        super().__init__(x.view(-1, 4, 3), y, batch_size=20, lr=1e-2)
        self.gru = nn.GRU(3, 16, batch_first=True)
        self.head = nn.Linear(16, 3)
        self.class_dim = 1 if buggy else -1

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1:])  # (N, 1, C)

    def training_step(self, batch, batch_idx):
        x, y = batch
        probs = torch.softmax(self(x), dim=self.class_dim).squeeze(1)
        m = len(y)
        return -torch.log(probs[range(m), y]).sum() / m


def softmax_over_one_step_oracle(module) -> bool:
    """The probabilities are all exactly 1 (a softmax over a size-1 dim): the loss is 0 and no
    weight gets a gradient."""
    x, y = first_batch(module)
    probs = torch.softmax(module(x), dim=module.class_dim)
    loss = module.training_step((x, y), 0)
    return bool((probs == 1).all()) and float(loss.detach()) == 0.0 and parameter_grads_all_zero(module, loss)


class ScratchSoftmaxOverTheBatch(TabularModule):
    """Softmax regression ported from a NumPy tutorial whose scores were (classes, samples): its
    `exp(z) / exp(z).sum(axis=0)` kept as `F.softmax(z, dim=0)` on PyTorch's (samples, classes),
    with the tutorial's loss `-log(p[range(n), y]).mean()`."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=150, d=4, classes=3, seed=63), batch_size=30, lr=0.05, optimizer="sgd")
        self.linear = nn.Linear(4, 3)
        self.dim = 0 if buggy else 1

    def forward(self, x):
        return F.softmax(self.linear(x), dim=self.dim)

    def training_step(self, batch, batch_idx):
        x, y = batch
        p = self(x)
        return -torch.log(p[range(len(y)), y]).mean()


def softmax_over_the_batch_oracle(module) -> bool:
    """The probabilities sum to 1 down each class's column (over the batch), not along each row
    (over the classes) that the loss picks from."""
    x, _ = first_batch(module)
    p = module(x)
    return not rows_sum_to_one(p) and bool(((p.sum(0) - 1).abs() < 1e-4).all())


PROGRAMS: list[Program] = [
    Program(
        name="keras_sigmoid_categorical_crossentropy",
        story="Keras port: Dense(3, sigmoid) + categorical_crossentropy written as -(y * p.log()).sum(1).mean()",
        build=KerasSigmoidCategorical,
        rules=("output-activation-mismatch",),
        site=":sigmoid",
        oracle=sigmoid_categorical_oracle,
    ),
    Program(
        name="sigmoid_log_nll_loss",
        story="log(sigmoid(z) + 1e-8) into F.nll_loss on 10 classes",
        build=SigmoidLogNLL,
        rules=("output-activation-mismatch",),
        site=":sigmoid",
        oracle=sigmoid_log_nll_oracle,
    ),
    Program(
        name="sigmoid_into_cross_entropy",
        story="nn.CrossEntropyLoss on torch.sigmoid(logits), batch 64",
        build=SigmoidIntoCrossEntropy,
        rules=("output-activation-mismatch",),
        site=":sigmoid",
        oracle=sigmoid_into_ce_oracle,
    ),
    Program(
        name="sigmoid_soft_targets_cross_entropy",
        story="F.cross_entropy with one-hot float targets on torch.sigmoid(scores)",
        build=SigmoidSoftTargetsCrossEntropy,
        rules=("output-activation-mismatch",),
        site=":sigmoid",
        oracle=sigmoid_into_soft_ce_oracle,
    ),
    Program(
        name="softmax_clamp_cross_entropy",
        story="Softmax ending the Sequential, clamped, then F.cross_entropy",
        build=SoftmaxClampCrossEntropy,
        rules=("activation-loss-mismatch",),
        site="net.3",
        oracle=softmax_into_ce_oracle,
    ),
    Program(
        name="softmax_row_sum_cross_entropy",
        story="softmax divided by its row sum, then nn.CrossEntropyLoss (batch 8)",
        build=SoftmaxRowSumCrossEntropy,
        rules=("activation-loss-mismatch",),
        site=":softmax",
        oracle=softmax_into_ce_oracle,
    ),
    Program(
        name="iris_tutorial_batch_one_softmax_ce",
        story="iris tutorial, batch size 1: nn.Softmax(dim=1) into nn.CrossEntropyLoss",
        build=IrisTutorialBatchOne,
        rules=("activation-loss-mismatch",),
        site="softmax",
        oracle=softmax_into_ce_oracle,
        steps=40,
    ),
    Program(
        name="sorted_duplicates_softmax_ce",
        story="first batch = 16 identical rows (file order); Softmax ending a ReLU MLP into cross_entropy",
        build=SortedDuplicatesSoftmaxCE,
        rules=("activation-loss-mismatch",),
        site="mlp.9",
        oracle=softmax_into_ce_oracle,
        # The fix keeps the narrow default-init ReLU MLP: 8 of mlp.7's 24 units never fire on any
        # row after its 30 steps (dead-units names them once every step of a window is measured).
        residual={"dead-units": lambda module: relu_layer_dies(module, 30)},
    ),
    Program(
        name="sigmoid_gather_nll_by_hand",
        story="-log(p.gather(1, y)) by hand, p from a sigmoid over 3 classes; fixed: a softmax",
        build=SigmoidGatherNLL,
        rules=("output-activation-mismatch",),
        site=":sigmoid",
        oracle=sigmoid_categorical_oracle,
    ),
    Program(
        name="keras_sigmoid_sparse_categorical_by_index",
        story="Keras port: Dense(3, sigmoid) + sparse_categorical_crossentropy as -log(p[arange(n), y]).mean()",
        build=KerasSigmoidSparseCategorical,
        rules=("output-activation-mismatch",),
        site="act",
        oracle=sigmoid_categorical_oracle,
    ),
    Program(
        name="gru_last_step_softmax_dim1_by_hand",
        story="GRU head (N, 1, C), softmax over dim 1 in training_step, -log(probs[range(m), y]).sum() / m",
        build=LastStepSoftmaxByHand,
        rules=("output-activation-mismatch",),
        site=":softmax",
        oracle=softmax_over_one_step_oracle,
    ),
    Program(
        name="numpy_port_softmax_over_the_batch",
        story="NumPy tutorial port: F.softmax(z, dim=0) on (samples, classes), loss -log(p[range(n), y]).mean()",
        build=ScratchSoftmaxOverTheBatch,
        rules=("activation-loss-mismatch",),
        site=":softmax",
        oracle=softmax_over_the_batch_oracle,
    ),
]
