"""Following an output activation through clamps, epsilons, logs, normalisation and hand-written
losses to what consumes it (core/following.py): the facts recorded on the Site and the state."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from act_diagnostics.core import ActivationMonitor
from act_diagnostics.core.following import (
    Flow,
    loss_parts,
    target_class_dim,
    term_kind,
    via_steps,
)


def _consumers(head: nn.Module, loss_of, x: torch.Tensor, y: torch.Tensor, steps: int = 1) -> tuple:
    """Train ``steps`` structure steps; return the one site, its state and the snapshot."""
    torch.manual_seed(0)
    mon = ActivationMonitor(head).attach()
    for _ in range(steps):
        mon.begin_step()
        loss_of(head(x), y).backward()
        mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    (site,) = mon.sites.values()
    return site, snap.stats[site.name], snap


def _head(out: int, act: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, out), act)


def _times_itself(e: torch.Tensor) -> torch.Tensor:
    return e * e  # a squared error written as a product


X = torch.randn(6, 5)
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])
ONE_HOT = F.one_hot(LABELS, 3).float()
BINARY = torch.tensor([[0.0], [1.0], [1.0], [0.0], [1.0], [0.0]])


# ------------------------------------------------------------------ pure helpers
def test_flow_steps_compose() -> None:
    flow = Flow("s").then("clamp").then("clamp").then("log")
    assert flow.steps == ("clamp", "log") and flow.via == "clamp,log" and flow.structural
    assert flow.then("log").steps == ("clamp", "scale")  # a log of log-probabilities: range unknown
    assert not flow.then("target").structural
    assert via_steps("clamp,log") == ("clamp", "log") and via_steps("") == ()
    assert loss_parts("nll_loss(clamp,log)") == ("nll_loss", ("clamp", "log"))
    assert loss_parts("cross_entropy") == ("cross_entropy", ())


@pytest.mark.parametrize(
    "steps, kind",
    [
        (("clamp", "log", "target"), "handwritten_cross_entropy"),
        (("complement", "log", "target"), "handwritten_bce"),
        (("log", "bce"), "handwritten_bce"),
        (("error", "square"), "handwritten_mse"),
        (("clamp", "error", "abs"), "handwritten_l1"),
        (("target", "log"), None),  # log of y * p: no log-likelihood
        (("error",), None),  # a mean difference is no loss
        (("reduced",), None),
    ],
)
def test_term_kind(steps, kind) -> None:
    assert term_kind(steps) == kind


def test_target_class_dim_reads_dense_targets_only() -> None:
    p = torch.rand(4, 3)
    assert target_class_dim(p, torch.rand(4, 3), 1, 3, False) == 1
    assert target_class_dim(p, torch.tensor([0, 1, 2, 0]), 1, 3, False) is None  # class indices
    assert target_class_dim(p[:, 1], torch.rand(4), 1, 3, False) is None  # one class per row
    assert target_class_dim(p.t(), torch.rand(3, 4), 1, 3, True) is None  # reordered, classes not last
    assert target_class_dim(torch.rand(2, 5, 3), torch.rand(2, 5, 3), 2, 3, False) == 2


# ------------------------------------------------------------------ class 1: through ordinary ops
@pytest.mark.parametrize(
    "loss_of, consumer",
    [
        (lambda p, y: F.cross_entropy(p.clamp(1e-7, 1 - 1e-7), y), "loss:cross_entropy(clamp)"),
        (lambda p, y: F.cross_entropy(torch.clip(p, 0.0, 1.0), y), "loss:cross_entropy(clamp)"),
        (lambda p, y: F.nll_loss(torch.log(p + 1e-8), y), "loss:nll_loss(clamp,log)"),
        (lambda p, y: F.nll_loss((p / p.sum(1, keepdim=True)).log(), y), "loss:nll_loss(normalised,log)"),
        (lambda p, y: F.nll_loss(torch.log(p / (p.sum(1, keepdim=True) + 1e-8)), y), "loss:nll_loss(normalised,log)"),
        (lambda p, y: F.nll_loss(F.normalize(p, p=1, dim=1).log(), y), "loss:nll_loss(normalised,log)"),
        (lambda p, y: F.cross_entropy(3.0 * p, y), "loss:cross_entropy(scale)"),
        (lambda p, y: F.cross_entropy(p ** 2, y), "loss:cross_entropy(scale)"),
        (lambda p, y: F.cross_entropy(p + 0.5, y), "loss:cross_entropy(scale)"),  # a shift, not an epsilon
    ],
    ids=["clamp", "clip", "eps_log", "row_sum_log", "row_sum_eps_log", "normalize", "times_3", "square", "shift"],
)
def test_softmax_followed_through_ops_to_a_loss(loss_of, consumer) -> None:
    site, _, _ = _consumers(_head(3, nn.Softmax(dim=1)), loss_of, X, LABELS)
    assert site.consumers == {"output", consumer} and site.is_output


@pytest.mark.parametrize(
    "loss_of, consumer",
    [
        (lambda p, y: -(y * p.clamp(1e-7, 1 - 1e-7).log()).sum(1).mean(), "loss:handwritten_cross_entropy(clamp)"),
        (lambda p, y: torch.mean(-torch.sum(y * torch.log(p), dim=1)), "loss:handwritten_cross_entropy"),
        (lambda p, y: -torch.xlogy(y, p).sum(1).mean(), "loss:handwritten_cross_entropy"),
        (lambda p, y: ((p - y) ** 2).mean(), "loss:handwritten_mse"),
        (lambda p, y: torch.square(y - p).sum() / len(y), "loss:handwritten_mse"),
        (lambda p, y: torch.mean(_times_itself(p - y)), "loss:handwritten_mse"),
        (lambda p, y: (p.clamp(0, 1) - y).abs().mean(), "loss:handwritten_l1(clamp)"),
        (lambda p, y: -torch.log(p.gather(1, y.argmax(1, keepdim=True)).clamp(min=1e-7)).mean(), "loss:handwritten_cross_entropy"),
        (lambda p, y: -p.log().gather(1, y.argmax(1)[:, None]).mean(), "loss:handwritten_cross_entropy"),
    ],
    ids=["keras_ce", "torch_sum_ce", "xlogy", "mse", "square_over_n", "e_times_e", "l1", "gather_log", "log_gather"],
)
def test_handwritten_losses_over_classes(loss_of, consumer) -> None:
    site, _, snap = _consumers(_head(3, nn.Softmax(dim=1)), loss_of, X, ONE_HOT)
    assert site.consumers == {"output", consumer}
    assert consumer[5:].split("(")[0] in snap.losses  # losses_seen: the loss functions of the run


@pytest.mark.parametrize(
    "loss_of",
    [
        lambda p, y: -(y * torch.log(p.clamp(1e-7, 1 - 1e-7)) + (1 - y) * torch.log(1 - p.clamp(1e-7, 1 - 1e-7))).mean(),
        lambda p, y: -torch.mean(y * torch.log(p + 1e-7)) - torch.mean((1 - y) * torch.log1p(-p)),  # reduced apart
        lambda p, y: -((1 - y) * torch.log(1 - p + 1e-7) + y * torch.log(p + 1e-7)).mean(),
        lambda p, y: torch.where(y > 0.5, -torch.log(p.clamp(1e-6, 1)), -torch.log(1 - p.clamp(0, 1 - 1e-6))).mean(),
    ],
    ids=["keras_bce", "terms_reduced_apart", "complement_first", "where"],
)
def test_handwritten_bce_is_one_loss_not_a_cross_entropy(loss_of) -> None:
    site, _, _ = _consumers(_head(1, nn.Sigmoid()), loss_of, X, BINARY)
    assert [c for c in site.consumers if c.startswith("loss:")] in (["loss:handwritten_bce"], ["loss:handwritten_bce(clamp)"])
    assert site.is_output and not site.is_gate  # y * log p after the forward is no gate


def test_ops_after_the_forward_that_are_no_loss_record_none() -> None:
    no_loss = lambda p, y: (p * y).sum() + (p - y).mean() + torch.where(y > 0.5, p, 1 - p).mean() + p.gather(1, LABELS[:, None]).mean()  # noqa: E731
    site, _, snap = _consumers(_head(3, nn.Softmax(dim=1)), no_loss, X, ONE_HOT)
    assert site.consumers == {"output"} and not snap.losses  # a dice-like product, a mean difference, no log


def test_a_sigmoid_clamped_inside_the_forward_is_an_output_not_a_hidden_layer() -> None:
    """The break made the output sigmoid count as a hidden layer: it is the model's output."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(5, 8), nn.Linear(8, 1)

        def forward(self, x):
            return torch.clamp(torch.sigmoid(self.fc2(torch.tanh(self.fc1(x)))), 1e-7, 1 - 1e-7)

    torch.manual_seed(0)
    model = Net()
    mon = ActivationMonitor(model).attach()
    mon.begin_step()
    out = model(X)
    F.binary_cross_entropy(out, BINARY).backward()
    mon.end_step()
    mon.detach()
    site_names = {s.kind: s for s in mon.sites.values()}
    sig, tanh = site_names["sigmoid"], site_names["tanh"]
    assert sig.is_output and sig.consumers == {"output", "loss:binary_cross_entropy(clamp)"}
    assert not tanh.is_output and tanh.consumer_layer_types == {"Linear"}


