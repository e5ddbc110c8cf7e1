"""Site discovery on tiny models: modules, functional calls, transformers, reuse, filters, structure."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from act_diagnostics.core import ActivationMonitor
from act_diagnostics.core.kinds import MODULE_KINDS


def _module(cls: type[nn.Module]) -> nn.Module:
    if cls in (nn.Softmax, nn.Softmin, nn.LogSoftmax):
        return cls(dim=-1)
    if cls is nn.Threshold:
        return cls(0.1, 0.0)
    return cls()


@pytest.mark.parametrize("cls", list(MODULE_KINDS), ids=lambda c: c.__name__)
def test_every_module_class_is_a_site(cls, train_step) -> None:
    model = nn.Sequential(nn.Linear(6, 8), _module(cls), nn.Linear(8 // 2 if cls is nn.GLU else 8, 2))
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(5, 6), detail=True)
    snap = mon.snapshot()
    mon.detach()
    assert list(snap.sites) == ["1"]
    site, st = snap.sites["1"], snap.stats["1"]
    assert site.kind == MODULE_KINDS[cls] and site.source == "module" and site.module_type == cls.__name__
    assert site.feeding_layer == "0" and site.feeding_layer_type == "Linear"
    assert site.consumers == {"2"} and site.consumer_layer_types == {"Linear"} and site.feeds_layer
    assert st.calls == 1 and st.elements == 5 * site.n_units and st.firing_rate is not None
    assert st.grad_rms is not None and st.grad_rms > 0
    assert st.param_grad_norm is not None and st.input_std is not None
    assert site.n_units == (4 if cls is nn.GLU else 8)


def test_user_subclass_is_found(train_step) -> None:
    class Swish(nn.SiLU):
        pass

    model = nn.Sequential(nn.Linear(4, 4), Swish())
    with ActivationMonitor(model) as mon:
        model(torch.randn(2, 4))
    assert mon.sites["1"].kind == "silu" and mon.sites["1"].module_type == "Swish"


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        outs = [
            torch.relu(h), F.relu(h), F.relu_(h.clone()), F.gelu(h), F.silu(h), torch.sigmoid(h), torch.tanh(h),
            F.softmax(h, dim=-1), F.log_softmax(h, dim=-1), F.leaky_relu(h), F.elu(h), F.mish(h), h.relu(),
            h.softmax(-1),
        ]
        return torch.stack(outs).sum(0)


def test_functional_calls_are_named_owner_colon_function(train_step) -> None:
    model = nn.Sequential(Functional())
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(3, 4))
    mon.detach()
    expected = [
        "0:relu", "0:relu#1", "0:relu#2", "0:gelu", "0:silu", "0:sigmoid", "0:tanh", "0:softmax",
        "0:log_softmax", "0:leaky_relu", "0:elu", "0:mish", "0:relu#3", "0:softmax#1",
    ]
    assert list(mon.sites) == expected
    kinds = [mon.sites[n].kind for n in expected]
    assert kinds == [
        "relu", "relu", "relu", "gelu", "silu", "sigmoid", "tanh", "softmax", "log_softmax", "leaky_relu", "elu",
        "mish", "relu", "softmax",
    ]
    assert all(mon.sites[n].source == "functional" and mon.sites[n].owner == "0" for n in expected)
    assert [s.index for s in mon.sites.values()] == list(range(len(expected)))
    assert mon.sites["0:softmax"].params == {"dim": -1} and mon.sites["0:softmax#1"].params == {"dim": -1}
    assert mon.sites["0:relu"].feeding_layer == "0.fc"


def test_functional_call_in_the_root_forward() -> None:
    class Root(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return torch.tanh(self.fc(x))

    model = Root()
    with ActivationMonitor(model) as mon:
        model(torch.randn(2, 3))
    assert list(mon.sites) == [":tanh"] and mon.sites[":tanh"].owner == ""


def test_torch_special_activations_are_sites(train_step) -> None:
    class Special(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc(x)
            return torch.special.softmax(h, 1) + torch.special.log_softmax(h, dim=-1) + torch.special.expit(h)

    model = Special()
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(3, 4))
    mon.detach()
    assert {n: (s.kind, s.params) for n, s in mon.sites.items()} == {
        ":softmax": ("softmax", {"dim": 1}), ":log_softmax": ("log_softmax", {"dim": -1}), ":expit": ("sigmoid", {}),
    }


def test_integer_outputs_are_not_sites(train_step) -> None:
    """torch.relu / clamp-like calls on integer tensors (positions, indices) are not activations:
    no site, no false dead-unit finding, and the real call keeps the name ':relu'."""

    class Positions(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.act = nn.Linear(4, 4), nn.ReLU()

        def forward(self, x):
            offsets = torch.relu(torch.arange(x.shape[1]) - 100)  # int64, all zeros
            return torch.relu(self.fc(x)) + self.act(offsets) + offsets

    model = Positions()
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(3, 4))
    snap = mon.snapshot()
    mon.detach()
    assert list(mon.sites) == [":relu"]
    assert snap.stats[":relu"].calls == 1 and snap.stats[":relu"].unit_firing is not None


def test_functional_false_ignores_functional_calls() -> None:
    model = nn.Sequential(Functional())
    with ActivationMonitor(model, functional=False) as mon:
        model(torch.randn(3, 4))
    assert mon.sites == {}


@pytest.mark.parametrize("activation, fn", [("relu", "relu"), ("gelu", "gelu")])
def test_transformer_encoder_functional_activation_in_training(activation: str, fn: str, train_step) -> None:
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, activation=activation, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False), nn.Linear(16, 3))
    model.train()
    mon = ActivationMonitor(model).attach()
    for _ in range(2):
        train_step(mon, model, torch.randn(4, 5, 16))
    snap = mon.snapshot()
    mon.detach()
    names = [f"0.layers.0:{fn}", f"0.layers.1:{fn}"]
    # in forward order, after each layer's self-attention weights (tests/core/test_attention.py)
    assert list(snap.sites) == ["0.layers.0.self_attn:attention", names[0], "0.layers.1.self_attn:attention", names[1]]
    for i, name in enumerate(names):
        site = snap.sites[name]
        assert site.kind == fn and site.n_units == 32 and site.unit_dim == 2
        assert site.feeding_layer == f"0.layers.{i}.linear1"
        assert f"0.layers.{i}.linear2" in site.consumers
        assert snap.stats[name].calls == 2 and snap.stats[name].grad_rms is not None


def test_reused_module_gets_numbered_sites(train_step) -> None:
    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.b(self.act(self.a(x)))) + F.relu(x) + F.relu(x)

    model = Reuse()
    mon = ActivationMonitor(model).attach()
    for _ in range(3):
        train_step(mon, model, torch.randn(2, 4))
    snap = mon.snapshot()
    mon.detach()
    assert list(snap.sites) == ["act", "act#1", ":relu", ":relu#1"]
    assert all(st.calls == 3 for st in snap.stats.values())
    assert snap.sites["act"].feeding_layer == "a" and snap.sites["act#1"].feeding_layer == "b"
    assert [(s.call_index, s.position) for s in snap.sites.values()] == [(0, "act"), (1, "act"), (0, ":relu"), (1, ":relu")]


def test_inplace_relu_with_gradients(train_step) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 1))
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(6, 4), detail=True)
    snap = mon.snapshot()
    mon.detach()
    assert list(snap.sites) == ["1", "3"]
    for st in snap.stats.values():
        assert st.grad_rms is not None and st.firing_rate is not None
        assert st.input_std is not None and st.input_std > 0  # read by the pre-hook, before the inplace op


def test_module_relu_is_not_counted_twice() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.GELU(), nn.Softmax(dim=-1))
    with ActivationMonitor(model) as mon:
        model(torch.randn(2, 4))
    assert list(mon.sites) == ["1", "2", "3"]
    assert all(st.counters[0] == 1 for st in mon.states.values())


def test_include_exclude_and_kinds(make_mlp) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = make_mlp(4, 2)
            self.head = nn.Sequential(nn.Linear(3, 3), nn.Sigmoid())

        def forward(self, x):
            return torch.tanh(self.head(self.enc(x)))

    def sites(**options):
        model = Net()
        with ActivationMonitor(model, **options) as mon:
            model(torch.randn(2, 4))
        return list(mon.sites)

    assert sites() == ["enc.1", "enc.3", "head.1", ":tanh"]
    assert sites(include="enc.*") == ["enc.1", "enc.3"]
    assert sites(include=["head.*", ":*"]) == ["head.1", ":tanh"]
    assert sites(exclude=["enc.3", ":*"]) == ["enc.1", "head.1"]
    assert sites(kinds="sigmoid") == ["head.1"]
    assert sites(kinds=["relu"]) == ["enc.1", "enc.3"]
    assert sites(kinds=["tanh"]) == [":tanh"]


def test_kind_names_select_the_kind_and_family_names_the_family() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.LeakyReLU(), nn.Linear(4, 4), nn.GELU(), nn.Sigmoid())

    def sites(kinds):
        with ActivationMonitor(model, kinds=kinds) as mon:
            model(torch.randn(2, 4))
        return list(mon.sites)

    assert sites(["relu"]) == ["1"]  # the kind, not LeakyReLU
    assert sites(["family:relu"]) == ["1", "3"]
    assert sites(["smooth"]) == ["5"]  # a family that is no kind
    assert sites(["family:sigmoid", "leaky_relu"]) == ["3", "6"]
    with pytest.raises(ValueError, match="'family:relu' the family"):
        ActivationMonitor(model, kinds=["family:swish"])


def test_calls_outside_training_steps_are_not_counted(make_mlp, train_step) -> None:
    model = make_mlp(4, 2)
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(3, 4))
    model.eval()
    with torch.no_grad():
        model(torch.randn(7, 4))  # validation: no begin_step
    model(torch.randn(7, 4))
    model.train()
    snap = mon.snapshot()
    mon.detach()
    assert all(st.calls == 1 and st.elements == 3 * 4 for st in snap.stats.values())
    assert snap.window_steps == 1


def test_no_grad_forward_inside_a_step_is_measured_without_gradients(make_mlp) -> None:
    model = make_mlp(4, 1)
    mon = ActivationMonitor(model).attach()
    mon.begin_step()
    with torch.no_grad():
        model(torch.randn(2, 4))
    mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    assert snap.stats["1"].calls == 1 and snap.stats["1"].grad_rms is None


class CheckpointedBody(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 4))

    def forward(self, x):
        return F.relu(self.block(x))  # a functional call inside the checkpointed region


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool | None) -> None:
        super().__init__()
        self.reentrant = reentrant  # None: no checkpoint
        self.inner = CheckpointedBody()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if self.reentrant is None:
            return self.fc(self.inner(x))
        return self.fc(checkpoint(self.inner, x, use_reentrant=self.reentrant))


def _checkpointed_snapshot(reentrant: bool | None, train_step) -> Any:
    torch.manual_seed(0)
    model = Checkpointed(reentrant)
    mon = ActivationMonitor(model).attach()
    x = torch.randn(3, 4, requires_grad=bool(reentrant))  # a reentrant region needs an input with grad
    for _ in range(2):
        train_step(mon, model, x)
    snap = mon.snapshot()
    mon.detach()
    return snap


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_does_not_double_count(reentrant: bool, train_step) -> None:
    """The re-run in backward is not measured again. A reentrant region's first forward runs under
    no_grad: the module's and the functional call's gradients come from their re-run instead."""
    plain = _checkpointed_snapshot(None, train_step)
    snap = _checkpointed_snapshot(reentrant, train_step)
    assert list(snap.sites) == ["inner.block.1", "inner:relu"]
    assert all(st.calls == 2 and st.elements == 2 * 12 for st in snap.stats.values())
    for name, st in snap.stats.items():
        assert st.grad_rms is not None and st.grad_rms > 0, name
        assert st.grad_rms == pytest.approx(plain.stats[name].grad_rms, rel=1e-6), name


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


def test_conv_units_are_channels(train_step) -> None:
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))  # materialise the lazy layer
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(2, 3, 6, 6))
    mon.detach()
    assert mon.sites["1"].unit_dim == 1 and mon.sites["1"].n_units == 5


def test_channels_last_linear_units_are_the_last_dim(train_step) -> None:
    """A ConvNeXt-style block: Linear layers on (N, H, W, C) tensors. Its units are the C channels
    (dead ones included), not the H rows the conv rule would pick."""
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[0].bias[:4] = -100.0  # 4 of 6 channels never fire
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(2, 5, 5, 3))
    snap = mon.snapshot()
    mon.detach()
    assert mon.sites["1"].unit_dim == 3 and mon.sites["1"].n_units == 6
    assert snap.stats["1"].dead_fraction == pytest.approx(4 / 6)


def test_conv1d_units_are_channels_and_override(train_step) -> None:
    model = nn.Sequential(nn.Conv1d(3, 5, 1), nn.ReLU())
    with ActivationMonitor(model) as mon:
        model(torch.randn(2, 3, 7))
    assert mon.sites["1"].unit_dim == 1 and mon.sites["1"].n_units == 5
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU())
    with ActivationMonitor(model) as mon:
        model(torch.randn(2, 7, 3))
    assert mon.sites["1"].unit_dim == 2 and mon.sites["1"].n_units == 5
    with ActivationMonitor(model, unit_dim=1) as mon:
        model(torch.randn(2, 7, 3))
    assert mon.sites["1"].unit_dim == 1 and mon.sites["1"].n_units == 7


def test_batch_vector_output_is_one_unit() -> None:
    class Binary(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def forward(self, x):
            return torch.sigmoid(self.fc(x).squeeze(-1))

    model = Binary()
    mon = ActivationMonitor(model).attach()
    for batch in (8, 3):
        mon.begin_step()
        model(torch.randn(batch, 4))
        mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    assert snap.sites[":sigmoid"].n_units == 1
    assert snap.stats[":sigmoid"].sampled == 11 and snap.stats[":sigmoid"].calls == 2


def test_functional_glu_default_dim_is_last() -> None:
    class G(nn.Module):
        def forward(self, x):
            return F.glu(x)

    model = G()
    with ActivationMonitor(model) as mon:
        model(torch.randn(3, 5, 8))
    assert mon.sites[":glu"].unit_dim == 2 and mon.sites[":glu"].n_units == 4


def test_empty_batch_does_not_crash(make_mlp, train_step) -> None:
    model = make_mlp(4, 1)
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(0, 4), detail=True)
    train_step(mon, model, torch.randn(2, 4), detail=True)
    snap = mon.snapshot()
    mon.detach()
    assert mon.failure is None
    assert snap.stats["1"].calls == 2 and snap.stats["1"].elements == 8


@pytest.mark.parametrize("context", ["checkpoint", "no_grad", "inference_mode"])
def test_first_smooth_saturation_inside_checkpoint_or_no_grad(context: str) -> None:
    # The GELU tail threshold is computed lazily on the first GELU call; that call may sit inside
    # an activation-checkpointed region (saved-tensor hooks), no_grad or inference_mode.
    from act_diagnostics.core.kinds import smooth_tail_threshold

    smooth_tail_threshold.cache_clear()
    model = Checkpointed(reentrant=False)
    mon = ActivationMonitor(model).attach()
    mon.begin_step(detail=True)  # the smooth tail is read on detail steps
    x = torch.randn(3, 4)
    if context == "checkpoint":
        model(x).sum().backward()
    elif context == "no_grad":
        with torch.no_grad():
            model.fc(model.inner(x))
    else:
        with torch.inference_mode():
            model.fc(model.inner(x))
    mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    assert mon.failure is None
    assert snap.stats["inner.block.1"].saturation is not None


def test_inference_mode_forward_inside_a_step_after_normal_steps(make_mlp, train_step) -> None:
    model = make_mlp(4, 1, act=nn.Tanh)
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(2, 4), detail=True)
    mon.begin_step(detail=True)
    with torch.inference_mode():
        model(torch.randn(2, 4))
    mon.end_step()
    train_step(mon, model, torch.randn(2, 4))
    snap = mon.snapshot()
    mon.detach()
    assert mon.failure is None and snap.stats["1"].calls == 3


def test_bf16_autocast_training_step(make_mlp, train_step) -> None:
    model = make_mlp(16, 2, act=nn.GELU)
    mon = ActivationMonitor(model).attach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = train_step(mon, model, torch.randn(8, 16), detail=True)
    snap = mon.snapshot()
    mon.detach()
    assert out.dtype == torch.bfloat16 and mon.failure is None
    st = snap.stats["1"]
    assert st.mean is not None and st.grad_rms is not None and st.saturation is not None and st.input_std is not None


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


def test_steps_without_a_forward_do_not_end_discovery() -> None:
    """Batches skipped before the model (`mon.step(); continue`) are not steps: discovery still
    sees the functional site, and no "nothing found" warning is given."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2, self.act = nn.Linear(6, 8), nn.Linear(8, 1), nn.ReLU()

        def forward(self, x):
            return self.l2(self.act(F.gelu(self.l1(x))))

    model = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ActivationMonitor(model) as mon:
            for i in range(8):
                if i < 2:
                    mon.step()
                    continue
                model(torch.randn(4, 6)).sum().backward()
                mon.step()
            snap = mon.snapshot()
    assert {name: st.calls for name, st in snap.stats.items()} == {":gelu": 6, "act": 6}
    assert mon.steps == 6


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
