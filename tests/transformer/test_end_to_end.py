"""The transformer statistics together: no host sync inside steps and one copy per snapshot with
attention, log Z and a router measured; nn.TransformerEncoder's attention (nn.MultiheadAttention)
gets its logits; healthy transformers and MoE raise none of the four findings; and one Lightning
run with the default callback flags logit growth and logs the max logit."""

from __future__ import annotations

import csv
import glob

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tiny_models import (
    VOCAB,
    CountTransfers,
    HandRouterMoE,
    LMWithMoE,
    MoEClassifier,
    TinyLM,
    copy_batches,
    lm_loss,
    load_balancing_loss,
    moe_batches,
    train,
)

from act_diagnostics.core import ActivationMonitor
from act_diagnostics.rules import ActivationWarning, RuleEngine

NEW_RULES = {"attention-logit-growth", "output-logit-divergence", "activation-spike", "dead-experts"}


def _three_steps(mon: ActivationMonitor, model, x) -> None:
    """Three measured steps (the middle one in detail), backward only."""
    for i in range(3):
        mon.begin_step(detail=i == 1)
        lm_loss(model, x).backward()
        mon.end_step()


def test_no_host_sync_in_steps_and_one_copy_per_snapshot(monkeypatch) -> None:
    model = LMWithMoE()
    x = next(copy_batches())
    mon = ActivationMonitor(model, structure_steps=1).attach()
    counter = CountTransfers(monkeypatch)
    _three_steps(mon, model, x)
    during = counter.count
    snap = mon.snapshot()
    per_snapshot = counter.count - during
    monkeypatch.undo()
    mon.detach()
    # The model itself reads the router's choices on the host (nonzero): 2 reads per step at most.
    assert during <= 3 * len(model.moe.experts)
    assert 1 <= per_snapshot <= 2
    assert snap.stats["lm.blocks.0:attention"].max_logit is not None
    assert snap.log_z["cross_entropy"].rows == 16 * 16 * 3 and snap.routers["moe:router"].tokens == 16 * 16 * 3


def test_no_host_sync_in_steps_without_a_model_that_syncs(monkeypatch) -> None:
    model = TinyLM(layers=1)
    x = next(copy_batches())
    mon = ActivationMonitor(model, structure_steps=1).attach()
    counter = CountTransfers(monkeypatch)
    _three_steps(mon, model, x)
    during = counter.count
    mon.snapshot()
    monkeypatch.undo()
    mon.detach()
    assert during == 0


def test_transformer_encoder_attention_logits_match_its_projections() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    x = torch.randn(3, 6, 16) * 2
    with ActivationMonitor(layer) as mon:
        layer(x).pow(2).mean().backward()
        snap = mon.snapshot()
    attn = layer.self_attn
    with torch.no_grad():
        h = x  # norm_first=False: attention reads the input itself
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q = (h @ w[:16].T + b[:16]).reshape(3, 6, 4, 4).transpose(1, 2)
        k = (h @ w[16:32].T + b[16:32]).reshape(3, 6, 4, 4).transpose(1, 2)
        oracle = (q @ k.transpose(-2, -1) / 2.0).amax(dim=(0, 2, 3))
    (name,) = [n for n, s in snap.sites.items() if s.source == "attention"]
    assert torch.allclose(torch.tensor(snap.stats[name].max_logit_heads), oracle, atol=1e-4)


def test_healthy_transformer_and_moe_raise_none_of_the_new_findings() -> None:
    findings = train(TinyLM(), 60, 1e-3, RuleEngine(), log_every=2, detail_every=4)
    assert not [f for f in findings if f.rule in NEW_RULES]
    torch.manual_seed(0)
    model = MoEClassifier(HandRouterMoE(top_k=1))
    batches = ((x, y) for x, y in moe_batches())

    def loss(m, batch):
        x, y = batch
        return F.cross_entropy(m(x).reshape(-1, VOCAB), y.reshape(-1)) + 0.1 * load_balancing_loss(m.router_logits, 4, 1)

    findings = train(model, 60, 1e-2, RuleEngine(), loss_fn=loss, batches=batches, log_every=2, detail_every=4)
    assert not [f for f in findings if f.rule in NEW_RULES]


def test_lightning_run_with_the_default_callback(tmp_path) -> None:
    pl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.loggers import CSVLogger

    from act_diagnostics import ActivationDiagnostics

    class LitLM(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = TinyLM()

        def training_step(self, batch, batch_idx):
            return lm_loss(self.model, batch[0])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.03)

    data = next(copy_batches(batch=16 * 60))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=16)
    callback = ActivationDiagnostics()
    trainer = pl.Trainer(
        max_steps=60, log_every_n_steps=5, callbacks=[callback], logger=CSVLogger(str(tmp_path)),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    with pytest.warns(ActivationWarning, match="attention-logit-growth"):
        trainer.fit(LitLM(), loader)
    rules = {f.rule for f in callback.report.findings}
    assert "attention-logit-growth" in rules
    (metrics,) = glob.glob(str(tmp_path / "**" / "metrics.csv"), recursive=True)
    with open(metrics) as fh:
        header = next(csv.reader(fh))
    assert any(h.endswith("attention/max_logit") for h in header)
