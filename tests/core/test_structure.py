"""Structural facts: what feeds and consumes each site (gates, scaled outputs, losses, model outputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from act_diagnostics.core import ActivationMonitor


@pytest.mark.parametrize(
    "gated",
    [
        lambda v, g: v * g,
        lambda v, g: v * g.expand_as(v),  # squeeze-excitation, as often written
        lambda v, g: v * g.expand(-1, 4),
        lambda v, g: torch.broadcast_to(g, v.shape) * v,
        lambda v, g: v * g.repeat(1, 4),
    ],
    ids=["mul", "expand_as", "expand", "broadcast_to", "repeat"],
)
def test_gate_consumer(gated) -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.value, self.gate = nn.Linear(4, 4), nn.Linear(4, 1)

        def forward(self, x):
            return gated(self.value(x), torch.sigmoid(self.gate(x)))

    model = Gate()
    with ActivationMonitor(model) as mon:
        model(torch.randn(2, 4))
    site = mon.sites[":sigmoid"]
    assert site.is_gate and "mul" in site.consumers and site.feeding_layer == "gate"


@pytest.mark.parametrize(
    "scaled",
    [
        lambda h, gamma: h * 2.0,
        lambda h, gamma: 1.7159 * h,  # LeCun's scaled tanh
        lambda h, gamma: h * gamma,  # LayerScale: a learned per-channel parameter
        lambda h, gamma: h * torch.tensor(0.5),
        lambda h, gamma: h.mul(torch.ones(4)),  # a constant mask
    ],
    ids=["float", "rmul", "parameter", "one-element", "constant"],
)
def test_scaled_activation_is_no_gate(scaled) -> None:
    """A gate multiplies by a tensor computed from the input; a number, a parameter or a constant
    only scales, and the scaled output still feeds the next layer."""

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)
            self.gamma = nn.Parameter(torch.full((4,), 0.1))

        def forward(self, x):
            return self.fc2(scaled(torch.tanh(self.fc1(x)), self.gamma))

    model = Scaled()
    with ActivationMonitor(model) as mon:
        model(torch.randn(3, 4)).sum().backward()
    site = mon.sites[":tanh"]
    assert not site.is_gate and "mul" not in site.consumers
    assert site.feeds_layer and site.consumer_layer_types == {"Linear"}


@pytest.mark.parametrize(
    "gated",
    [
        lambda f, g: f * g,  # f: a frozen backbone's features, no autograd history
        lambda f, g: torch.mul(g, other=f),
    ],
    ids=["frozen_features", "keyword_operand"],
)
@pytest.mark.parametrize("batch", [5, 1])
def test_a_gate_on_features_without_history_is_still_a_gate(gated, batch) -> None:
    """Squeeze-excitation over a frozen backbone: the other operand holds a value per sample (the
    batch dim), so it is a gate, not a scale."""

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.gate, self.head = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)
            self.backbone.requires_grad_(False)

        def forward(self, x):
            with torch.no_grad():
                f = self.backbone(x)
            return self.head(gated(f, torch.sigmoid(self.gate(f))))

    model = Head()
    with ActivationMonitor(model) as mon:
        model(torch.randn(batch, 4)).sum().backward()
    assert mon.sites[":sigmoid"].is_gate


def _padding(h, mask):
    return h * mask.unsqueeze(-1)  # padding positions of a sequence


def _dropout_mask(h, mask):
    return h * torch.ones_like(h).bernoulli_(0.9)  # dropout written by hand


def _drop_path(h, mask):
    return h * (mask[:, :1].unsqueeze(-1) > 0).float()  # drop-path: a keep flag per sample


@pytest.mark.parametrize("state", ["broadcast_zeros", "learned"])
def test_an_lstm_forget_gate_on_an_initial_state_is_a_gate(state) -> None:
    """f * c0 at the first time step: c0 a zero state broadcast over the batch, or a learned one."""

    class Cell(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f, self.head = nn.Linear(4, 6), nn.Linear(6, 2)
            self.c0 = nn.Parameter(torch.zeros(1, 6)) if state == "learned" else None

        def forward(self, x):
            c0 = self.c0 if self.c0 is not None else torch.zeros(1, 6)
            return self.head(torch.sigmoid(self.f(x)) * c0 + x.sum(1, keepdim=True))

    model = Cell()
    with ActivationMonitor(model) as mon:
        model(torch.randn(5, 4)).sum().backward()
    assert mon.sites[":sigmoid"].is_gate


@pytest.mark.parametrize(
    "masked, act",
    [
        (_padding, torch.tanh),
        (_dropout_mask, torch.tanh),
        (_drop_path, torch.tanh),
        (_padding, torch.sigmoid),
        (_drop_path, torch.sigmoid),
        # A sigmoid times a full-size mask is not told apart from a sigmoid gating features of its
        # own size (a frozen backbone's): it counts as a gate.
    ],
    ids=["padding-tanh", "dropout_mask-tanh", "drop_path-tanh", "padding-sigmoid", "drop_path-sigmoid"],
)
def test_a_masked_hidden_activation_is_no_gate(masked, act) -> None:
    """A mask has no autograd history: an activation multiplied by one is still a hidden layer,
    judged by the rules (as a gate it was left out of all of them)."""
    from act_diagnostics.rules.base import is_hidden

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.head = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x, mask):
            h = masked(act(self.fc(x)), mask)
            return self.head(h.sum(1) / mask.sum(1, keepdim=True))

    model = Encoder()
    mask = torch.ones(3, 7)
    mask[:, 5:] = 0
    with ActivationMonitor(model) as mon:
        model(torch.randn(3, 7, 4), mask).sum().backward()
    (site,) = mon.sites.values()
    assert not site.is_gate and "mul" not in site.consumers and is_hidden(site)


def test_scaled_output_stays_an_output_without_a_target_check() -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def forward(self, x):
            return torch.sigmoid(self.fc(x)) * 5.0  # a rating in [0, 5]

    model = Head()
    with ActivationMonitor(model) as mon:
        F.mse_loss(model(torch.randn(3, 4)), torch.full((3, 1), 4.0)).backward()
    site = mon.sites[":sigmoid"]
    assert site.is_output and not site.is_gate and site.losses == ["mse_loss(scale)"]
    assert mon.states[":sigmoid"].counters[9] == 0  # targets above 1 are reachable once scaled


def test_softmax_into_cross_entropy_and_log_into_nll() -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return F.softmax(self.fc(x), dim=-1)

    model = Head()
    target = torch.tensor([0, 2])
    mon = ActivationMonitor(model).attach()
    mon.begin_step()
    p = model(torch.randn(2, 4))
    F.cross_entropy(p, target).backward()
    mon.end_step()
    mon.begin_step()
    p = model(torch.randn(2, 4))
    F.nll_loss(torch.log(p), target).backward()
    mon.end_step()
    mon.detach()
    site = mon.sites[":softmax"]
    assert site.consumers == {"output", "loss:cross_entropy", "loss:nll_loss(log)"}
    assert site.losses == ["cross_entropy", "nll_loss(log)"] and site.is_output
    assert mon.losses_seen["cross_entropy"] == {
        "calls": 1, "input_shape": [2, 3], "target_shape": [2], "target_dtype": "int64",
    }


def test_model_output_and_activation_consumers(make_mlp) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.1), nn.Softmax(dim=-1))
    with ActivationMonitor(model) as mon:
        model(torch.randn(2, 4))
    assert mon.sites["1"].consumers == {"activation"} and mon.sites["1"].consumer_sites == {"3"}
    assert mon.sites["3"].consumers == {"output"} and mon.sites["3"].is_output


def test_structure_is_learned_only_during_structure_steps(make_mlp, train_step) -> None:
    model = make_mlp(4, 1)
    mon = ActivationMonitor(model, structure_steps=1).attach()
    train_step(mon, model, torch.randn(2, 4))
    assert mon.sites["1"].consumers == {"2"}
    mon.begin_step()
    assert not mon.learning_structure
    mon.end_step()
    mon.detach()


def test_sub_models_called_outside_forward_are_not_model_outputs() -> None:
    """A LitAutoEncoder-style step calls self.decoder(self.encoder(x)) without the root's forward:
    the encoder's tanh feeds the decoder, a hidden layer, not an output of the model."""

    class AutoEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(6, 3), nn.Tanh())
            self.decoder = nn.Sequential(nn.Linear(3, 6))

    model = AutoEncoder()
    with ActivationMonitor(model) as mon:
        x = torch.randn(5, 6)
        F.mse_loss(model.decoder(model.encoder(x)), x).backward()
    site = mon.sites["encoder.1"]
    assert not site.is_output and site.feeds_layer and site.consumers == {"decoder.0"}


