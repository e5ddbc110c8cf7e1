"""Following an output activation through clamps, epsilons, logs, normalisation and hand-written
losses to what consumes it (core/following.py): the facts recorded on the Site and the state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from act_diagnostics.core import ActivationMonitor
from act_diagnostics.core.following import (
    Flow,
    Following,
    loss_parts,
    picked_labels,
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


# ------------------------------------------------------------------ class 1: cross-entropy by indexing
N = len(LABELS)


def test_picked_labels_reads_each_rows_class_picked_by_its_label_only() -> None:
    p = torch.rand(N, 3)
    for rows in (range(N), list(range(N)), torch.arange(N), np.arange(N)):
        assert picked_labels(p, (rows, LABELS), p[rows, LABELS]) is LABELS
    numpy_labels = LABELS.numpy()
    assert picked_labels(p, (np.arange(N), numpy_labels), p[np.arange(N), numpy_labels]) is numpy_labels
    seq = torch.rand(2, 3, 4)  # (N, T, C): each position's class
    b, t, y = torch.arange(2)[:, None], torch.arange(3)[None, :], torch.randint(0, 4, (2, 3))
    assert picked_labels(seq, (b, t, y), seq[b, t, y]) is y
    not_picks = [
        (slice(None), 0),  # one class for every row: a binary probability
        (slice(None), LABELS),  # every row at every label: N x N
        (0, LABELS),  # one row
        (LABELS > 0,),  # rows selected by a mask
        (range(N), [0, 1, 2, 0, 1, 2]),  # classes written in the code, not labels
        (range(N), LABELS.float()),  # float "labels" cannot index
        (range(3), LABELS[:3]),  # a subset of the rows
        (Ellipsis, 1),
    ]
    for index in not_picks:
        try:
            result = p[index]
        except (IndexError, TypeError):  # the float labels
            result = torch.zeros(N)
        assert picked_labels(p, index, result) is None, index
    assert picked_labels(p, (range(N), torch.tensor(1)), p[range(N), torch.tensor(1)]) is None  # one label for all
    assert picked_labels(torch.rand(N), (range(N),), torch.rand(N)) is None  # no classes dim


@pytest.mark.parametrize(
    "loss_of, consumer",
    [
        (lambda p, y: -torch.log(p[range(N), y]).mean(), "loss:handwritten_cross_entropy"),
        (lambda p, y: -torch.log(p[torch.arange(N), y]).mean(), "loss:handwritten_cross_entropy"),
        (lambda p, y: -torch.log(p[np.arange(N), y]).mean(), "loss:handwritten_cross_entropy"),
        (lambda p, y: -torch.log(p[np.arange(N), y.numpy()]).mean(), "loss:handwritten_cross_entropy"),
        (lambda p, y: -torch.log(p)[range(len(y)), y].mean(), "loss:handwritten_cross_entropy"),
        (lambda p, y: -(p[range(N), y] + 1e-7).log().sum() / N, "loss:handwritten_cross_entropy"),
        (lambda p, y: -torch.log(p.clamp(1e-7, 1 - 1e-7)[range(N), y]).mean(), "loss:handwritten_cross_entropy(clamp)"),
        (lambda p, y: torch.mean(-torch.log(p.view(N, 3)[list(range(N)), y])), "loss:handwritten_cross_entropy"),
    ],
    ids=["range", "torch_arange", "np_arange", "numpy_labels", "log_then_index", "eps_sum_over_n", "clamped", "list_rows"],
)
def test_cross_entropy_written_with_indexing_is_recognised(loss_of, consumer) -> None:
    for act in (nn.Softmax(dim=1), nn.Sigmoid()):
        site, _, snap = _consumers(_head(3, act), loss_of, X, LABELS)
        assert site.consumers == {"output", consumer} and site.is_output
        assert "handwritten_cross_entropy" in snap.losses


@pytest.mark.parametrize(
    "loss_of, consumer",
    [
        (lambda lp, y: -lp[range(N), y].mean(), "loss:handwritten_nll_loss"),
        (lambda lp, y: -lp[torch.arange(N), y].sum() / N, "loss:handwritten_nll_loss"),
        (lambda lp, y: -lp.gather(1, y[:, None]).mean(), "loss:handwritten_nll_loss"),
        (lambda lp, y: -(F.one_hot(y, 3) * lp).sum(1).mean(), "loss:handwritten_nll_loss"),
        (lambda lp, y: -torch.log(lp)[range(N), y].mean(), "loss:handwritten_cross_entropy"),  # a log of log-probabilities
    ],
    ids=["index", "arange_sum", "gather", "one_hot", "extra_log"],
)
def test_log_softmax_picked_without_a_log_is_a_handwritten_nll_loss(loss_of, consumer) -> None:
    site, _, snap = _consumers(_head(3, nn.LogSoftmax(dim=1)), loss_of, X, LABELS)
    assert site.consumers == {"output", consumer}
    assert consumer[5:] in snap.losses


def test_a_softmax_picked_without_a_log_is_no_loss() -> None:
    """The mean probability of the true class (a confidence to log) and a log-probability picked
    for every row at every label (p[:, y], N x N) compute no log-likelihood of the targets."""
    confidence = lambda p, y: p[range(N), y].mean() + torch.log(p[:, y]).mean()  # noqa: E731
    site, _, snap = _consumers(_head(3, nn.Softmax(dim=1)), confidence, X, LABELS)
    assert site.consumers == {"output"} and not snap.losses


@pytest.mark.parametrize(
    "loss_of, loss, partial",
    [
        (lambda p, y: F.binary_cross_entropy(p[:, 1], (y == 1).float()), "binary_cross_entropy", True),
        (lambda p, y: F.binary_cross_entropy(p[..., 1:2], (y[:, None] == 1).float()), "binary_cross_entropy", True),
        (lambda p, y: F.nll_loss(torch.log(p[y >= 0]), y[y >= 0]), "nll_loss(log)", False),  # rows by a mask
        (lambda p, y: F.nll_loss(p[:, :].log(), y) + 0 * p[:, 0].mean(), "nll_loss(log)", False),  # a slice to log
    ],
    ids=["one_class_bce", "one_class_kept_dim", "masked_rows", "logged_slice"],
)
def test_indexing_that_is_no_pick_keeps_its_facts(loss_of, loss, partial) -> None:
    site, _, _ = _consumers(_head(3, nn.Softmax(dim=1)), loss_of, X, LABELS)
    assert site.consumers == {"output", f"loss:{loss}"}
    assert (loss in site.partial_losses) is partial


def test_indexing_inside_the_forward_is_followed_as_a_view() -> None:
    """A model that returns one class's probability (probs[:, 1]) or picks by a tensor inside its
    forward: the site is the model's output, whatever the index."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            probs = torch.softmax(self.fc(x), dim=1)
            return probs[torch.arange(len(x)), LABELS], probs[:, 1]

    torch.manual_seed(0)
    model = Net()
    mon = ActivationMonitor(model).attach()
    mon.begin_step()
    picked, one = model(X)
    F.binary_cross_entropy(one, (LABELS == 1).float()).backward()
    mon.end_step()
    mon.detach()
    (site,) = mon.sites.values()
    assert site.consumers == {"output", "loss:binary_cross_entropy"} and site.partial_losses == {"binary_cross_entropy"}


