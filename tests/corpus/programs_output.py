"""Programs whose output activation does not fit the loss or the targets (issue classes 1 and 2).

Written the way they are posted: Keras ports with clamped probabilities and hand-written losses,
normalisation by the row sum, an epsilon before ``log``, ``log`` then ``F.nll_loss``, tutorial
criteria set in ``__init__``. Each oracle reads the loss input from autograd's graph and the
targets, with plain torch only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from corpus_kit import (
    Program,
    TabularModule,
    blobs,
    first_batch,
    houses,
    multilabel,
    one_hot,
    parameter_grads_all_zero,
    producer,
    rows_sum_to_one,
    scores,
    tumours,
)

EPS = 1e-7


# ----------------------------------------------------------------- softmax over a single unit
def keras_binary_crossentropy(y_true, y_pred):  # noqa: ANN001, ANN201
    """Ported from keras.backend.binary_crossentropy: clip, then the log-likelihood."""
    y_pred = y_pred.clamp(EPS, 1 - EPS)
    return -(y_true * torch.log(y_pred) + (1 - y_true) * torch.log(1 - y_pred)).mean()


class KerasBinarySoftmax(TabularModule):
    """`Dense(1, activation='softmax')` ported as is; hand-written Keras BCE with a clip."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(standardise=True), batch_size=32, lr=1e-2)
        self.hidden = nn.Linear(8, 16)
        self.out = nn.Linear(16, 1)
        self.out_act = nn.Softmax(dim=1) if buggy else nn.Sigmoid()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.out_act(self.out(torch.relu(self.hidden(x))))

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return keras_binary_crossentropy(y, self(x))


def single_unit_softmax_oracle(module) -> bool:  # noqa: ANN001
    """The output has one unit, a softmax made it, and the loss cannot move any weight."""
    x, y = first_batch(module)
    out = module(x)
    loss = module.training_step((x, y), 0)
    return out.shape[-1] == 1 and producer(out) == "softmax" and parameter_grads_all_zero(module, loss)


class TutorialSoftmaxBCELoss(TabularModule):
    """Tutorial structure: Sequential model, criterion in __init__, BCELoss straight on the output."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(standardise=True, seed=3), batch_size=16, lr=1e-2)
        self.model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1), nn.Softmax(dim=1) if buggy else nn.Sigmoid())
        self.criterion = nn.BCELoss()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.model(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        inputs, labels = batch
        outputs = self(inputs)
        loss = self.criterion(outputs, labels)
        return loss


class PerSampleSoftmaxEpsLog(TabularModule):
    """Per-sample SGD (batch size 1), softmax over `dim=-1` of one unit, an epsilon before the log."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(n=120, standardise=True, seed=5), batch_size=1, lr=0.05, optimizer="sgd")
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 1)
        self.buggy = buggy

    def forward(self, x):  # noqa: ANN001, ANN201
        z = self.fc2(F.relu(self.fc1(x)))
        return torch.softmax(z, dim=-1) if self.buggy else torch.sigmoid(z)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        p = self(x)
        return -(y * torch.log(p + 1e-8) + (1 - y) * torch.log(1 - p + 1e-8)).mean()


# ----------------------------------------------------------------- sigmoid into a categorical loss
def categorical_crossentropy(y_true, y_pred):  # noqa: ANN001, ANN201
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

    def forward(self, x):  # noqa: ANN001, ANN201
        h = F.relu(self.dense1(x))
        logits = self.dense2(h)
        return torch.sigmoid(logits) if self.buggy else F.softmax(logits, dim=1)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return categorical_crossentropy(y, self(x))


def sigmoid_categorical_oracle(module) -> bool:  # noqa: ANN001
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

    def forward(self, x):  # noqa: ANN001, ANN201
        z = self.net(x)
        return torch.log(torch.sigmoid(z) + 1e-8) if self.buggy else F.log_softmax(z, dim=1)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        images, labels = batch
        return F.nll_loss(self(images), labels)


def sigmoid_log_nll_oracle(module) -> bool:  # noqa: ANN001
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

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.layer2(torch.relu(self.layer1(x)))

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        logits = self(x)
        preds = torch.sigmoid(logits) if self.buggy else logits
        return self.loss_fn(preds, y)


