"""Regression heads whose activation cannot reach the targets: a softmax kept from a classifier
(squared error by hand, or clamped into `mse_loss`), a sigmoid on prices (L1 by hand), a ReLU on
standardised targets, a tanh on ratings 0-10, a recommender's sigmoid without its range.
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
    houses,
    producer,
    rows_sum_to_one,
    scores,
)


class KerasSoftmaxMSE(TabularModule):
    """A classification head kept for a regression of 3 standardised scores, MSE written by hand."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*scores(seed=7), batch_size=16, lr=1e-2)
        self.hidden = nn.Linear(6, 32)
        self.head = nn.Linear(32, 3)
        self.buggy = buggy

    def forward(self, x):
        out = self.head(F.relu(self.hidden(x)))
        return F.softmax(out, dim=-1).clamp(EPS, 1.0) if self.buggy else out

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self(x) - y) ** 2).mean()


class SoftmaxClampMSELoss(TabularModule):
    """Three proportions-that-are-not predicted with softmax, clamped, into F.mse_loss."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*scores(n=200, seed=17), batch_size=25, lr=1e-2)
        self.body = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
        self.buggy = buggy

    def forward(self, x):
        y = self.body(x)
        return torch.softmax(y, dim=1).clamp(1e-6, 1 - 1e-6) if self.buggy else y

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), y)


def softmax_regression_oracle(module) -> bool:
    """The prediction's rows sum to 1 (a softmax made them) while a tenth or more of the targets lie
    outside [0, 1], where no softmax output can reach."""
    x, _ = first_batch(module)
    out = module(x)
    outside = ((module.y < 0) | (module.y > 1)).float().mean()
    return producer(out) == "softmax" and rows_sum_to_one(out, tol=1e-3) and bool(outside > 0.1)


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

    def forward(self, x):
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x))))

    def training_step(self, batch, batch_idx):
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

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self(x), y)


def targets_out_of_range_oracle(module) -> bool:
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


class TanhHeadUnscaledTargets(TabularModule):
    """A tanh head copied from a [-1, 1] example, now on ratings of 0 to 10, F.smooth_l1_loss.
    The fix scales the targets into [-1, 1] (and back at prediction time)."""

    def __init__(self, buggy: bool) -> None:
        x, score = scores(n=200, outputs=1, seed=45)
        ratings = (score - score.min()) / (score.max() - score.min()) * 10
        super().__init__(x, ratings if buggy else ratings / 5 - 1, batch_size=40, lr=1e-2)
        self.model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1), nn.Tanh())

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.smooth_l1_loss(self(x), y)


def tanh_targets_oracle(module) -> bool:
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

    def forward(self, ids):
        dot = (self.user_factors(ids[:, 0]) * self.item_factors(ids[:, 1])).sum(1, keepdim=True)
        if self.y_range is None:
            return torch.sigmoid(dot)
        low, high = self.y_range
        return torch.sigmoid(dot) * (high - low) + low

    def training_step(self, batch, batch_idx):
        ids, ratings = batch
        return F.mse_loss(self(ids), ratings)


def ratings_range_oracle(module) -> bool:
    """A sigmoid makes the prediction, and over a tenth of the ratings lie outside the range the
    forward can reach (sigmoid's (0, 1), or the y_range it is stretched to)."""
    x, _ = first_batch(module)
    low, high = module.y_range or (0.0, 1.0)
    outside = (module.y < low) | (module.y > high)
    return producer(module(x)) == "sigmoid" and bool(outside.float().mean() > 0.1)


PROGRAMS: list[Program] = [
    Program(
        name="keras_softmax_mse_regression",
        story="softmax head (clipped) kept for 3 standardised regression targets, MSE written by hand",
        build=KerasSoftmaxMSE,
        rules=("output-activation-mismatch",),
        site=":softmax",
        oracle=softmax_regression_oracle,
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
]