def test_picks_are_followed_on_structure_steps_only(monkeypatch) -> None:
    """Following runs while the monitor learns structure: later steps index without a look."""
    calls = []
    original = Following.pick
    monkeypatch.setattr(Following, "pick", lambda self, *a: calls.append(1) or original(self, *a))
    head = _head(3, nn.Softmax(dim=1))
    mon = ActivationMonitor(head, structure_steps=1).attach()
    for _ in range(3):
        mon.begin_step()
        (-torch.log(head(X)[range(N), LABELS]).mean()).backward()
        mon.end_step()
    mon.detach()
    assert len(calls) == 1 and next(iter(mon.sites.values())).consumers == {"output", "loss:handwritten_cross_entropy"}


SEQ = torch.randn(4, 5, 5)  # (batch, positions, features): its softmax heads are (4, 5, 3)
SEQ_LABELS = torch.tensor([[0, 1, 2, 0, 1], [2, 2, 1, 0, 0], [1, 0, 2, 1, 2], [0, 0, 1, 1, 2]])


@pytest.mark.parametrize(
    "x, y, loss_of, class_dims",
    [
        (X, LABELS, lambda p, y: -torch.log(p.gather(1, y[:, None])).mean(), {"handwritten_cross_entropy": 1}),
        (X, LABELS, lambda p, y: -torch.log(p[range(N), y]).mean(), {"handwritten_cross_entropy": 1}),
        (X, LABELS, lambda p, y: -torch.log(p.clamp(1e-7, 1)[range(N), y]).mean(), {"handwritten_cross_entropy(clamp)": 1}),
        (SEQ, SEQ_LABELS, lambda p, y: -torch.log(p.gather(-1, y[..., None])).mean(), {"handwritten_cross_entropy": 2}),
        # A reshape or a reordering on the way: the picked dim is no dim of the output's layout.
        (SEQ, SEQ_LABELS, lambda p, y: -torch.log(p.reshape(-1, 3)[range(20), y.flatten()]).mean(), {}),
        (SEQ, SEQ_LABELS, lambda p, y: -torch.log(p.transpose(1, 2).gather(1, y[:, None])).mean(), {}),
    ],
    ids=["gather", "index", "clamped_index", "sequence_gather", "reshaped", "transposed"],
)
def test_the_dim_a_handwritten_cross_entropy_picks_classes_on(x, y, loss_of, class_dims) -> None:
    site, _, _ = _consumers(_head(3, nn.Softmax(dim=-1)), loss_of, x, y)
    assert any(c.startswith("loss:handwritten_cross_entropy") for c in site.consumers)
    assert site.loss_class_dims == class_dims