def test_residual_sums_and_products_inside_the_model_are_not_followed() -> None:
    """Inside the forward only clamps, epsilons, logs, normalisation and scalings are followed: a
    residual sum is no longer the activation's output, and an epsilon's add is."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.head = nn.Linear(5, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.head(x + torch.relu(self.fc(x)))

    torch.manual_seed(0)
    model = Block()
    mon = ActivationMonitor(model).attach()
    mon.begin_step()
    model(X).sum().backward()
    mon.end_step()
    mon.detach()
    (site,) = mon.sites.values()
    assert site.consumers == set() and not site.is_output


# ------------------------------------------------------------------ class 2: facts about the targets
def test_multi_label_target_rows_counted_on_the_device_for_any_loss() -> None:
    multi = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    for loss_of in (lambda p, y: F.mse_loss(p, y), lambda p, y: ((p.clamp(0, 1) - y) ** 2).mean(), lambda p, y: -(y * p.log()).sum(1).mean()):
        _, stats, _ = _consumers(_head(3, nn.Softmax(dim=1)), loss_of, X, multi, steps=2)
        assert stats.target_rows_off == pytest.approx(4 / 6)  # rows summing to 2, 0, 2 and 3
    _, stats, _ = _consumers(_head(3, nn.Softmax(dim=1)), lambda p, y: F.mse_loss(p, y), X, ONE_HOT * 0.9 + 0.1 / 3)
    assert stats.target_rows_off == 0.0  # label smoothing keeps every row a distribution
    _, stats, _ = _consumers(_head(3, nn.Softmax(dim=1)), lambda p, y: F.cross_entropy(p.clamp(0, 1), y), X, LABELS)
    assert stats.target_rows_off is None  # class indices: no rows to count


def test_regression_targets_out_of_range_counted_through_a_clamp_and_by_hand() -> None:
    y = torch.tensor([[0.5], [2.0], [0.1], [-1.0], [0.9], [0.2]])
    for loss_of in (lambda p, t: F.mse_loss(p.clamp(1e-6, 1), t), lambda p, t: ((p - t) ** 2).mean(), lambda p, t: (t - p).abs().mean()):
        _, stats, _ = _consumers(_head(1, nn.Sigmoid()), loss_of, X, y)
        assert stats.target_outside == pytest.approx(2 / 6)
    _, stats, _ = _consumers(_head(1, nn.Sigmoid()), lambda p, t: ((5 * p - t) ** 2).mean(), X, y)
    assert stats.target_outside is None  # scaled on the way: its range is unknown


def test_torch_where_with_only_a_condition_is_passed_over() -> None:
    """torch.where(mask) (the indices of its nonzeros, as a mixture-of-experts router picks tokens)
    on an output is no choice between two BCE terms: followed without error, the loss still seen."""

    def loss_of(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        (rows,) = torch.where(probs[:, 0] > 0.0)  # every row: a sigmoid's output is positive
        return F.binary_cross_entropy(probs[rows], y[rows])

    site, stats, _ = _consumers(_head(1, nn.Sigmoid()), loss_of, X, BINARY)
    assert site.losses == ["binary_cross_entropy"] and stats.calls == 1
