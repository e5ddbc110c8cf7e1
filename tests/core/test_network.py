"""Whole-model facts (core/network.py): layer links, the first layer's input, loss values; and a
snapshot of a model with no activation site at all."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from act_diagnostics.core import ActivationMonitor
from act_diagnostics.core.kinds import KINDS
from act_diagnostics.core.network import NetworkWatch, layer_widths
from act_diagnostics.core.state import SiteState


def _snapshot(model: nn.Module, x: torch.Tensor, loss_of=lambda out: out.pow(2).mean(), steps: int = 1, detail: bool = False):
    mon = ActivationMonitor(model).attach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no activation site found"
        for _ in range(steps):
            mon.begin_step(detail=detail)
            loss_of(model(x)).backward()
            mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    return mon, snap


class HandWritten(nn.Module):
    def __init__(self, act: bool) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.drop = nn.Dropout(0.2)
        self.act = act

    def forward(self, x):
        h = self.drop(self.fc1(x))
        h = torch.relu(h) if self.act else h
        return self.fc3(self.fc2(h).view(len(x), -1))


def test_links_follow_views_and_dropout_and_stop_at_an_activation() -> None:
    _, snap = _snapshot(HandWritten(act=False), torch.randn(5, 4))
    assert sorted(snap.network.layer_links) == [("fc1", "Linear", "fc2", "Linear"), ("fc2", "Linear", "fc3", "Linear")]
    assert snap.network.layer_widths["fc1"] == (4, 8, False) and not snap.sites
    _, snap = _snapshot(HandWritten(act=True), torch.randn(5, 4))
    assert snap.network.layer_links == [("fc2", "Linear", "fc3", "Linear")]


def test_an_inplace_activation_after_a_layer_breaks_its_link() -> None:
    """Conv -> BatchNorm -> ReLU(inplace=True) -> Conv: the ReLU changed BatchNorm's output in place."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3))
    _, snap = _snapshot(model, torch.randn(2, 3, 8, 8))
    assert snap.network.layer_links == [("0", "Conv2d", "1", "BatchNorm2d")]


def test_an_output_also_summed_or_fed_to_two_layers_links_nothing() -> None:
    class Residual(nn.Module):
        def __init__(self, gate: bool) -> None:
            super().__init__()
            self.inp, self.fc, self.gate = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8) if gate else None

        def forward(self, x):
            h = self.inp(x)
            if self.gate is not None:  # two layers read h
                return self.fc(h) * torch.sigmoid(self.gate(h))
            return h + torch.relu(self.fc(h))  # h is summed with the branch

    for gate in (False, True):
        _, snap = _snapshot(Residual(gate), torch.randn(5, 4))
        assert snap.network.layer_links == []


def test_first_layer_input_statistics_match_hand_computed_values() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 3) * torch.tensor([1.0, 100.0, 1000.0]) + 50.0
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    _, snap = _snapshot(model, x, steps=1)
    net = snap.network
    flat = x.double().reshape(-1)
    assert net.first_layer == "0" and net.first_layer_type == "Linear" and net.input_elements == 48
    assert net.input_mean == pytest.approx(flat.mean().item())
    assert net.input_std == pytest.approx(flat.std(unbiased=False).item())
    assert net.input_rms == pytest.approx(flat.pow(2).mean().sqrt().item())
    assert net.input_max_abs == pytest.approx(flat.abs().max().item())


def test_input_measured_on_structure_and_detail_steps_only_and_reset_per_window() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    x = torch.randn(8, 3)
    mon = ActivationMonitor(model).attach()
    counts = []
    for step in range(5):  # 2 structure steps, then plain, detail, plain
        mon.begin_step(detail=step == 3)
        model(x).sum().backward()
        mon.end_step()
        counts.append(mon.snapshot().network.input_elements)
    mon.detach()
    assert counts == [24, 24, 0, 24, 0]


def test_the_first_layer_fed_floats_follows_an_embedding() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    _, snap = _snapshot(model, torch.randint(0, 10, (5, 3)))
    net = snap.network
    assert net.first_layer == "1" and net.after_embedding and net.input_elements == 60
    _, snap = _snapshot(nn.Sequential(nn.Linear(4, 2)), torch.randn(5, 4))
    assert snap.network.first_layer == "0" and not snap.network.after_embedding


