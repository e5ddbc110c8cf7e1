"""The benchmark tools' own logic (their timings are never asserted: see docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _in_git_checkout() -> bool:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, check=False)
    except OSError:
        return False
    return done.returncode == 0


@pytest.mark.skipif(not _in_git_checkout(), reason="compare.py exports a git ref")
def test_compare_imports_the_ref_as_its_own_package(tmp_path, monkeypatch) -> None:
    import compare

    from act_diagnostics.core.monitor import ActivationMonitor

    monkeypatch.setattr(sys, "path", list(sys.path))  # export_ref adds the export folder
    modules = dict(sys.modules)
    try:
        monitor, schedule = compare.export_ref("HEAD", tmp_path)
        assert monitor is not ActivationMonitor
        assert monitor.__module__ == "act_ref.core.monitor" and schedule.__module__ == "act_ref.callbacks.schedule"
        sources = list((tmp_path / "act_ref").rglob("*.py"))
        assert sources and not any("act_diagnostics" in p.read_text() for p in sources)
        with pytest.raises(SystemExit, match="no-such-ref"):
            compare.export_ref("no-such-ref", tmp_path / "other")
    finally:
        for name in set(sys.modules) - set(modules):
            if name == "act_ref" or name.startswith("act_ref."):
                del sys.modules[name]


def test_lightning_variant_with_tensorboard_runs_the_callback(monkeypatch) -> None:
    import overhead
    import torch
    import torch.nn as nn

    from act_diagnostics.callbacks.pl_callback import ActivationDiagnostics

    made = []

    class Counting(ActivationDiagnostics):
        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            made.append(self)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    batches = [(torch.randn(16, 4), torch.randint(0, 2, (16,))) for _ in range(4)]
    seconds = overhead.run_lightning(model, batches, 1, 3, warmup=1, tensorboard=True, callback_class=Counting)
    assert seconds > 0
    (callback,) = made
    assert callback.last_snapshot is not None and callback.last_snapshot.step == 3  # logged every step
    assert callback._publisher.tb is not None  # the TensorBoard logger was found and written to


def test_floor_minimal_monitor_computes_the_statistics_it_claims() -> None:
    """benchmarks/floor.py's lower bound is only one if its ops give the same statistics."""
    import floor
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    seen = []
    model[1].register_forward_hook(lambda m, a, y: seen.append(y.detach().clone()))
    mon = floor.Minimal(model)
    mon.attach()
    x = torch.randn(16, 4)
    out = model(x)
    F.cross_entropy(out, torch.randint(0, 3, (16,))).backward()
    mon.detach()
    (y,) = seen
    total, squares, peak, firing, grad_squares = mon.kept
    assert total.item() == pytest.approx(y.sum().item()) and squares.item() == pytest.approx((y * y).sum().item())
    assert peak.item() == y.max().item() and firing.tolist() == (y > 0).sum(0).float().tolist()
    assert grad_squares.item() > 0
    mon.after(0)
    assert mon.kept == []


def test_floor_act_with_minimal_ops_runs_them_at_the_monitors_sites() -> None:
    """floor.py's act-minops variant measures the monitor's plumbing only if the monitor's sites
    really run the minimal ops in place of their own statistics."""
    import floor
    import overhead
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    seen = []
    model[3].register_forward_hook(lambda m, a, y: seen.append(y.detach().clone()))
    variant = floor.ActMinimalOps(model)
    batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    overhead.run_steps(model, opt, batches, variant, 1)  # discovery: the sites' own statistics
    variant.attach()
    variant.before(1)  # the step that runs with the minimal ops
    counters = list(variant.mon.states["3"].counters)
    x, target = batches[0]
    F.cross_entropy(model(x), target).backward()
    kept = variant.kept
    assert len(kept) == 2 * 4 + 2  # four output statistics per site, then a gradient each
    total, squares, peak, firing = kept[4:8]
    y = seen[-1]
    assert total.item() == pytest.approx(y.sum().item()) and peak.item() == y.max().item()
    assert firing.tolist() == (y > 0).sum(0).float().tolist()
    variant.mon.end_step()
    assert variant.mon.states["3"].counters == counters  # the site's own statistics did not run
    variant.after(1)
    assert variant.kept == []
    variant.detach()
