"""Site discovery on tiny models: module classes, functional calls and their owners, reuse, filters,
unit dims, and a model with nothing to measure."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monitor_fixtures import Functional

from act_diagnostics.core import ActivationMonitor, MonitorFailure
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


def test_unit_dim_out_of_range_disables_with_a_clear_message() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    mon = ActivationMonitor(model, unit_dim=5).attach()
    with pytest.warns(MonitorFailure) as records:
        mon.begin_step()
        model(torch.randn(1, 2))
        mon.end_step()
    mon.detach()
    (message,) = [str(r.message) for r in records]
    # The user's setting, named with its valid range: not an internal error to report.
    assert message.startswith("act_diagnostics is off for this run: `unit_dim`=5 is out of range for site '1'")
    assert "(valid: -2 to 1, or None" in message and "internal error" not in message


@pytest.mark.parametrize("case", ["lstm", "filtered"])
def test_a_model_with_nothing_to_measure_says_why_once(case: str) -> None:
    from act_diagnostics.core import UnmeasuredModules

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.head = nn.LSTM(4, 8, batch_first=True), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    model = Recurrent() if case == "lstm" else nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 5, 4) if case == "lstm" else torch.randn(3, 4)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        mon = ActivationMonitor(model, kinds=None if case == "lstm" else ["sigmoid"]).attach()
        for _ in range(4):
            mon.begin_step()
            model(x).sum().backward()
            mon.end_step()
        mon.detach()
    ours = [str(r.message) for r in records if r.category is UnmeasuredModules]
    assert len(ours) == 1 and "no activation site" in ours[0]
    assert ("rnn" in ours[0] and "fused kernels" in ours[0]) if case == "lstm" else "kinds/include/exclude" in ours[0]