def test_loss_values_counted_and_non_finite_ones_on_the_device() -> None:
    model = nn.Sequential(nn.Linear(3, 1), nn.Linear(1, 1))  # no activation site at all
    y = torch.tensor([[1.0], [float("nan")], [0.0]])
    _, snap = _snapshot(model, torch.randn(3, 3), loss_of=lambda out: F.mse_loss(out, y), steps=2)
    assert not snap.sites and snap.network.losses == 2 and snap.network.losses_nonfinite == 2
    assert snap.window_steps == 2


def test_the_same_loss_tensor_counts_once() -> None:
    watch = NetworkWatch()
    loss = torch.tensor(float("inf"))
    watch.observe_loss(loss)
    watch.observe_loss(loss)  # the tracer saw it in F.mse_loss, the callback in on_before_backward
    watch.observe_loss(torch.tensor(1.0))
    facts = watch.read(watch.device_totals().tolist())
    assert facts.losses == 2 and facts.losses_nonfinite == 1
    watch.reset()
    assert watch.read(watch.device_totals().tolist()).losses_nonfinite == 0


def test_an_internal_error_switches_the_facts_off_without_breaking_the_forward() -> None:
    watch = NetworkWatch()

    class Broken(nn.Linear):
        def __getattr__(self, name: str):
            if name == "out_features":
                raise RuntimeError("boom")
            return super().__getattr__(name)

    broken = Broken(2, 2)
    del broken.out_features  # now looked up through __getattr__
    with pytest.warns(RuntimeWarning, match="whole-model checks"):
        watch.layer_input("fc", broken, (torch.randn(1, 2),), structure=True, detail=False)
    assert watch.failure is not None
    watch.layer_input("fc", nn.Linear(2, 2), (torch.randn(1, 2),), structure=True, detail=False)  # inert now


def test_layer_widths() -> None:
    assert layer_widths(nn.Linear(3, 5)) == (3, 5, False)
    assert layer_widths(nn.Conv2d(8, 8, 3, groups=8)) == (8, 8, True)
    assert layer_widths(nn.BatchNorm1d(6)) == (6, 6, False)
    assert layer_widths(nn.LayerNorm(4)) == (None, None, False)


def test_observe_target_rows_hand_computed() -> None:
    state = SiteState(KINDS["softmax"], {"dim": 1}, 1, 3, torch.device("cpu"), None, 0.01)
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    state.observe_target_rows(target, 1, 1e-3)
    state.observe_target_rows(target.t(), 0, 1e-3)  # classes on dim 0
    from act_diagnostics.core.state import TARGET_ROWS_OFF

    assert state.sums[TARGET_ROWS_OFF].item() == 4 and state.counters[10] == 8
    assert not math.isnan(state.sums[TARGET_ROWS_OFF].item())


class ScratchNet(nn.Module):
    """The PyTorch tutorial's tensor-only net with bare parameters; ``act`` the clamp(min=0) it needs."""

    def __init__(self, act: bool, bias: bool = False) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Parameter(torch.randn(2, 8)), nn.Parameter(torch.randn(8, 1))
        self.b1 = nn.Parameter(torch.zeros(8))
        self.act, self.bias = act, bias

    def forward(self, x):
        h = x.mm(self.w1)
        h = h + self.b1 if self.bias else h
        return (h.clamp(min=0) if self.act else h) @ self.w2


def test_products_with_bare_parameters_are_layers() -> None:
    for bias in (False, True):
        _, snap = _snapshot(ScratchNet(act=False, bias=bias), torch.randn(4, 2))
        assert snap.network.layer_links == [("w1", "matmul", "w2", "matmul")]
        assert snap.network.layer_widths["w1"] == (2, 8, False)
    _, snap = _snapshot(ScratchNet(act=True), torch.randn(4, 2))
    assert snap.network.layer_links == []
    # nn.Linear's own F.linear is the module's (its hooks see it): no extra layer.
    _, snap = _snapshot(nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 1)), torch.randn(4, 2))
    assert snap.network.layer_links == [("0", "Linear", "1", "Linear")]