def test_a_dataclass_output_marks_model_outputs() -> None:
    from dataclasses import dataclass

    @dataclass
    class Out:
        probs: torch.Tensor
        aux: tuple

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 1)

        def forward(self, x):
            h = torch.tanh(self.fc(x))
            return Out(torch.sigmoid(self.head(h)), (h.sum(),))

    model = Net()
    with ActivationMonitor(model) as mon:
        model(torch.randn(3, 4))
    assert mon.sites[":sigmoid"].is_output and not mon.sites[":tanh"].is_output


def test_the_snapshot_names_the_losses_seen() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with ActivationMonitor(model) as mon:
        F.mse_loss(model(torch.randn(3, 4)), torch.randn(3, 1)).backward()
        snap = mon.snapshot()
    assert snap.losses == ("mse_loss",)


# ---------------------------------------------------------------- the recorder and the tracer's interface
@pytest.mark.parametrize(
    "shape, unit_dim, value_shape, reordered, expected",
    [
        ((8, 3), 1, (8, 3), False, True),  # the whole output
        ((8, 3), 1, (24,), False, True),  # a reshape of it
        ((8, 3), 1, (5, 3), False, True),  # rows selected: probs[mask]
        ((8, 3), 1, (8, 2), False, True),  # classes sliced with the dims kept: probs[:, :-1]
        ((8, 3), 1, (8,), False, False),  # one class indexed away: probs[:, 1]
        ((8, 3), 1, (8, 1), False, False),  # one class kept as a dim: probs[..., 1:2]
        ((4, 3, 5), 1, (4, 5), False, False),  # the class dim indexed away, whatever the other sizes
        ((4, 3, 5), 1, (7, 3), True, True),  # classes moved last, then rows selected
        ((4, 5, 3), 2, (7, 3), False, True),  # classes last, rows selected
    ],
)
def test_reads_classes(shape, unit_dim, value_shape, reordered, expected) -> None:
    from act_diagnostics.core.structure import reads_classes

    assert reads_classes(torch.Size(shape), unit_dim, torch.zeros(value_shape), reordered) is expected


