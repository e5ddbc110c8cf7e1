"""Probabilities that cannot fit the targets: a softmax over multi-label tags (rows that do not
sum to 1) with BCE (built-in, clamped, by hand) and with MSE; a ReLU where probabilities or
logits are expected (clamped into BCE, normalised by its row sum, before `CrossEntropyLoss`).
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
    multilabel,
    one_hot,
    producer,
    rows_sum_to_one,
    tumours,
)

# Why today's code gets a variant wrong (strict xfail reasons; issue 20's classes).
WHERE_LOSS_GAP = "class 1: BCE written with torch.where on the targets is not recognised as a loss"


class MultiLabelSoftmaxBCE(TabularModule):
    """Tagging (several tags per row): softmax over the tags, clipped, into F.binary_cross_entropy."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*multilabel(seed=8), batch_size=32, lr=1e-2)
        self.encoder = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.classifier = nn.Linear(32, 5)
        self.buggy = buggy

    def forward(self, x):
        logits = self.classifier(self.encoder(x))
        return torch.softmax(logits, dim=1) if self.buggy else torch.sigmoid(logits)

    def training_step(self, batch, batch_idx):
        x, tags = batch
        probs = self(x).clamp(EPS, 1 - EPS)
        return F.binary_cross_entropy(probs, tags)


class MultiLabelSoftmaxMSE(TabularModule):
    """Tagging with nn.MSELoss on a softmax over the tags (the tutorial's regression criterion)."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*multilabel(seed=9), batch_size=20, lr=1e-2)
        self.model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 5), nn.Softmax(dim=1) if buggy else nn.Sigmoid())
        self.criterion = nn.MSELoss()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self(x), y)


class MultiLabelSoftmaxHandBCE(TabularModule):
    """Multi-label tags, softmax over the tags, BCE written by hand with an epsilon inside the logs."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*multilabel(n=200, labels=6, seed=47), batch_size=10, lr=1e-2)
        self.fc1 = nn.Linear(8, 24)
        self.fc2 = nn.Linear(24, 6)
        self.buggy = buggy

    def forward(self, x):
        logits = self.fc2(torch.relu(self.fc1(x)))
        return F.softmax(logits, -1) if self.buggy else torch.sigmoid(logits)

    def training_step(self, batch, batch_idx):
        x, y = batch
        p = self(x)
        return -(y * torch.log(p + 1e-9) + (1 - y) * torch.log(1 - p + 1e-9)).mean()


def softmax_multilabel_oracle(module) -> bool:
    """The prediction's rows sum to 1 (softmax) while target rows sum to 0, 2, 3...: several tags
    at once, which a softmax cannot express."""
    x, _ = first_batch(module)
    out = module(x)
    target_sums = module.y.sum(1)
    return producer(out) == "softmax" and rows_sum_to_one(out) and bool((target_sums != 1).float().mean() > 0.3)


class ReluProbabilityBCE(TabularModule):
    """ReLU kept on the output layer "because it worked in the hidden ones", clipped into BCE."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(standardise=True, seed=10), batch_size=32, lr=1e-2)
        self.l1 = nn.Linear(8, 16)
        self.l2 = nn.Linear(16, 1)
        self.act = nn.ReLU()
        self.out_act = nn.ReLU() if buggy else nn.Sigmoid()

    def forward(self, x):
        return self.out_act(self.l2(self.act(self.l1(x))))

    def training_step(self, batch, batch_idx):
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

    def forward(self, x):
        scores = self.fc2(F.relu(self.fc1(x)))
        if not self.buggy:
            return F.softmax(scores, dim=1)
        scores = F.relu(scores)
        return scores / (scores.sum(dim=1, keepdim=True) + 1e-8)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return -(y * torch.log(self(x) + 1e-8)).sum(dim=1).mean()


class ManualLoopReluClampBCELoss(TabularModule):
    """The plain-PyTorch loop pasted into training_step (manual optimisation); the ReLU output was
    clamped to [0, 1] after BCELoss complained about values above 1."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(standardise=True, seed=18), batch_size=16, lr=1e-2)
        self.automatic_optimization = False
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1), nn.ReLU() if buggy else nn.Sigmoid())
        self.criterion = nn.BCELoss()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        inputs, labels = batch
        optimizer.zero_grad()
        outputs = torch.clamp(self(inputs), 0, 1)
        loss = self.criterion(outputs, labels)
        self.manual_backward(loss)
        optimizer.step()
        return loss


def relu_probability_oracle(module) -> bool:
    """A ReLU made the probabilities: some are exactly 0 (log of the epsilon) or above 1."""
    x, _ = first_batch(module)
    out = module(x)
    return producer(out) == "relu" and bool(((out <= 0) | (out > 1)).any())


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

    def forward(self, x):
        return self.classifier(x)

    def training_step(self, batch, batch_idx):
        features, target = batch
        return self.loss_function(self(features), target)


def relu_logits_oracle(module) -> bool:
    """The logits cross_entropy reads come from a ReLU: no score can go below 0."""
    x = module.x[:32]
    out = module(x)
    return producer(out) == "relu" and bool((out >= 0).all())


class MultiLabelSoftmaxWhereBCE(TabularModule):
    """Multi-label tags, softmax over the tags, BCE written with torch.where on the targets."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*multilabel(n=220, labels=4, seed=58), batch_size=22, lr=1e-2)
        self.net = nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 4))
        self.buggy = buggy

    def forward(self, x):
        logits = self.net(x)
        return torch.softmax(logits, 1) if self.buggy else torch.sigmoid(logits)

    def training_step(self, batch, batch_idx):
        x, y = batch
        p = self(x).clamp(1e-6, 1 - 1e-6)
        return torch.where(y > 0.5, -torch.log(p), -torch.log(1 - p)).mean()


PROGRAMS: list[Program] = [
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
        name="multilabel_softmax_hand_bce",
        story="multi-label tags, softmax, BCE by hand with log(p + 1e-9), batch 10",
        build=MultiLabelSoftmaxHandBCE,
        rules=("activation-loss-mismatch", "output-activation-mismatch"),
        site=":softmax",
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
        name="manual_loop_relu_clamp01_bceloss",
        story="tutorial loop (manual optimisation): ReLU output clamped to [0, 1] into nn.BCELoss",
        build=ManualLoopReluClampBCELoss,
        rules=("output-activation-mismatch",),
        site="model.3",
        oracle=relu_probability_oracle,
        csv_logger=False,
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
        name="multilabel_softmax_where_bce",
        story="multi-label tags: softmax, clamp, BCE as torch.where(y > 0.5, -log p, -log(1 - p))",
        build=MultiLabelSoftmaxWhereBCE,
        rules=("activation-loss-mismatch", "output-activation-mismatch"),
        site=":softmax",
        oracle=softmax_multilabel_oracle,
    ),
]
