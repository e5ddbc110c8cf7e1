"""activation-loss-mismatch and output-activation-mismatch on hand-built sites whose losses were
reached through clamps, logs, normalisation, or written by hand (classes 1 and 2 of issue 20);
then end to end, through the monitor's following."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monitored_training import judged_training
from snapshot_builders import make_site, make_snapshot, relu_stats

from act_diagnostics.core import SiteStats
from act_diagnostics.rules import RULE_IDS, RuleEngine
from act_diagnostics.rules.activation_loss import describe, effective_loss


def only(*rule_ids: str) -> RuleEngine:
    return RuleEngine(disable=[r for r in RULE_IDS if r not in rule_ids])


def judge(kind: str, losses: list[str], n_units: int = 3, stats: SiteStats | None = None, **kw) -> list[tuple[str, str]]:
    site = make_site("head", kind, n_units=n_units, consumers={"output", *(f"loss:{loss}" for loss in losses)}, **kw)
    found = only("activation-loss-mismatch", "output-activation-mismatch").evaluate(
        make_snapshot([(site, stats or relu_stats([0.5] * n_units))]), preflight=True
    )
    return sorted((f.rule, f.severity) for f in found)


def test_effective_loss_and_description() -> None:
    assert effective_loss("cross_entropy(clamp)") == "cross_entropy"
    assert effective_loss("nll_loss(clamp,log)") == "nll_loss(log)"
    assert effective_loss("nll_loss(normalised,log)") == "nll_loss(log)"
    assert effective_loss("cross_entropy(scale)") is None
    assert effective_loss("handwritten_cross_entropy(clamp)") == "handwritten_cross_entropy"
    assert describe("nll_loss(clamp,log)") == "nll_loss after a clamp and a log"
    assert describe("handwritten_bce") == "a hand-written bce"


@pytest.mark.parametrize(
    "kind, losses, n_units, expected",
    [
        # class 1: the same pairings through a clamp, an epsilon and a normalisation
        ("softmax", ["cross_entropy(clamp)"], 3, [("activation-loss-mismatch", "error")]),
        ("softmax", ["nll_loss(clamp)"], 3, [("activation-loss-mismatch", "error")]),
        ("softmax", ["nll_loss(clamp,log)"], 3, [("activation-loss-mismatch", "info")]),
        ("softmax", ["nll_loss(normalised,clamp,log)"], 3, [("activation-loss-mismatch", "info")]),
        ("sigmoid", ["binary_cross_entropy_with_logits(clamp)"], 1, [("activation-loss-mismatch", "error")]),
        ("softmax", ["cross_entropy(scale)"], 3, []),  # range unknown: not judged
        ("softmax", ["binary_cross_entropy(clamp)"], 1, [("output-activation-mismatch", "error")]),  # one unit
        ("softmax", ["handwritten_bce(clamp)"], 1, [("output-activation-mismatch", "error")]),
        ("softmax", ["handwritten_bce"], 4, [("activation-loss-mismatch", "warning")]),  # softmax + BCE by hand
        ("sigmoid", ["cross_entropy(clamp)"], 3, [("output-activation-mismatch", "error")]),
        ("sigmoid", ["nll_loss(clamp,log)"], 10, [("output-activation-mismatch", "error")]),
        ("sigmoid", ["handwritten_cross_entropy"], 3, [("output-activation-mismatch", "error")]),
        ("sigmoid", ["handwritten_cross_entropy(normalised)"], 3, []),  # a normalised sigmoid is a distribution
        ("log_softmax", ["handwritten_cross_entropy"], 3, [("activation-loss-mismatch", "error")]),  # log of log-probs
        # sound pairings stay quiet (at most the existing stability note)
        ("softmax", ["handwritten_cross_entropy(clamp)"], 3, []),
        ("sigmoid", ["handwritten_bce(clamp)"], 1, []),
        ("sigmoid", ["binary_cross_entropy(clamp)"], 1, [("activation-loss-mismatch", "info")]),
        ("softmax", ["handwritten_mse"], 3, []),  # no target evidence: nothing to say
        # class 2: a ReLU fed to a probability loss, whatever came between
        ("relu", ["binary_cross_entropy(clamp)"], 1, [("output-activation-mismatch", "error")]),
        ("relu", ["handwritten_bce"], 1, [("output-activation-mismatch", "error")]),
        ("relu", ["handwritten_cross_entropy(normalised)"], 3, [("output-activation-mismatch", "error")]),
        ("relu", ["nll_loss(log)"], 3, [("output-activation-mismatch", "error")]),
        ("relu", ["mse_loss"], 1, []),  # a non-negative regression head is fine
        ("tanh", ["handwritten_bce(clamp)"], 1, [("output-activation-mismatch", "error")]),
    ],
)
def test_pairings(kind, losses, n_units, expected) -> None:
    assert judge(kind, losses, n_units) == expected


@pytest.mark.parametrize(
    "loss, share, expected",
    [
        ("mse_loss", 0.5, [("output-activation-mismatch", "error")]),
        ("handwritten_mse(clamp)", 0.05, [("output-activation-mismatch", "warning")]),
        ("handwritten_cross_entropy", 0.5, [("output-activation-mismatch", "error")]),
        ("l1_loss", 0.01, []),  # at the threshold: a stray row is tolerated
        ("mse_loss", 0.0, []),
        ("binary_cross_entropy", 0.5, [("activation-loss-mismatch", "warning")]),  # said once, by activation-loss
        ("binary_cross_entropy", 0.0, [("activation-loss-mismatch", "info")]),  # one-hot rows: a softmax fits them
        ("binary_cross_entropy", None, [("activation-loss-mismatch", "warning")]),  # no evidence on the targets
    ],
)
def test_softmax_over_multi_label_targets_whatever_the_loss(loss, share, expected) -> None:
    stats = relu_stats([0.5] * 4, target_rows_off=share)
    assert judge("softmax", [loss], 4, stats) == expected


def test_one_hot_evidence_is_remembered_across_windows_and_checkpoints() -> None:
    site = make_site("head", "softmax", n_units=2, consumers={"output", "loss:binary_cross_entropy(clamp)"})
    engine = only("activation-loss-mismatch")
    (first,) = engine.evaluate(make_snapshot([(site, relu_stats([0.5] * 2, target_rows_off=0.0))], step=0), preflight=True)
    assert first.severity == "info"
    restored = only("activation-loss-mismatch")
    restored.load_state_dict(engine.state_dict())
    later = make_snapshot([(site, relu_stats([0.5] * 2))], step=50)  # no targets read in this window
    assert restored.evaluate(later) == []  # still an info note, already reported: nothing new


def test_multi_label_finding_says_why() -> None:
    site = make_site("head", "softmax", n_units=4, consumers={"output", "loss:mse_loss"})
    (f,) = only("output-activation-mismatch").evaluate(
        make_snapshot([(site, relu_stats([0.5] * 4, target_rows_off=0.25))]), preflight=True
    )
    assert "25% of the target rows" in f.message and "BCEWithLogitsLoss" in f.recommendation
    assert f.evidence["target_rows_off"] == 0.25 and f.evidence["loss"] == "mse_loss"


# ------------------------------------------------------------------ end to end (monitor + engine)
def _findings(model: nn.Module, loss_of, x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> list[tuple[str, str, str]]:
    engine = only("activation-loss-mismatch", "output-activation-mismatch")
    found = judged_training(model, loss_of, x, y, engine, steps, lr=0.05)
    return sorted((f.rule, f.site, f.severity) for f in found if f.severity != "info")


def _mlp(out: int, act: nn.Module | None) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, out)]
    return nn.Sequential(*layers, *([act] if act is not None else []))


X = torch.randn(32, 4)
LABELS = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
ONE_HOT = F.one_hot(LABELS, 3).float()
MULTI = torch.stack([(X[:, 0] > 0), (X[:, 1] > 0), (X[:, 2] > 0)], 1).float()
BINARY = (X[:, :1] > 0).float()


@pytest.mark.parametrize(
    "buggy, fixed, y, expected",
    [
        # Keras port: sigmoid + categorical cross-entropy by hand / the fix: softmax
        (
            (_mlp(3, nn.Sigmoid()), lambda p, y: -(y * p.clamp(1e-7, 1 - 1e-7).log()).sum(1).mean()),
            (_mlp(3, nn.Softmax(dim=1)), lambda p, y: -(y * p.clamp(1e-7, 1 - 1e-7).log()).sum(1).mean()),
            ONE_HOT,
            ("output-activation-mismatch", "3", "error"),
        ),
        # softmax over multi-label tags into MSE / the fix: sigmoid per tag with BCE by hand
        (
            (_mlp(3, nn.Softmax(dim=1)), lambda p, y: F.mse_loss(p, y)),
            (_mlp(3, nn.Sigmoid()), lambda p, y: -(y * torch.log(p + 1e-7) + (1 - y) * torch.log(1 - p + 1e-7)).mean()),
            MULTI,
            ("output-activation-mismatch", "3", "error"),
        ),
        # ReLU output clamped into BCE / the fix: sigmoid
        (
            (_mlp(1, nn.ReLU()), lambda p, y: F.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), y)),
            (_mlp(1, nn.Sigmoid()), lambda p, y: F.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), y)),
            BINARY,
            ("output-activation-mismatch", "3", "error"),
        ),
        # softmax clamped into cross_entropy / the fix: logits
        (
            (_mlp(3, nn.Softmax(dim=1)), lambda p, y: F.cross_entropy(p.clamp(1e-7, 1.0), y)),
            (_mlp(3, None), lambda p, y: F.cross_entropy(p, y)),
            LABELS,
            ("activation-loss-mismatch", "3", "error"),
        ),
    ],
    ids=["sigmoid_handwritten_cce", "softmax_multilabel_mse", "relu_clamped_bce", "softmax_clamped_ce"],
)
def test_buggy_flagged_fixed_clean(buggy, fixed, y, expected) -> None:
    assert _findings(*buggy, X, y) == [expected]
    assert _findings(*fixed, X, y) == []


# ------------------------------------------------------------------ cross-entropy written with indexing
N = len(X)


def _nll_by_index(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -torch.log(p[range(N), y] + 1e-7).mean()


class _OneStep(nn.Module):
    """A head that returns (N, 1, C) scores: one time step of a sequence model."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).unsqueeze(1)


