"""missing-nonlinearity, input-scale and a non-finite loss with no activation site (classes 3 and 4
of issue 20): on hand-built whole-model facts, then end to end, with the monitor and with the
Lightning callback."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monitored_training import judged_training
from snapshot_builders import make_site, make_snapshot, relu_stats

from act_diagnostics.core import Snapshot
from act_diagnostics.core.network import NetworkFacts
from act_diagnostics.rules import RULE_IDS, RuleEngine
from act_diagnostics.rules.missing_nonlinearity import linear_chains


def only(*rule_ids: str) -> RuleEngine:
    return RuleEngine(disable=[r for r in RULE_IDS if r not in rule_ids])


def facts_snapshot(network: NetworkFacts, pairs: list | None = None) -> Snapshot:
    snap = make_snapshot(pairs or [])
    snap.network = network
    return snap


def links(*pairs: tuple[str, str, str, str], widths: dict | None = None) -> NetworkFacts:
    return NetworkFacts(layer_links=list(pairs), layer_widths=widths or {})


# ------------------------------------------------------------------ missing-nonlinearity
def test_chains_string_links_and_pass_through_batchnorm() -> None:
    net = links(("a", "Linear", "bn", "BatchNorm1d"), ("bn", "BatchNorm1d", "b", "Linear"), ("b", "Linear", "c", "Linear"))
    assert linear_chains(net) == [[("a", "Linear"), ("bn", "BatchNorm1d"), ("b", "Linear"), ("c", "Linear")]]
    assert linear_chains(links(("a", "Linear", "bn", "BatchNorm1d"))) == []  # one linear layer
    assert linear_chains(links(("a", "Linear", "ln", "LayerNorm"), ("ln", "LayerNorm", "b", "Linear"))) == []
    depthwise = links(("dw", "Conv2d", "pw", "Conv2d"), widths={"dw": (8, 8, True), "pw": (8, 16, False)})
    assert linear_chains(depthwise) == []  # a separable convolution


def test_missing_nonlinearity_severity() -> None:
    engine = only("missing-nonlinearity")
    (f,) = engine.evaluate(facts_snapshot(links(("fc1", "Linear", "fc2", "Linear"))), preflight=True)
    assert f.severity == "warning" and f.site == "fc1" and "linear model" in f.message and f.evidence["linear_layers"] == 2
    # Inside a model that has activations elsewhere: still a warning, without the "linear model" claim.
    site = make_site("act", "relu")
    (f,) = only("missing-nonlinearity").evaluate(facts_snapshot(links(("fc1", "Linear", "fc2", "Linear")), [(site, relu_stats([0.5] * 8))]))
    assert f.severity == "warning" and "linear model" not in f.message
    # A low-rank pair (LoRA-like, 64 -> 4 -> 64) is an info note.
    lora = links(("A", "Linear", "B", "Linear"), widths={"A": (64, 4, False), "B": (4, 64, False)})
    (f,) = only("missing-nonlinearity").evaluate(facts_snapshot(lora))
    assert f.severity == "info"
    assert only("missing-nonlinearity").evaluate(facts_snapshot(NetworkFacts())) == []


# ------------------------------------------------------------------ input-scale
def input_facts(mean: float, std: float, max_abs: float, first: str = "Linear", n: int = 1000) -> NetworkFacts:
    return NetworkFacts(
        first_layer="fc1", first_layer_type=first, input_elements=n, input_mean=mean, input_std=std,
        input_rms=(mean**2 + std**2) ** 0.5, input_max_abs=max_abs,
    )


@pytest.mark.parametrize(
    "facts, severity",
    [
        (input_facts(800.0, 500.0, 3000.0), "warning"),  # raw features in the thousands
        (input_facts(127.0, 70.0, 255.0), "warning"),  # pixels 0-255
        (input_facts(0.0, 1.0, 4.5), None),  # standardised
        (input_facts(0.45, 0.3, 1.0), None),  # images in [0, 1]
        (input_facts(0.0, 9.0, 40.0), None),  # just below the RMS threshold
        (input_facts(1e-4, 1e-4, 5e-3), "warning"),  # every value tiny
        (input_facts(800.0, 500.0, 3000.0, first="BatchNorm1d"), None),  # the model standardises itself
        (input_facts(800.0, 500.0, 3000.0, first="LlamaRMSNorm"), None),
        (input_facts(800.0, 500.0, 3000.0, n=10), None),  # too few values
        (input_facts(float("nan"), float("nan"), float("nan")), None),  # non-finite says it
    ],
)
def test_input_scale_thresholds(facts, severity) -> None:
    found = only("input-scale").evaluate(facts_snapshot(facts), preflight=True)
    assert [f.severity for f in found] == ([severity] if severity else [])
    if severity:
        assert found[0].site == "fc1" and "standardise" in found[0].recommendation.lower()


def test_input_scale_after_an_embedding_allows_scaled_embeddings() -> None:
    """Embeddings scaled by sqrt(d_model) (RMS ~23 for d = 512) are no fault; raw columns in the
    thousands concatenated to them are."""
    scaled = input_facts(0.0, 22.6, 90.0)
    scaled.after_embedding = True
    assert only("input-scale").evaluate(facts_snapshot(scaled)) == []
    raw = input_facts(300.0, 600.0, 5000.0)
    raw.after_embedding = True
    (f,) = only("input-scale").evaluate(facts_snapshot(raw))
    assert "over 100" in f.message


def test_input_scale_names_the_symptoms_it_explains() -> None:
    site = make_site("act", "tanh", family="tanh")
    stats = relu_stats([0.5] * 8, saturation=0.93)
    (f,) = only("input-scale").evaluate(facts_snapshot(input_facts(800.0, 500.0, 3000.0), [(site, stats)]))
    assert "saturation at 'act'" in f.message and "exploding-activations" in f.message


# ------------------------------------------------------------------ non-finite loss without sites
def test_non_finite_loss_reported_without_sites() -> None:
    net = NetworkFacts(losses=3, losses_nonfinite=2)
    (f,) = only("non-finite").evaluate(facts_snapshot(net))
    assert f.rule == "non-finite" and f.severity == "error" and f.site == "<loss>" and "no activation site" in f.message
    assert only("non-finite").evaluate(facts_snapshot(NetworkFacts(losses=3))) == []
    # With sites, they say it (their gradients, or a GradScaler giving up) and name where.
    site = make_site("act", "relu")
    stats = relu_stats([0.5] * 8)
    assert only("non-finite").evaluate(facts_snapshot(net, [(site, stats)])) == []
    stats.nonfinite = True
    (f,) = only("non-finite").evaluate(facts_snapshot(net, [(site, stats)]))
    assert f.site == "act"


def test_every_rule_runs_on_a_snapshot_without_sites() -> None:
    snap = facts_snapshot(NetworkFacts())
    engine = RuleEngine()
    assert engine.evaluate(snap, preflight=True) == [] and engine.evaluate(snap) == []
    assert not engine._broken  # no rule failed on zero sites


# ------------------------------------------------------------------ end to end
def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, steps: int = 6, lr: float = 0.01) -> list[tuple[str, str]]:
    found = judged_training(model, loss_fn, x, y, RuleEngine(), steps, lr)
    return sorted({(f.rule, f.severity) for f in found if f.severity != "info"})


def _data(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, :1] * 2 + x[:, 1:2]) * 10
    return x * scale, y


def test_linear_stack_on_raw_features_end_to_end() -> None:
    """Raw features in the thousands into three Linear layers: the loss turns NaN by step 3."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 16), nn.Linear(16, 1))
    found = _run(model, *_data(1000.0), F.mse_loss)
    assert found == [("input-scale", "warning"), ("missing-nonlinearity", "warning"), ("non-finite", "error")]
    torch.manual_seed(0)
    fixed = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    assert _run(fixed, *_data(1.0), F.mse_loss) == []


