"""Raw features in the thousands into sigmoid or tanh networks (module layers, a manual loop,
`x @ W` by hand, raw columns beside an embedding); the fixes standardise, or put BatchNorm1d first.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from corpus_kit import (
    Program,
    TabularModule,
    first_layer_input,
    houses,
    standardised,
    tumours,
)


class RawTumourSigmoidNet(TabularModule):
    """Tumour table straight from the CSV (areas in the thousands) into a sigmoid MLP."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(seed=23, standardise=not buggy), batch_size=32, lr=1e-2)
        self.hidden = nn.Linear(8, 16)
        self.sigmoid = nn.Sigmoid()
        self.output = nn.Linear(16, 1)

    def forward(self, x):
        return self.output(self.sigmoid(self.hidden(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y)


class RawHousesTanhRegression(TabularModule):
    """House prices, raw square feet and years into a tanh MLP, batch 64."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*houses(seed=24, standardise=not buggy), batch_size=64, lr=1e-2)
        self.model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)


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

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        inputs, labels = batch
        optimizer.zero_grad()
        outputs = self(inputs)
        loss = self.criterion(outputs, labels)
        self.manual_backward(loss)
        optimizer.step()
        return loss


class ScratchSigmoidNetRaw(TabularModule):
    """A two-layer net "from scratch" (nn.Parameter weights, `x @ W + b`, torch.sigmoid) on the raw tumour table."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*tumours(seed=49, standardise=not buggy), batch_size=32, lr=1e-2)
        self.W1 = nn.Parameter(torch.randn(8, 16) * 0.3)
        self.b1 = nn.Parameter(torch.zeros(16))
        self.W2 = nn.Parameter(torch.randn(16, 1) * 0.3)
        self.b2 = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        hidden = torch.sigmoid(x @ self.W1 + self.b1)
        return hidden @ self.W2 + self.b2

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y)


class EmbeddingPlusRawNumeric(TabularModule):
    """A tabular model: a categorical column through nn.Embedding, concatenated with raw numeric
    columns (areas in the thousands) into a tanh MLP. Fixed: the numeric columns standardised."""

    def __init__(self, buggy: bool) -> None:
        x, y = tumours(n=320, seed=51, standardise=not buggy)
        category = (torch.arange(320) * 7) % 5
        super().__init__(torch.cat([category.unsqueeze(1).float(), x], 1), y, batch_size=32, lr=1e-2)
        self.embedding = nn.Embedding(5, 4)
        self.mlp = nn.Sequential(nn.Linear(4 + 8, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x):
        category, numeric = x[:, 0].long(), x[:, 1:]
        return self.mlp(torch.cat([self.embedding(category), numeric], dim=1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y)


class BatchNormFirstRaw(TabularModule):
    """Raw house features into a tanh regression MLP. The fix (instead of a StandardScaler) puts
    nn.BatchNorm1d first, which standardises each column inside the model."""

    def __init__(self, buggy: bool) -> None:
        super().__init__(*houses(seed=52), batch_size=32, lr=1e-2)
        layers = [nn.Linear(4, 24), nn.Tanh(), nn.Linear(24, 1)]
        self.regressor = nn.Sequential(*layers) if buggy else nn.Sequential(nn.BatchNorm1d(4), *layers)

    def forward(self, x):
        return self.regressor(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), y)


def raw_scale_oracle(module) -> bool:
    """Some column of what the first layer receives (over the whole data set) has a standard
    deviation in the thousands: nothing scaled the raw features on the way in."""
    received = first_layer_input(module(module.x))
    return bool(received.std(0).max() > 1000)


PROGRAMS: list[Program] = [
    Program(
        name="raw_tumour_features_sigmoid_net",
        story="tumour table in raw units (areas in the thousands) into a sigmoid MLP",
        build=RawTumourSigmoidNet,
        rules=("input-scale",),
        site="hidden",
        oracle=raw_scale_oracle,
    ),
    Program(
        name="raw_house_features_tanh_regression",
        story="raw square feet and years into a tanh MLP regression, batch 64",
        build=RawHousesTanhRegression,
        rules=("input-scale",),
        site="model.0",
        oracle=raw_scale_oracle,
    ),
    Program(
        name="manual_loop_raw_income_tanh",
        story="tutorial loop in training_step (manual optimisation), raw incomes into a tanh MLP",
        build=ManualLoopRawIncomeTanh,
        rules=("input-scale",),
        site="fc1",
        oracle=raw_scale_oracle,
        csv_logger=False,
    ),
    Program(
        name="scratch_sigmoid_net_raw_features",
        story="from-scratch x @ W + b net with torch.sigmoid on the raw tumour table",
        build=ScratchSigmoidNetRaw,
        rules=("input-scale",),
        oracle=raw_scale_oracle,
    ),
    Program(
        name="embedding_plus_raw_numeric",
        story="nn.Embedding of a category concatenated with raw numeric columns into a tanh MLP",
        build=EmbeddingPlusRawNumeric,
        rules=("input-scale",),
        site="mlp.0",
        oracle=raw_scale_oracle,
    ),
    Program(
        name="batchnorm_first_raw_features",
        story="raw house features into a tanh MLP; fixed by nn.BatchNorm1d as the first layer",
        build=BatchNormFirstRaw,
        rules=("input-scale",),
        site="regressor.0",
        oracle=raw_scale_oracle,
    ),
]