def sigmoid_into_ce_oracle(module) -> bool:  # noqa: ANN001
    """The tensor cross_entropy reads is bounded to (0, 1) by a sigmoid: softmax of it is nearly flat."""
    x, y = first_batch(module)
    captured = []
    original = module.loss_fn.forward
    module.loss_fn.forward = lambda inp, tgt: captured.append(inp) or original(inp, tgt)
    module.training_step((x, y), 0)
    module.loss_fn.forward = original
    (inp,) = captured
    return producer(inp) == "sigmoid" and bool(((inp > 0) & (inp < 1)).all())


class ClippedSoftmaxOneUnit(TabularModule):
    """The clip moved into forward ("so the loss never sees log(0)"), softmax over one unit."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(standardise=True, seed=6), batch_size=24, lr=1e-2)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 1)
        self.buggy = buggy

    def forward(self, x):  # noqa: ANN001, ANN201
        z = self.fc2(torch.tanh(self.fc1(x)))
        p = F.softmax(z, dim=1) if self.buggy else torch.sigmoid(z)
        return p.clamp(EPS, 1 - EPS)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.binary_cross_entropy(self(x), y)


# ----------------------------------------------------------------- softmax against the targets
class KerasSoftmaxMSE(TabularModule):
    """A classification head kept for a regression of 3 standardised scores, MSE written by hand."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*scores(seed=7), batch_size=16, lr=1e-2)
        self.hidden = nn.Linear(6, 32)
        self.head = nn.Linear(32, 3)
        self.buggy = buggy

    def forward(self, x):  # noqa: ANN001, ANN201
        out = self.head(F.relu(self.hidden(x)))
        return F.softmax(out, dim=-1).clamp(EPS, 1.0) if self.buggy else out

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return ((self(x) - y) ** 2).mean()


def softmax_regression_oracle(module) -> bool:  # noqa: ANN001
    """The prediction's rows sum to 1 (a softmax made them) while a tenth or more of the targets lie
    outside [0, 1], where no softmax output can reach."""
    x, _ = first_batch(module)
    out = module(x)
    outside = ((module.y < 0) | (module.y > 1)).float().mean()
    return producer(out) == "softmax" and rows_sum_to_one(out, tol=1e-3) and bool(outside > 0.1)


