"""A deep sigmoid MLP before and after following act_diagnostics' advice.

*Before*: 8 hidden ``nn.Sigmoid`` layers with PyTorch's default init. act_diagnostics warns that
sigmoid is used in hidden layers of a deep stack (``saturating-hidden-activation``) and that the
gradient reaching the first layers is orders of magnitude smaller than at the last
(``vanishing-gradient``), and recommends ReLU/GELU/SiLU with Kaiming init.

*After*: the same net with the recommended fix (``nn.GELU`` and Kaiming-normal init), the same data,
optimizer and steps. It trains to a lower loss and the warnings are gone.

    python examples/sigmoid_mlp_before_after.py            # 2 x 150 steps, well under a minute on CPU
    python examples/sigmoid_mlp_before_after.py --fast     # a smoke run
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

IN_FEATURES, CLASSES, WIDTH, DEPTH = 32, 4, 64, 8


def synthetic_classification(n: int = 4096, seed: int = 0) -> torch.utils.data.TensorDataset:
    """Four classes from a fixed random non-linear teacher."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_FEATURES, generator=g)
    teacher = torch.randn(IN_FEATURES, CLASSES, generator=g)
    y = (torch.tanh(x @ teacher) + 0.1 * torch.randn(n, CLASSES, generator=g)).argmax(1)
    return torch.utils.data.TensorDataset(x, y)


def mlp(activation: type[nn.Module], kaiming: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    fan_in = IN_FEATURES
    for _ in range(DEPTH):
        linear = nn.Linear(fan_in, WIDTH)
        if kaiming:  # the init that matches a ReLU-like activation
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            nn.init.zeros_(linear.bias)
        layers += [linear, activation()]
        fan_in = WIDTH
    layers.append(nn.Linear(fan_in, CLASSES))
    return nn.Sequential(*layers)


# The final loss compared is the mean of this many last steps (all of them in a shorter run).
LOSS_TAIL = 20


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module, lr: float = 0.05) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.losses.append(float(loss.detach()))
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def run(name: str, net: nn.Module, args) -> tuple[ActivationDiagnostics, float, int]:
    torch.manual_seed(1)
    loader = torch.utils.data.DataLoader(synthetic_classification(), batch_size=64, shuffle=True)
    callback = ActivationDiagnostics(log_every_n_steps=10, verbose=False)
    module = Classifier(net)
    _common.fit(_common.trainer("pytorch_lightning", args.logdir, name, args.max_steps, [callback]), module, loader)
    loss, steps = _common.tail_mean(module.losses, LOSS_TAIL)
    _common.print_findings(name, callback)
    return callback, loss, steps


def main(argv: Sequence[str] | None = None) -> dict[str, tuple[ActivationDiagnostics, float, int]]:
    args = _common.parse_args(__doc__.splitlines()[0], argv, default_steps=150)
    torch.manual_seed(0)
    results = {
        "sigmoid_before": run("sigmoid_before", mlp(nn.Sigmoid, kaiming=False), args),
        "gelu_after": run("gelu_after", mlp(nn.GELU, kaiming=True), args),
    }
    (_, before, steps), (_, after, _) = results["sigmoid_before"], results["gelu_after"]
    print(f"\nfinal training loss (mean of the last {steps} steps): before {before:.3f}, after {after:.3f}")
    return results


if __name__ == "__main__":
    main()