@pytest.mark.parametrize(
    "model, loss_of, expected",
    [
        # sigmoids do not compete: -log p[y] is minimised by predicting 1 everywhere
        (_mlp(3, nn.Sigmoid()), _nll_by_index, [("output-activation-mismatch", "3", "error")]),
        (_mlp(3, nn.Sigmoid()), lambda p, y: -torch.log(p)[torch.arange(N), y].sum() / N, [("output-activation-mismatch", "3", "error")]),
        # softmax in the loss over the size-1 time dim: every probability is 1.0, the loss is 0
        (
            _OneStep(),
            lambda z, y: -torch.log(torch.softmax(z, dim=1).squeeze(1)[range(N), y]).mean(),
            [("output-activation-mismatch", ":softmax", "error")],
        ),
        # a log of log-probabilities: NaN
        (_mlp(3, nn.LogSoftmax(dim=1)), lambda lp, y: -torch.log(lp)[range(N), y].mean(), [("activation-loss-mismatch", "3", "error")]),
        # the fixes: softmax over the classes, or log_softmax picked without a log
        (_mlp(3, nn.Softmax(dim=1)), _nll_by_index, []),
        (_mlp(3, nn.Softmax(dim=1)), lambda p, y: -(p.clamp(1e-7, 1.0)[torch.arange(N), y]).log().mean(), []),
        (_OneStep(), lambda z, y: -torch.log(torch.softmax(z, dim=-1).squeeze(1)[range(N), y]).mean(), []),
        (_mlp(3, nn.LogSoftmax(dim=1)), lambda lp, y: -lp[range(N), y].mean(), []),
    ],
    ids=["sigmoid", "sigmoid_log_first", "softmax_one_unit", "log_of_log_softmax", "softmax", "softmax_clamped", "softmax_classes", "log_softmax"],
)
def test_cross_entropy_by_indexing_judged_by_the_activation(model, loss_of, expected) -> None:
    assert _findings(model, loss_of, X, LABELS) == expected


@pytest.mark.parametrize(
    "loss_of",
    [
        _nll_by_index,
        lambda p, y: -torch.log(p.gather(1, y[:, None]) + 1e-7).mean(),
        lambda p, y: -torch.log(p.clamp(1e-7, 1.0)[torch.arange(N), y]).sum() / N,
    ],
    ids=["index", "gather", "clamped_index"],
)
def test_softmax_over_the_batch_into_a_handwritten_cross_entropy(loss_of) -> None:
    # Softmax(dim=0) normalises each class over the 32 rows: the loss picks classes on dim 1.
    assert _findings(_mlp(3, nn.Softmax(dim=0)), loss_of, X, LABELS) == [("activation-loss-mismatch", "3", "error")]
    engine = only("activation-loss-mismatch")
    (f,) = [f for f in judged_training(_mlp(3, nn.Softmax(dim=0)), loss_of, X, LABELS, engine, 1, lr=0.05) if f.severity == "error"]
    assert "runs over dim 0 (size 32), not over the 3 classes on dim 1" in f.message and f.evidence["softmax_dim"] == 0
    assert _findings(_mlp(3, nn.Softmax(dim=1)), loss_of, X, LABELS) == []