def test_raw_features_into_a_tanh_net_end_to_end() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    assert ("input-scale", "warning") in _run(model, *_data(1000.0), F.mse_loss, lr=1e-6)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    assert _run(model, *_data(1.0), F.mse_loss, lr=1e-3) == []


def test_callback_reports_a_nan_loss_of_a_model_without_sites(tmp_path) -> None:
    """The Lightning callback counts the loss of every measured step (on_before_backward): a NaN at
    step 3, after the tracer stopped following, is still a non-finite finding."""
    pl = pytest.importorskip("pytorch_lightning")
    from act_diagnostics import ActivationDiagnostics, RuleOptions

    class Linear(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            out = self.net(x)
            return F.mse_loss(out, y) * (float("nan") if self.global_step >= 3 else 1.0)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    x, y = _data(1.0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    cb = ActivationDiagnostics(log_every_n_steps=1, rules=RuleOptions(warn=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            max_steps=5, callbacks=[cb], default_root_dir=str(tmp_path), enable_progress_bar=False,
            enable_model_summary=False, logger=False, enable_checkpointing=False,
        )
        trainer.fit(Linear(), loader)
    rules = {(f.rule, f.site) for f in cb.report.findings}
    assert ("non-finite", "<loss>") in rules and ("missing-nonlinearity", "net.0") in rules
    (nan,) = [f for f in cb.report.findings if f.rule == "non-finite"]
    assert nan.step >= 3
