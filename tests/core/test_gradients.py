"""Gradients: activation-gradient hooks, the AMP loss scale, feeding-layer gradient norms and FSDP shards."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from act_diagnostics.core import ActivationMonitor


def test_gradients_false_registers_no_tensor_hooks(make_mlp, train_step) -> None:
    model = make_mlp(4, 2)
    mon = ActivationMonitor(model, gradients=False).attach()
    train_step(mon, model, torch.randn(2, 4))
    snap = mon.snapshot()
    mon.detach()
    assert all(st.grad_rms is None for st in snap.stats.values())


def test_param_grad_norm_covers_weight_norm_parametrizations(train_step) -> None:
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Linear(4, 4, bias=False)), nn.ReLU(), nn.Linear(4, 2))
    mon = ActivationMonitor(model).attach()
    mon.begin_step(detail=True)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    mon.measure_param_grads()
    mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    expected = torch.sqrt(sum(p.grad.pow(2).sum() for p in model[0].parametrizations.parameters())).item()
    assert mon.sites["1"].feeding_layer == "0"
    assert snap.stats["1"].param_grad_norm == pytest.approx(expected, rel=1e-5)


def test_the_amp_loss_scale_is_divided_out_of_activation_gradients() -> None:
    """float16 AMP: backward ran on loss * scale; grad_rms is the unscaled gradient's, by hand."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    mon = ActivationMonitor(model).attach()
    mon.grad_scale = lambda: torch.tensor(1024.0)
    mon.begin_step()
    y = model(torch.randn(5, 3))
    y.retain_grad()
    (y.sum() * 1024.0).backward()  # d(loss)/dy = 1 everywhere, scaled by 1024
    mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    assert snap.stats["1"].grad_rms == pytest.approx(1.0) and snap.grad_scale == 1024.0
    assert torch.equal(y.grad, torch.full((5, 4), 1024.0))  # the model's own gradient is untouched


def test_param_grad_norm_is_the_feeding_layers_gradient_norm(train_step) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    mon = ActivationMonitor(model).attach()
    norms = []
    for _ in range(2):
        mon.begin_step()
        model(torch.randn(6, 3)).square().mean().backward()
        layer = model[0]
        norms.append(float(torch.cat([layer.weight.grad.flatten(), layer.bias.grad]).norm()) ** 2)
        mon.measure_param_grads()
        mon.end_step()
        model.zero_grad(set_to_none=True)
    snap = mon.snapshot()
    mon.detach()
    # the root mean square over the window's steps of the feeding layer's gradient norm
    assert snap.stats["1"].param_grad_norm == pytest.approx((sum(norms) / 2) ** 0.5, rel=1e-6)


def test_a_sharded_gradient_counts_as_the_full_gradient() -> None:
    from act_diagnostics.core.gradients import local_shard

    g = torch.randn(4, 2)
    local, shards = local_shard(g)
    assert torch.equal(local, g) and shards == 1

    class Placement:
        def __init__(self, shard: bool, partial: bool = False) -> None:
            self.shard, self.partial = shard, partial

        def is_shard(self) -> bool:
            return self.shard

        def is_partial(self) -> bool:
            return self.partial

    class Sharded:  # what matters of an FSDP2 DTensor gradient: mesh, placements, local shard
        def __init__(self, placements: list) -> None:
            self.placements, self.device_mesh = placements, type("Mesh", (), {"shape": (2, 3)})()

        def detach(self) -> Sharded:
            return self

        def to_local(self) -> torch.Tensor:
            return g

    assert local_shard(Sharded([Placement(True), Placement(False)]))[1] == 2  # sharded over the first dim of the mesh
    assert local_shard(Sharded([Placement(True), Placement(True)]))[1] == 6
    assert local_shard(Sharded([Placement(True), Placement(False, partial=True)])) is None  # pending sums: no local norm
