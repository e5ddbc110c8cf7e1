"""Dead units decided with the evidence collected (issue: latency): an MLP on a digits-like dataset
(64 pixel features in 0..16, 10 classes, 1797 rows) at SGD lr 1.0 loses a quarter or more of a
layer's units within the first 30 steps; the callback flags it within a 60-step run logged every 10
steps (the former fixed pooling of 1000 samples over two windows flagged nothing in 60 steps). An
independent plain-torch count on the whole dataset is the oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pl = pytest.importorskip("pytorch_lightning")

from act_diagnostics import ActivationDiagnostics, OutputOptions, RuleOptions  # noqa: E402


def digits_like(seed: int = 0, n: int = 1797) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits stand-in: 8x8 images with integer intensities 0..16, one noisy
    prototype per class (learnable, not separable at a glance)."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(10, 64, generator=g) > 0.7).float() * 16
    y = torch.randint(0, 10, (n,), generator=g)
    x = (protos[y] + torch.randn(n, 64, generator=g) * 7).clamp(0, 16).round()
    return x / 12.0, y  # intensities scaled to [0, 1.33]


class DigitsMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


class DeadOracle(pl.Callback):
    """Plain torch, on the whole dataset after every step: the share of each ReLU layer's units
    that fire on no row (computed from the weights, not through the model's modules)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.dead: list[list[float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with torch.no_grad():
            h, shares = self.x, []
            linears = [m for m in pl_module.net if isinstance(m, nn.Linear)]
            for layer in linears[:-1]:
                z = h @ layer.weight.T + layer.bias
                shares.append(float(((z > 0).sum(0) == 0).float().mean()))
                h = z.clamp(min=0)
        self.dead.append(shares)


@pytest.mark.parametrize("seed", [4, 5])
def test_dead_units_at_lr_1_flagged_within_a_60_step_run(tmp_path, seed):
    torch.manual_seed(seed)
    x, y = digits_like()
    model = DigitsMLP()
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)
    diag, oracle = ActivationDiagnostics(verbose=False, rules=RuleOptions(warn=False), outputs=OutputOptions(report=False)), DeadOracle(x)
    trainer = pl.Trainer(
        max_steps=60, log_every_n_steps=10, logger=False, callbacks=[diag, oracle], enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, accelerator="cpu",
    )
    trainer.fit(model, loader)
    # The oracle: some layer has >= 25% of its units dead on every row, from step 30 to the end.
    layer = next(i for i in range(2) if all(d[i] >= 0.25 for d in oracle.dead[29:]))
    site = f"net.{2 * layer + 1}"
    findings = [f for f in diag.report.findings if f.rule == "dead-units" and f.site == site]
    assert findings, f"oracle: {[round(d[layer], 2) for d in oracle.dead[::10]]}; findings {diag.report.findings}"
    assert findings[0].step <= 59 and findings[0].severity in ("warning", "error")


class SmallTabular(pl.LightningModule):
    """A tabular MLP whose second layer's bias was set to -10: most of its units never fire."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
        with torch.no_grad():
            self.net[2].bias[:16] = -10.0

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_small_batches_of_a_small_dataset_reach_a_verdict():
    """300 rows in batches of 8, the callback's defaults (log every 50 steps): half of a layer's
    units never fire (oracle: plain torch on every row); the evidence collected decides."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 10, generator=g)
    y = (x[:, 0] > 0).long()
    model = SmallTabular()
    with torch.no_grad():
        z = torch.relu(model.net[0](x)) @ model.net[2].weight.T + model.net[2].bias
    assert float(((z > 0).sum(0) == 0).float().mean()) >= 0.5  # the oracle, at initialisation
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True, generator=g)
    diag = ActivationDiagnostics(verbose=False, rules=RuleOptions(warn=False), outputs=OutputOptions(report=False))
    trainer = pl.Trainer(
        max_epochs=2, logger=False, callbacks=[diag], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, accelerator="cpu",
    )
    trainer.fit(model, loader)
    found = [f for f in diag.report.findings if f.rule == "dead-units" and f.site == "net.3"]
    assert found and found[0].severity == "error" and found[0].evidence["born_dead"] >= 16