class MultiLabelSoftmaxBCE(TabularModule):
    """Tagging (several tags per row): softmax over the tags, clipped, into F.binary_cross_entropy."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*multilabel(seed=8), batch_size=32, lr=1e-2)
        self.encoder = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.classifier = nn.Linear(32, 5)
        self.buggy = buggy

    def forward(self, x):  # noqa: ANN001, ANN201
        logits = self.classifier(self.encoder(x))
        return torch.softmax(logits, dim=1) if self.buggy else torch.sigmoid(logits)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, tags = batch
        probs = self(x).clamp(EPS, 1 - EPS)
        return F.binary_cross_entropy(probs, tags)


class MultiLabelSoftmaxMSE(TabularModule):
    """Tagging with nn.MSELoss on a softmax over the tags (the tutorial's regression criterion)."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*multilabel(seed=9), batch_size=20, lr=1e-2)
        self.model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 5), nn.Softmax(dim=1) if buggy else nn.Sigmoid())
        self.criterion = nn.MSELoss()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.model(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return self.criterion(self(x), y)


def softmax_multilabel_oracle(module) -> bool:  # noqa: ANN001
    """The prediction's rows sum to 1 (softmax) while target rows sum to 0, 2, 3...: several tags
    at once, which a softmax cannot express."""
    x, _ = first_batch(module)
    out = module(x)
    target_sums = module.y.sum(1)
    return producer(out) == "softmax" and rows_sum_to_one(out) and bool((target_sums != 1).float().mean() > 0.3)


# ----------------------------------------------------------------- ReLU where probabilities are expected
class ReluProbabilityBCE(TabularModule):
    """ReLU kept on the output layer "because it worked in the hidden ones", clipped into BCE."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(standardise=True, seed=10), batch_size=32, lr=1e-2)
        self.l1 = nn.Linear(8, 16)
        self.l2 = nn.Linear(16, 1)
        self.act = nn.ReLU()
        self.out_act = nn.ReLU() if buggy else nn.Sigmoid()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.out_act(self.l2(self.act(self.l1(x))))

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        p = torch.clamp(self(x), 1e-7, 1 - 1e-7)
        return F.binary_cross_entropy(p, y)


class ReluRowNormalised(TabularModule):
    """Class "probabilities" made by dividing ReLU scores by their row sum, hand-written CE."""

    def __init__(self, buggy: bool) -> None:
        x, y = blobs(n=180, d=5, classes=3, seed=11)
        super().__init__(x, one_hot(y, 3), batch_size=12, lr=1e-2)
        self.fc1 = nn.Linear(5, 16)
        self.fc2 = nn.Linear(16, 3)
        self.buggy = buggy

    def forward(self, x):  # noqa: ANN001, ANN201
        scores = self.fc2(F.relu(self.fc1(x)))
        if not self.buggy:
            return F.softmax(scores, dim=1)
        scores = F.relu(scores)
        return scores / (scores.sum(dim=1, keepdim=True) + 1e-8)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return -(y * torch.log(self(x) + 1e-8)).sum(dim=1).mean()


def relu_probability_oracle(module) -> bool:  # noqa: ANN001
    """A ReLU made the probabilities: some are exactly 0 (log of the epsilon) or above 1."""
    x, _ = first_batch(module)
    out = module(x)
    return producer(out) == "relu" and bool(((out <= 0) | (out > 1)).any())


# ----------------------------------------------------------------- the loss applies the activation again
class SoftmaxClampCrossEntropy(TabularModule):
    """Softmax at the end of the Sequential, clamped "for stability", then F.cross_entropy."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=240, d=6, classes=5, seed=12), batch_size=48, lr=1e-2)
        layers = [nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 5)]
        self.net = nn.Sequential(*layers, nn.Softmax(dim=1)) if buggy else nn.Sequential(*layers)
        self.buggy = buggy

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.net(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
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

    def forward(self, x):  # noqa: ANN001, ANN201
        out = self.fc(x)
        if self.buggy:
            out = torch.softmax(out, dim=1)
            out = out / out.sum(dim=1, keepdim=True)
        return out

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return self.criterion(self(x), y)


def softmax_into_ce_oracle(module) -> bool:  # noqa: ANN001
    """cross_entropy reads rows that already sum to 1 (a softmax made them): the loss applies a
    second softmax, so even a perfect one-hot prediction keeps it above log(1 + (C-1)/e)."""
    x, _ = first_batch(module)
    out = module(x)
    return producer(out) == "softmax" and rows_sum_to_one(out, tol=1e-3)


class SigmoidIntoBCEWithLogits(TabularModule):
    """Sequential ending in nn.Sigmoid, criterion nn.BCEWithLogitsLoss (batch 8)."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(standardise=True, seed=14), batch_size=8, lr=1e-2)
        layers = [nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)]
        self.model = nn.Sequential(*layers, nn.Sigmoid()) if buggy else nn.Sequential(*layers)
        self.criterion = nn.BCEWithLogitsLoss()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.model(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return self.criterion(self(x), y)


class SigmoidClampBCEWithLogits(TabularModule):
    """torch.sigmoid then a clamp, into F.binary_cross_entropy_with_logits (batch 4)."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(n=160, standardise=True, seed=15), batch_size=4, lr=1e-2)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 1)
        self.buggy = buggy

    def forward(self, x):  # noqa: ANN001, ANN201
        z = self.fc2(F.relu(self.fc1(x)))
        return torch.sigmoid(z).clamp(1e-6, 1 - 1e-6) if self.buggy else z

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y)


def sigmoid_into_logits_loss_oracle(module) -> bool:  # noqa: ANN001
    """The "logits" BCEWithLogits reads lie in (0, 1) (a sigmoid made them): its own sigmoid maps
    them into (0.5, 0.731), so no prediction can say "class 0"."""
    x, _ = first_batch(module)
    out = module(x)
    return producer(out) == "sigmoid" and bool(((out > 0) & (out < 1)).all())


class IrisTutorialBatchOne(TabularModule):
    """The iris tutorial trained one row at a time: nn.Softmax(dim=1) and nn.CrossEntropyLoss."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=90, d=4, classes=3, seed=16), batch_size=1, lr=0.01, optimizer="sgd")
        self.fc1 = nn.Linear(4, 10)
        self.fc2 = nn.Linear(10, 10)
        self.fc3 = nn.Linear(10, 3)
        self.softmax = nn.Softmax(dim=1)
        self.buggy = buggy

    def forward(self, x):  # noqa: ANN001, ANN201
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return self.softmax(x) if self.buggy else x

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return nn.CrossEntropyLoss()(self(x), y)


class SoftmaxClampMSELoss(TabularModule):
    """Three proportions-that-are-not predicted with softmax, clamped, into F.mse_loss."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*scores(n=200, seed=17), batch_size=25, lr=1e-2)
        self.body = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
        self.buggy = buggy

    def forward(self, x):  # noqa: ANN001, ANN201
        y = self.body(x)
        return torch.softmax(y, dim=1).clamp(1e-6, 1 - 1e-6) if self.buggy else y

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.mse_loss(self(x), y)


