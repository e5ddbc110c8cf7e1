"""A small CNN on synthetic images, watched by ActivationDiagnostics (pytorch_lightning flavour).

The images are 1x16x16 noise with one of four patterns (horizontal stripes, vertical stripes, a
bright square, a diagonal): no download. The CNN uses ReLU modules after convolutions (units are
channels) and a functional ``F.silu`` in its head, which act_diagnostics finds without any module.

    python examples/cnn_synthetic_images.py            # 120 steps, well under a minute on CPU
    python examples/cnn_synthetic_images.py --fast     # a smoke run
    tensorboard --logdir act_logs
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common
import pytorch_lightning as pl

from act_diagnostics import ActivationDiagnostics

SIZE, CLASSES = 16, 4


def synthetic_images(n: int = 1024, seed: int = 0) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = torch.randn(n, 1, SIZE, SIZE, generator=g)
    idx = torch.arange(SIZE)
    patterns = torch.stack(
        [
            ((idx[:, None] // 2) % 2).float().expand(SIZE, SIZE),  # horizontal stripes
            ((idx[None, :] // 2) % 2).float().expand(SIZE, SIZE),  # vertical stripes
            ((idx[:, None] - 8).abs().le(3) & (idx[None, :] - 8).abs().le(3)).float(),  # square
            ((idx[:, None] - idx[None, :]).abs() <= 2).float(),  # diagonal
        ]
    )
    x += patterns[y][:, None]
    return torch.utils.data.TensorDataset(x, y)


class SmallCNN(pl.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(16 * 4 * 4, 32)
        self.head = nn.Linear(32, CLASSES)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).flatten(1)
        return self.head(F.silu(self.fc(h)))  # a functional activation

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def main(argv: Sequence[str] | None = None) -> ActivationDiagnostics:
    args = _common.parse_args(__doc__.splitlines()[0], argv, default_steps=120)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(synthetic_images(), batch_size=32, shuffle=True)
    callback = ActivationDiagnostics(log_every_n_steps=10, verbose=not args.fast)
    trainer = _common.trainer("pytorch_lightning", args.logdir, "cnn_synthetic_images", args.max_steps, [callback])
    _common.fit(trainer, SmallCNN(), loader)
    _common.print_findings("cnn_synthetic_images", callback)
    return callback


if __name__ == "__main__":
    main()
