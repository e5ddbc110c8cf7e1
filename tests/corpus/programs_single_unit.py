"""Softmax over a single unit: the output is always 1.0 and the loss cannot move a weight.

Keras ports (`Dense(1, activation='softmax')`), tutorial criteria, an implicit softmax dim, the
clip moved into forward, `[1 - p, p]` into `nll_loss`; the fixes use a sigmoid or two units.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from corpus_kit import (
    EPS,
    Program,
    TabularModule,
    first_batch,
    one_hot,
    parameter_grads_all_zero,
    producer,
    tumours,
)
from programs_multilabel import softmax_multilabel_oracle


def keras_binary_crossentropy(y_true, y_pred):
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

    def forward(self, x):
        return self.out_act(self.out(torch.relu(self.hidden(x))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return keras_binary_crossentropy(y, self(x))


def single_unit_softmax_oracle(module) -> bool:
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

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
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

    def forward(self, x):
        z = self.fc2(F.relu(self.fc1(x)))
        return torch.softmax(z, dim=-1) if self.buggy else torch.sigmoid(z)

    def training_step(self, batch, batch_idx):
        x, y = batch
        p = self(x)
        return -(y * torch.log(p + 1e-8) + (1 - y) * torch.log(1 - p + 1e-8)).mean()


class ClippedSoftmaxOneUnit(TabularModule):
    """The clip moved into forward ("so the loss never sees log(0)"), softmax over one unit."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(standardise=True, seed=6), batch_size=24, lr=1e-2)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 1)
        self.buggy = buggy

    def forward(self, x):
        z = self.fc2(torch.tanh(self.fc1(x)))
        p = F.softmax(z, dim=1) if self.buggy else torch.sigmoid(z)
        return p.clamp(EPS, 1 - EPS)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.binary_cross_entropy(self(x), y)


class KerasSoftmaxColumnBCE(TabularModule):
    """Keras binary port squeezing its output for the hand-written BCE. Buggy: Dense(1, softmax).
    Fixed: Dense(2, softmax) and the positive class's column, p[:, 1], clipped into the same BCE."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(standardise=True, seed=32), batch_size=40, lr=1e-2)
        self.dense = nn.Linear(8, 16)
        self.head = nn.Linear(16, 1 if buggy else 2)

    def forward(self, x):
        return F.softmax(self.head(F.relu(self.dense(x))), dim=-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        probs = self(x)
        p = probs.squeeze(-1) if probs.shape[-1] == 1 else probs[:, 1]
        return keras_binary_crossentropy(y.squeeze(-1), p)


class KerasTwoClassSoftmaxBCE(TabularModule):
    """Keras `binary_crossentropy` kept while the head changed. Buggy: Dense(1, softmax) on (N, 1)
    labels. Fixed (the accepted answer): Dense(2, softmax) on one-hot labels, the same loss: rows of
    the targets sum to 1, so the softmax fits them."""

    def __init__(self, buggy: bool) -> None:
        x, y = tumours(standardise=True, seed=36)
        super().__init__(x, y if buggy else one_hot(y.squeeze(1).long(), 2), batch_size=32, lr=1e-2)
        self.dense = nn.Linear(8, 16)
        self.out = nn.Linear(16, 1 if buggy else 2)

    def forward(self, x):
        return torch.softmax(self.out(torch.relu(self.dense(x))), dim=1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.binary_cross_entropy(self(x).clamp(EPS, 1 - EPS), y)


def softmax_fault_oracle(module) -> bool:
    """Either softmax fault: over a single unit, or against targets whose rows do not sum to 1."""
    return single_unit_softmax_oracle(module) or softmax_multilabel_oracle(module)


class ImplicitDimSoftmaxBCELoss(TabularModule):
    """`nn.Softmax()` with no dim (PyTorch picks dim=1 for 2-D input) over one unit, nn.BCELoss."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(standardise=True, seed=43), batch_size=64, lr=1e-2)
        self.layer_1 = nn.Linear(8, 16)
        self.layer_out = nn.Linear(16, 1)
        self.relu = nn.ReLU()
        self.final = nn.Softmax() if buggy else nn.Sigmoid()
        self.criterion = nn.BCELoss()

    def forward(self, inputs):
        x = self.relu(self.layer_1(inputs))
        return self.final(self.layer_out(x))

    def training_step(self, batch, batch_idx):
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

    def forward(self, x):
        z = self.fc2(F.relu(self.fc1(x)))
        return F.softmax(z, dim=1) if self.buggy else torch.sigmoid(z)

    def training_step(self, batch, batch_idx):
        x, y = batch
        p = self(x)
        probs = torch.cat([1 - p, p], dim=1)
        return F.nll_loss(torch.log(probs + 1e-8), y)


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
        name="clipped_softmax_one_unit_in_forward",
        story="softmax over one unit clipped inside forward, then F.binary_cross_entropy",
        build=ClippedSoftmaxOneUnit,
        rules=("output-activation-mismatch",),
        site=":softmax",
        oracle=single_unit_softmax_oracle,
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
        name="keras_two_class_softmax_bce",
        story="Keras binary_crossentropy, Dense(1, softmax); fixed: Dense(2, softmax) on one-hot labels",
        build=KerasTwoClassSoftmaxBCE,
        rules=("output-activation-mismatch",),
        site=":softmax",
        oracle=softmax_fault_oracle,
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
]
