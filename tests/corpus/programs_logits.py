"""A loss fed probabilities where it expects logits or log-probabilities: a sigmoid into
`BCEWithLogitsLoss` (through a clamp, inside a forum focal loss), which then squeezes every
prediction into (0.5, 0.731); a softmax into `F.kl_div` in a distillation loop.
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
    producer,
    rows_sum_to_one,
    tumours,
)


class SigmoidIntoBCEWithLogits(TabularModule):
    """Sequential ending in nn.Sigmoid, criterion nn.BCEWithLogitsLoss (batch 8)."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(standardise=True, seed=14), batch_size=8, lr=1e-2)
        layers = [nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)]
        self.model = nn.Sequential(*layers, nn.Sigmoid()) if buggy else nn.Sequential(*layers)
        self.criterion = nn.BCEWithLogitsLoss()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self(x), y)


class SigmoidClampBCEWithLogits(TabularModule):
    """torch.sigmoid then a clamp, into F.binary_cross_entropy_with_logits (batch 4)."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(n=160, standardise=True, seed=15), batch_size=4, lr=1e-2)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 1)
        self.buggy = buggy

    def forward(self, x):
        z = self.fc2(F.relu(self.fc1(x)))
        return torch.sigmoid(z).clamp(1e-6, 1 - 1e-6) if self.buggy else z

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y)


def sigmoid_into_logits_loss_oracle(module) -> bool:
    """The "logits" BCEWithLogits reads lie in (0, 1) (a sigmoid made them): its own sigmoid maps
    them into (0.5, 0.731), so no prediction can say "class 0"."""
    x, _ = first_batch(module)
    out = module(x)
    return producer(out) == "sigmoid" and bool(((out > 0) & (out < 1)).all())


class FocalLoss(nn.Module):
    """The focal loss as posted on forums: it takes logits."""

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, inputs, targets):
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

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self(x), y)


class DistillationKL(TabularModule):
    """Knowledge distillation from a frozen teacher: F.kl_div(student, teacher probabilities).
    Buggy: the student's softmax goes in. Fixed: its log_softmax (the teacher's softmax, the
    target, was right in both)."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*blobs(n=240, d=6, classes=4, seed=54), batch_size=32, lr=1e-2)
        self.teacher = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 4)).requires_grad_(False)
        self.student = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
        self.temperature = 2.0
        self.buggy = buggy

    def forward(self, x):
        scaled = self.student(x) / self.temperature
        return F.softmax(scaled, dim=1) if self.buggy else F.log_softmax(scaled, dim=1)

    def training_step(self, batch, batch_idx):
        x, _ = batch
        with torch.no_grad():
            soft_targets = F.softmax(self.teacher(x) / self.temperature, dim=1)
        return F.kl_div(self(x), soft_targets, reduction="batchmean") * self.temperature**2


def kl_input_probabilities_oracle(module) -> bool:
    """kl_div reads its input as log-probabilities (values <= 0 whose exp sums to 1 per row); here
    it gets probabilities a softmax made (rows summing to 1 themselves)."""
    x, _ = first_batch(module)
    out = module(x)
    return producer(out) == "softmax" and rows_sum_to_one(out, tol=1e-4)


PROGRAMS: list[Program] = [
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
        name="sigmoid_into_focal_loss",
        story="nn.Sigmoid ending the model, into a forum focal loss built on BCE-with-logits",
        build=SigmoidIntoFocalLoss,
        rules=("activation-loss-mismatch",),
        site="net.3",
        oracle=sigmoid_into_logits_loss_oracle,
    ),
    Program(
        name="distillation_kl_div_softmax",
        story="distillation: F.kl_div on the student's softmax; fixed: its log_softmax",
        build=DistillationKL,
        rules=("activation-loss-mismatch",),
        site=":softmax",
        oracle=kl_input_probabilities_oracle,
    ),
]
