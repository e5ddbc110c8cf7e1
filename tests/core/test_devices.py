"""The monitor's statistics on every available device (the CPU here; CUDA where torch sees a GPU)
equal float64 values computed by hand on the CPU from the same outputs and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from act_diagnostics.core import ActivationMonitor

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_statistics_on_the_device_equal_float64_by_hand(device: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1), nn.Sigmoid()).to(device)
    x, target = torch.randn(64, 16, device=device), torch.rand(64, 1, device=device)
    outputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            outputs[name] = out.detach().cpu().double()
            out.register_hook(lambda g: grads.__setitem__(name, g.detach().cpu().double()))

        return hook

    handles = [model[i].register_forward_hook(keep(str(i))) for i in (1, 3, 5)]
    mon = ActivationMonitor(model).attach()
    try:
        mon.begin_step(detail=True)
        F.mse_loss(model(x), target).backward()
        mon.end_step()
        snap = mon.snapshot(step=0)
    finally:
        mon.detach()
        for h in handles:
            h.remove()
    assert all(st.device.type == torch.device(device).type for st in mon.states.values())
    firing = {"1": lambda y: y > 0, "3": lambda y: y > 0, "5": lambda y: y > 0.5}
    for name, y in outputs.items():
        s, g = snap.stats[name], grads[name]
        assert s.mean == pytest.approx(y.mean().item(), rel=1e-5, abs=1e-7)
        assert s.rms == pytest.approx(y.pow(2).mean().sqrt().item(), rel=1e-5)
        assert s.max_abs == pytest.approx(y.abs().max().item(), rel=1e-6)
        assert s.firing_rate == pytest.approx(firing[name](y).double().mean().item(), abs=1e-12)
        assert s.unit_firing == pytest.approx(firing[name](y).double().mean(0).tolist(), abs=1e-12)
        assert s.grad_rms == pytest.approx(g.pow(2).mean().sqrt().item(), rel=1e-5)
    assert snap.stats["5"].target_outside == 0.0  # sigmoid head, targets in [0, 1]


@pytest.mark.parametrize("device", DEVICES)
def test_attention_weights_on_the_device_equal_float64_by_hand(device: str) -> None:
    from act_diagnostics.core.attention import attention_probabilities

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    mask = torch.rand(6, 6) > 0.3
    mask[:, :2] = True  # every query sees at least two keys
    got = attention_probabilities(tuple(t.to(device) for t in (q, k, v)), {"attn_mask": mask.to(device)}, None)
    scores = (q.double() @ k.double().transpose(-2, -1)) / 8**0.5
    want = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1).reshape(8, 6, 6)
    assert got.device.type == device and torch.allclose(got.cpu().double(), want, atol=1e-5)