class ManualLoopReluClampBCELoss(TabularModule):
    """The plain-PyTorch loop pasted into training_step (manual optimisation); the ReLU output was
    clamped to [0, 1] after BCELoss complained about values above 1."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(standardise=True, seed=18), batch_size=16, lr=1e-2)
        self.automatic_optimization = False
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1), nn.ReLU() if buggy else nn.Sigmoid())
        self.criterion = nn.BCELoss()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.model(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        optimizer = self.optimizers()
        inputs, labels = batch
        optimizer.zero_grad()
        outputs = torch.clamp(self(inputs), 0, 1)
        loss = self.criterion(outputs, labels)
        self.manual_backward(loss)
        optimizer.step()
        return loss


class ReluLogitsOneHotRowsBatchOne(TabularModule):
    """One-hot encoded categorical features read in file order (the first row is all zeros), batch 1;
    a ReLU after every layer, the last one included, into nn.CrossEntropyLoss."""

    def __init__(self, buggy: bool) -> None:
        x, y = blobs(n=64, d=6, classes=3, seed=19)
        x = (x > 0.5).float()
        x[0] = 0.0
        super().__init__(x, y, batch_size=1, lr=0.01, optimizer="sgd", shuffle=False)
        layers = [nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)]
        self.classifier = nn.Sequential(*layers, nn.ReLU()) if buggy else nn.Sequential(*layers)
        self.loss_function = nn.CrossEntropyLoss()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.classifier(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        features, target = batch
        return self.loss_function(self(features), target)


def relu_logits_oracle(module) -> bool:  # noqa: ANN001
    """The logits cross_entropy reads come from a ReLU: no score can go below 0."""
    x = module.x[:32]
    out = module(x)
    return producer(out) == "relu" and bool((out >= 0).all())


class KerasSoftmaxColumnBCE(TabularModule):
    """Keras binary port squeezing its output for the hand-written BCE. Buggy: Dense(1, softmax).
    Fixed: Dense(2, softmax) and the positive class's column, p[:, 1], clipped into the same BCE."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(standardise=True, seed=32), batch_size=40, lr=1e-2)
        self.dense = nn.Linear(8, 16)
        self.head = nn.Linear(16, 1 if buggy else 2)

    def forward(self, x):  # noqa: ANN001, ANN201
        return F.softmax(self.head(F.relu(self.dense(x))), dim=-1)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        probs = self(x)
        p = probs.squeeze(-1) if probs.shape[-1] == 1 else probs[:, 1]
        return keras_binary_crossentropy(y.squeeze(-1), p)


# ----------------------------------------------------------------- output range against the targets
class SigmoidPriceL1(TabularModule):
    """House prices in $100k (0.5 to 5) regressed through a sigmoid head, L1 written by hand.
    The fix min-max scales the targets into [0, 1]."""

    def __init__(self, buggy: bool) -> None:
        x, price = houses(seed=33, standardise=True)
        price = price.clamp(min=0.1)
        y = price if buggy else (price - price.min()) / (price.max() - price.min())
        super().__init__(x, y, batch_size=30, lr=1e-2)
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, x):  # noqa: ANN001, ANN201
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x))))

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return torch.abs(self(x) - y).mean()