def _site(name: str, kind: str = "sigmoid"):
    from act_diagnostics.core.sites import Site

    return Site(name=name, kind=kind, family=kind, source="module", owner="", module_type="Sigmoid", index=0,
                unit_dim=1, n_units=3, shape=(8, 3))


def test_structure_facts_follow_one_steps_tensors_and_let_them_go() -> None:
    from act_diagnostics.core.structure import StructureFacts

    sites = {"a": _site("a"), "b": _site("b", "softmax")}
    facts = StructureFacts(sites, {})
    x, y = torch.randn(8, 3), torch.rand(8, 3)
    facts.note_activation_call("a", x, y)
    assert facts.produced_by(y) == ("a", "") and facts.produced_by(y.clone()) is None  # by identity
    z = y.t()
    facts.mark_produced(z, "a", "", reordered=True)
    assert facts.reordered(z) and not facts.reordered(y)
    facts.note_activation_call("b", y, torch.softmax(y, 1))  # b reads a's output
    assert sites["a"].consumers == {"activation"} and sites["a"].consumer_sites == {"b"}
    facts.add_consumer("a", "loss:binary_cross_entropy", y[:, 1])  # one class of a's output
    facts.note_loss("binary_cross_entropy", y[:, 1], torch.ones(8))
    assert sites["a"].partial_losses == {"binary_cross_entropy"} and sites["a"].loss_input_shapes == {"binary_cross_entropy": [8]}
    assert facts.losses_seen["binary_cross_entropy"] == {"calls": 1, "input_shape": [8], "target_shape": [8], "target_dtype": "float32"}
    assert facts.held()["produced"] == 3
    facts.clear()
    assert facts.held() == {"produced": 0, "layer_outputs": 0, "scores": 0} and facts.produced_by(y) is None


def test_the_tracer_needs_only_a_router_a_recorder_and_a_failure_callback() -> None:
    from act_diagnostics.core.structure import StructureFacts
    from act_diagnostics.core.tracer import ActivationTracer

    class Router:  # what the monitor is to the tracer
        enabled, functional, activation_depth, learning_structure, detail = True, True, 0, True, False
        model = torch.nn.Module()  # layers of bare parameters (x.mm(w)) are looked up in it

        def __init__(self) -> None:
            self.calls: list[str] = []

        def call_functional(self, func, args, kwargs):
            self.calls.append(func.__name__)
            return func(*args, **kwargs)

        def call_attention(self, func, args, kwargs):
            return func(*args, **kwargs)

    sites = {"a": _site("a", "softmax")}
    router, facts, errors = Router(), StructureFacts(sites, {}), []
    logits = torch.randn(4, 3)
    with ActivationTracer(router, facts, errors.append):
        probs = F.softmax(logits, dim=1)
        facts.mark_produced(probs, "a")
        F.nll_loss(torch.log(probs), torch.tensor([0, 1, 2, 0]))
    assert router.calls == ["softmax"] and sites["a"].consumers == {"loss:nll_loss(log)"} and not errors

    def broken(value):
        raise RuntimeError("recorder bug")

    facts.produced_by = broken  # type: ignore[method-assign]
    with ActivationTracer(router, facts, errors.append):
        out = torch.log(probs)  # followed: the error goes to the callback, the call's result stays
    assert torch.equal(out, torch.log(probs)) and [str(e) for e in errors] == ["recorder bug"]