class ReluHeadStandardisedTargets(TabularModule):
    """A ReLU head for a non-negative quantity (price), but the copied preprocessing standardised the
    targets too (half of them negative). The fix keeps the targets in their positive units."""

    def __init__(self, buggy: bool) -> None:
        x, price = houses(seed=34, standardise=True)
        price = price.clamp(min=0.1)
        y = (price - price.mean()) / price.std() if buggy else price
        super().__init__(x, y, batch_size=16, lr=1e-2)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1), nn.ReLU())
        self.criterion = nn.MSELoss()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.net(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return self.criterion(self(x), y)


def targets_out_of_range_oracle(module) -> bool:  # noqa: ANN001
    """Over a tenth of the targets lie where the output activation cannot reach: (0, 1) for a
    sigmoid, [0, inf) for a ReLU (activation read from autograd's graph)."""
    x, _ = first_batch(module)
    kind = producer(module(x))
    y = module.y
    if kind == "sigmoid":
        outside = (y < 0) | (y > 1)
    elif kind == "relu":
        outside = y < 0
    else:
        return False
    return bool(outside.float().mean() > 0.1)


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

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.mlp(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.cross_entropy(self(x), y)


class KerasTwoClassSoftmaxBCE(TabularModule):
    """Keras `binary_crossentropy` kept while the head changed. Buggy: Dense(1, softmax) on (N, 1)
    labels. Fixed (the accepted answer): Dense(2, softmax) on one-hot labels, the same loss: rows of
    the targets sum to 1, so the softmax fits them."""

    def __init__(self, buggy: bool) -> None:
        x, y = tumours(standardise=True, seed=36)
        super().__init__(x, y if buggy else one_hot(y.squeeze(1).long(), 2), batch_size=32, lr=1e-2)
        self.dense = nn.Linear(8, 16)
        self.out = nn.Linear(16, 1 if buggy else 2)

    def forward(self, x):  # noqa: ANN001, ANN201
        return torch.softmax(self.out(torch.relu(self.dense(x))), dim=1)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.binary_cross_entropy(self(x).clamp(EPS, 1 - EPS), y)


def softmax_fault_oracle(module) -> bool:  # noqa: ANN001
    """Either softmax fault: over a single unit, or against targets whose rows do not sum to 1."""
    return single_unit_softmax_oracle(module) or softmax_multilabel_oracle(module)


class FocalLoss(nn.Module):
    """The focal loss as posted on forums: it takes logits."""

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, inputs, targets):  # noqa: ANN001, ANN201
        bce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
        pt = torch.exp(-bce)
        return ((1 - pt) ** self.gamma * bce).mean()


class SigmoidIntoFocalLoss(TabularModule):
    """An imbalanced binary task: the model ends in nn.Sigmoid and feeds a focal loss written for logits."""

    def __init__(self, buggy: bool) -> None:
        x, y = tumours(n=300, standardise=True, seed=37)
        super().__init__(x, y, batch_size=32, lr=1e-2)
        layers = [nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)]
        self.net = nn.Sequential(*layers, nn.Sigmoid()) if buggy else nn.Sequential(*layers)
        self.criterion = FocalLoss()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.net(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return self.criterion(self(x), y)


class SigmoidSoftTargetsCrossEntropy(TabularModule):
    """F.cross_entropy with one-hot float targets (class probabilities) on torch.sigmoid of the scores."""

    def __init__(self, buggy: bool) -> None:
        x, y = blobs(n=200, d=5, classes=4, seed=38)
        super().__init__(x, one_hot(y, 4), batch_size=25, lr=1e-2)
        self.fc1 = nn.Linear(5, 20)
        self.fc2 = nn.Linear(20, 4)
        self.buggy = buggy

    def forward(self, x):  # noqa: ANN001, ANN201
        scores = self.fc2(F.relu(self.fc1(x)))
        return torch.sigmoid(scores) if self.buggy else scores

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.cross_entropy(self(x), y)


def sigmoid_into_soft_ce_oracle(module) -> bool:  # noqa: ANN001
    """cross_entropy reads values a sigmoid bounded to (0, 1): its softmax of them stays nearly flat
    (no class can get more than e / (e + C - 1) of the mass)."""
    x, _ = first_batch(module)
    out = module(x)
    return producer(out) == "sigmoid" and bool(((out > 0) & (out < 1)).all())


class ImplicitDimSoftmaxBCELoss(TabularModule):
    """`nn.Softmax()` with no dim (PyTorch picks dim=1 for 2-D input) over one unit, nn.BCELoss."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(standardise=True, seed=43), batch_size=64, lr=1e-2)
        self.layer_1 = nn.Linear(8, 16)
        self.layer_out = nn.Linear(16, 1)
        self.relu = nn.ReLU()
        self.final = nn.Softmax() if buggy else nn.Sigmoid()  # noqa: the implicit dim is the bug's context
        self.criterion = nn.BCELoss()

    def forward(self, inputs):  # noqa: ANN001, ANN201
        x = self.relu(self.layer_1(inputs))
        return self.final(self.layer_out(x))

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x_batch, y_batch = batch
        return self.criterion(self(x_batch), y_batch)


class BinaryAsTwoClassNLL(TabularModule):
    """One probability per row made into two columns, [1 - p, p], then log and F.nll_loss. Buggy:
    p from a softmax over the single unit. Fixed: p from a sigmoid (a sound binary model)."""

    def __init__(self, buggy: bool) -> None:
        x, y = tumours(standardise=True, seed=44)
        super().__init__(x, y.squeeze(1).long(), batch_size=20, lr=1e-2)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 1)
        self.buggy = buggy

    def forward(self, x):  # noqa: ANN001, ANN201
        z = self.fc2(F.relu(self.fc1(x)))
        return F.softmax(z, dim=1) if self.buggy else torch.sigmoid(z)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        p = self(x)
        probs = torch.cat([1 - p, p], dim=1)
        return F.nll_loss(torch.log(probs + 1e-8), y)


class TanhHeadUnscaledTargets(TabularModule):
    """A tanh head copied from a [-1, 1] example, now on ratings of 0 to 10, F.smooth_l1_loss.
    The fix scales the targets into [-1, 1] (and back at prediction time)."""

    def __init__(self, buggy: bool) -> None:
        x, score = scores(n=200, outputs=1, seed=45)
        ratings = (score - score.min()) / (score.max() - score.min()) * 10
        super().__init__(x, ratings if buggy else ratings / 5 - 1, batch_size=40, lr=1e-2)
        self.model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1), nn.Tanh())

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.model(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.smooth_l1_loss(self(x), y)


def tanh_targets_oracle(module) -> bool:  # noqa: ANN001
    """Over a tenth of the targets lie outside [-1, 1], the range of the tanh that made the output."""
    x, _ = first_batch(module)
    return producer(module(x)) == "tanh" and bool((module.y.abs() > 1).float().mean() > 0.1)


class RatingsDotProduct(TabularModule):
    """A recommender on (user id, item id) pairs (ids up to 1999 go into embeddings, not layers):
    ratings 1 to 5 against sigmoid(dot). The fix is fastai's sigmoid_range: (0, 5.5) * sigmoid."""

    def __init__(self, buggy: bool) -> None:
        g = torch.Generator().manual_seed(46)
        n, users, items = 400, 300, 2000
        ids = torch.stack([torch.randint(0, users, (n,), generator=g), torch.randint(0, items, (n,), generator=g)], 1)
        taste = torch.randn(users, generator=g)
        quality = torch.randn(items, generator=g)
        ratings = (3 + taste[ids[:, 0]] + quality[ids[:, 1]]).clamp(1, 5).round().unsqueeze(1)
        super().__init__(ids, ratings, batch_size=64, lr=3e-2)
        self.user_factors = nn.Embedding(users, 8)
        self.item_factors = nn.Embedding(items, 8)
        self.y_range = None if buggy else (0.0, 5.5)

    def forward(self, ids):  # noqa: ANN001, ANN201
        dot = (self.user_factors(ids[:, 0]) * self.item_factors(ids[:, 1])).sum(1, keepdim=True)
        if self.y_range is None:
            return torch.sigmoid(dot)
        low, high = self.y_range
        return torch.sigmoid(dot) * (high - low) + low

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        ids, ratings = batch
        return F.mse_loss(self(ids), ratings)


def ratings_range_oracle(module) -> bool:  # noqa: ANN001
    """A sigmoid makes the prediction, and over a tenth of the ratings lie outside the range the
    forward can reach (sigmoid's (0, 1), or the y_range it is stretched to)."""
    x, _ = first_batch(module)
    low, high = module.y_range or (0.0, 1.0)
    outside = (module.y < low) | (module.y > high)
    return producer(module(x)) == "sigmoid" and bool(outside.float().mean() > 0.1)


class MultiLabelSoftmaxHandBCE(TabularModule):
    """Multi-label tags, softmax over the tags, BCE written by hand with an epsilon inside the logs."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*multilabel(n=200, labels=6, seed=47), batch_size=10, lr=1e-2)
        self.fc1 = nn.Linear(8, 24)
        self.fc2 = nn.Linear(24, 6)
        self.buggy = buggy

    def forward(self, x):  # noqa: ANN001, ANN201
        logits = self.fc2(torch.relu(self.fc1(x)))
        return F.softmax(logits, -1) if self.buggy else torch.sigmoid(logits)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        p = self(x)
        return -(y * torch.log(p + 1e-9) + (1 - y) * torch.log(1 - p + 1e-9)).mean()


# ----------------------------------------------------------------- PROGRAMS
# Why today's code misses a buggy variant (strict xfail reasons; issue 20's classes).
CLAMP_GAP = "class 1: a clamp, epsilon, log or row-sum division between the output activation and the loss hides the output"
HAND_LOSS = "class 1: a hand-written loss (log-likelihood or squared error against targets) is not recognised as a loss"
TARGETS_GAP = "class 2: softmax over multi-label targets is judged only for BCE, not for MSE"
ONE_HOT_BCE_GAP = "class 2: softmax into BCE is a warning whatever the targets; one-hot targets (rows summing to 1) fit a softmax"

PROGRAMS: list[Program] = [
    Program(
        name="keras_binary_softmax_one_unit",
        story="Keras port: Dense(1, softmax) with the Keras BCE written by hand after a clip",
        build=KerasBinarySoftmax,
        rules=("output-activation-mismatch",),
        site="out_act",
        oracle=single_unit_softmax_oracle,
    ),
    Program(
        name="tutorial_softmax_one_unit_bceloss",
        story="tutorial loop: Sequential ending in Softmax(dim=1) over one unit, nn.BCELoss",
        build=TutorialSoftmaxBCELoss,
        rules=("output-activation-mismatch",),
        site="model.3",
        oracle=single_unit_softmax_oracle,
    ),
    Program(
        name="per_sample_softmax_eps_log",
        story="batch size 1, softmax over one unit, BCE written with log(p + 1e-8)",
        build=PerSampleSoftmaxEpsLog,
        rules=("output-activation-mismatch",),
        site=":softmax",
        oracle=single_unit_softmax_oracle,
        steps=40,
    ),
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
        name="clipped_softmax_one_unit_in_forward",
        story="softmax over one unit clipped inside forward, then F.binary_cross_entropy",
        build=ClippedSoftmaxOneUnit,
        rules=("output-activation-mismatch",),
        site=":softmax",
        oracle=single_unit_softmax_oracle,
    ),
    Program(
        name="keras_softmax_mse_regression",
        story="softmax head (clipped) kept for 3 standardised regression targets, MSE written by hand",
        build=KerasSoftmaxMSE,
        rules=("output-activation-mismatch",),
        site=":softmax",
        oracle=softmax_regression_oracle,
    ),
    Program(
        name="multilabel_softmax_clamp_bce",
        story="multi-label tags: softmax over the tags, clamped, into F.binary_cross_entropy",
        build=MultiLabelSoftmaxBCE,
        rules=("activation-loss-mismatch", "output-activation-mismatch"),
        site=":softmax",
        oracle=softmax_multilabel_oracle,
    ),
    Program(
        name="multilabel_softmax_mse",
        story="multi-label tags: Sequential ending in Softmax(dim=1), nn.MSELoss",
        build=MultiLabelSoftmaxMSE,
        rules=("output-activation-mismatch", "activation-loss-mismatch"),
        site="model.3",
        oracle=softmax_multilabel_oracle,
    ),
    Program(
        name="relu_output_clamped_bce",
        story="ReLU on the single output, clamped into F.binary_cross_entropy",
        build=ReluProbabilityBCE,
        rules=("output-activation-mismatch",),
        site="out_act",
        oracle=relu_probability_oracle,
    ),
    Program(
        name="relu_scores_over_row_sum",
        story="ReLU scores divided by their row sum as class probabilities, cross-entropy by hand",
        build=ReluRowNormalised,
        rules=("output-activation-mismatch",),
        site=":relu#1",
        oracle=relu_probability_oracle,
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
        name="sigmoid_into_bce_with_logits",
        story="Sequential ending in nn.Sigmoid with nn.BCEWithLogitsLoss (batch 8)",
        build=SigmoidIntoBCEWithLogits,
        rules=("activation-loss-mismatch",),
        site="model.3",
        oracle=sigmoid_into_logits_loss_oracle,
    ),
    Program(
        name="sigmoid_clamp_bce_with_logits",
        story="torch.sigmoid then clamp into F.binary_cross_entropy_with_logits (batch 4)",
        build=SigmoidClampBCEWithLogits,
        rules=("activation-loss-mismatch",),
        site=":sigmoid",
        oracle=sigmoid_into_logits_loss_oracle,
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
        name="softmax_clamp_mse_loss",
        story="softmax (clamped) over 3 standardised regression targets into F.mse_loss",
        build=SoftmaxClampMSELoss,
        rules=("output-activation-mismatch",),
        site=":softmax",
        oracle=softmax_regression_oracle,
    ),
    Program(
        name="manual_loop_relu_clamp01_bceloss",
        story="tutorial loop (manual optimisation): ReLU output clamped to [0, 1] into nn.BCELoss",
        build=ManualLoopReluClampBCELoss,
        rules=("output-activation-mismatch",),
        site="model.3",
        oracle=relu_probability_oracle,
    ),
    Program(
        name="relu_logits_one_hot_rows_batch_one",
        story="ReLU after the last layer into nn.CrossEntropyLoss; batch 1, first row all zeros",
        build=ReluLogitsOneHotRowsBatchOne,
        rules=("output-activation-mismatch",),
        site="classifier.5",
        oracle=relu_logits_oracle,
        steps=40,
    ),
    Program(
        name="keras_softmax_column_bce",
        story="Keras binary port, output squeezed into a hand BCE; fixed: 2-unit softmax and p[:, 1]",
        build=KerasSoftmaxColumnBCE,
        rules=("output-activation-mismatch",),
        site=":softmax",
        oracle=single_unit_softmax_oracle,
    ),
    Program(
        name="sigmoid_head_price_targets_l1",
        story="prices in $100k through a sigmoid head, L1 written by hand; fixed: min-max scaled targets",
        build=SigmoidPriceL1,
        rules=("output-activation-mismatch",),
        site=":sigmoid",
        oracle=targets_out_of_range_oracle,
    ),
    Program(
        name="relu_head_standardised_targets",
        story="ReLU head for a price whose targets were standardised (half negative), nn.MSELoss",
        build=ReluHeadStandardisedTargets,
        rules=("output-activation-mismatch",),
        site="net.3",
        oracle=targets_out_of_range_oracle,
    ),
    Program(
        name="sorted_duplicates_softmax_ce",
        story="first batch = 16 identical rows (file order); Softmax ending a ReLU MLP into cross_entropy",
        build=SortedDuplicatesSoftmaxCE,
        rules=("activation-loss-mismatch",),
        site="mlp.9",
        oracle=softmax_into_ce_oracle,
    ),
    Program(
        name="keras_two_class_softmax_bce",
        story="Keras binary_crossentropy, Dense(1, softmax); fixed: Dense(2, softmax) on one-hot labels",
        build=KerasTwoClassSoftmaxBCE,
        rules=("output-activation-mismatch",),
        site=":softmax",
        oracle=softmax_fault_oracle,
        fixed_xfail=ONE_HOT_BCE_GAP,
    ),
    Program(
        name="sigmoid_into_focal_loss",
        story="nn.Sigmoid ending the model, into a forum focal loss built on BCE-with-logits",
        build=SigmoidIntoFocalLoss,
        rules=("activation-loss-mismatch",),
        site="net.3",
        oracle=sigmoid_into_logits_loss_oracle,
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
        name="implicit_dim_softmax_bceloss",
        story="nn.Softmax() with no dim over one unit, nn.BCELoss, batch 64",
        build=ImplicitDimSoftmaxBCELoss,
        rules=("output-activation-mismatch",),
        site="final",
        oracle=single_unit_softmax_oracle,
    ),
    Program(
        name="binary_as_two_class_nll",
        story="[1 - p, p] then log into F.nll_loss; buggy p = softmax over one unit, fixed p = sigmoid",
        build=BinaryAsTwoClassNLL,
        rules=("output-activation-mismatch",),
        site=":softmax",
        oracle=single_unit_softmax_oracle,
    ),
    Program(
        name="tanh_head_unscaled_targets",
        story="tanh head on ratings 0-10 with F.smooth_l1_loss; fixed: targets scaled to [-1, 1]",
        build=TanhHeadUnscaledTargets,
        rules=("output-activation-mismatch",),
        site="model.3",
        oracle=tanh_targets_oracle,
    ),
    Program(
        name="ratings_sigmoid_without_range",
        story="embedding recommender, sigmoid(dot) against ratings 1-5; fixed: sigmoid stretched to (0, 5.5)",
        build=RatingsDotProduct,
        rules=("output-activation-mismatch",),
        site=":sigmoid",
        oracle=ratings_range_oracle,
    ),
    Program(
        name="multilabel_softmax_hand_bce",
        story="multi-label tags, softmax, BCE by hand with log(p + 1e-9), batch 10",
        build=MultiLabelSoftmaxHandBCE,
        rules=("activation-loss-mismatch", "output-activation-mismatch"),
        site=":softmax",
        oracle=softmax_multilabel_oracle,
    ),
]
