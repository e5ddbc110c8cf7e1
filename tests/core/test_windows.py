"""Windows and snapshots: deferred results, stash and restore, steps not counted."""

from __future__ import annotations

import pytest
import torch
from monitor_fixtures import ModulesOnly

from act_diagnostics.core import ActivationMonitor


@pytest.fixture
def defer_on_cpu(monkeypatch):
    """Sites on the CPU defer as they would on an accelerator (the CPU adds at once: defers_on)."""
    monkeypatch.setattr("act_diagnostics.core.lifecycle.defers_on", lambda device, deferred: deferred)


def test_a_window_defers_results_after_its_first_steps(train_step, defer_on_cpu) -> None:
    """Off the CPU a window folds each site's results once, from its third measured step on; a
    window logged every step adds them call by call (a fold per step would cost more). Same
    statistics."""
    from act_diagnostics.core.windows import DEFER_AFTER_STEPS

    torch.manual_seed(0)
    model = ModulesOnly()
    mon = ActivationMonitor(model).attach()
    xs = [torch.randn(3, 4) for _ in range(DEFER_AFTER_STEPS + 3)]
    windows, modes = [], []
    for _ in range(2):
        for x in xs:
            mon.begin_step()
            modes.append([st.deferred for st in mon.states.values()])
            model(x).sum().backward()
            mon.end_step()
        assert not all(st.folded for st in mon.states.values())
        windows.append(mon.snapshot())
    assert modes[DEFER_AFTER_STEPS - 1] == [False, False] and modes[DEFER_AFTER_STEPS] == [True, True]
    assert modes[len(xs)] == [False, False]  # a new window starts adding call by call
    train_step(mon, model, xs[0])
    assert not any(st.deferred for st in mon.states.values())
    for name in ("net.1", "net.3"):  # same data, same weights: the same statistics
        a, b = windows[0].stats[name], windows[1].stats[name]
        assert (b.calls, b.unit_firing, b.saturation, b.max_abs) == (a.calls, a.unit_firing, a.saturation, a.max_abs)
        assert b.mean == pytest.approx(a.mean, rel=1e-9) and b.grad_rms == pytest.approx(a.grad_rms, rel=1e-9)
    mon.detach()


def test_sites_on_the_cpu_keep_no_result_past_its_step(train_step) -> None:
    """On the CPU each call adds its results at once, in every step of a window: results kept from
    step to step fragment the host heap (docs/performance.md, tenth session)."""
    from act_diagnostics.core.windows import DEFER_AFTER_STEPS, defers_on

    assert not defers_on(torch.device("cpu"), True) and defers_on(torch.device("meta"), True)
    torch.manual_seed(0)
    model = ModulesOnly()
    mon = ActivationMonitor(model).attach()
    for _ in range(DEFER_AFTER_STEPS + 3):
        train_step(mon, model, torch.randn(3, 4))
        assert mon.states and all(st.folded and not st.deferred for st in mon.states.values())
    mon.detach()


@pytest.mark.usefixtures("defer_on_cpu")
def test_a_stashed_window_comes_back_whole(train_step) -> None:
    """stash_window / restore_window (evaluation measured apart): the training window after the
    round trip equals one never interrupted, over deferred results, counters and step counts."""
    torch.manual_seed(0)
    model = ModulesOnly()
    xs = [torch.randn(6, 4) for _ in range(5)]

    def window(interrupt: bool):
        mon = ActivationMonitor(model).attach()
        train_step(mon, model, xs[0])
        mon.snapshot()
        for i, x in enumerate(xs[1:]):
            train_step(mon, model, x)
            if interrupt and i == 2:  # deferred results pending: the stash folds them first
                stash = mon.stash_window()
                with torch.no_grad():
                    for _ in range(2):
                        mon.begin_step()
                        model(torch.randn(3, 4) * 5)
                        mon.end_step(training=False)
                evaluated = mon.snapshot()
                mon.restore_window(stash)
                assert evaluated.window_steps == 2 and evaluated.stats["net.1"].calls == 2
        steps, snap = mon.steps, mon.snapshot()
        mon.detach()
        return steps, snap

    (plain_steps, plain), (steps, restored) = window(False), window(True)
    assert steps == plain_steps == 5 and restored.window_steps == plain.window_steps == 4
    for name in ("net.1", "net.3"):
        a, b = plain.stats[name], restored.stats[name]
        assert (b.calls, b.elements, b.unit_firing, b.saturation, b.max_abs) == (a.calls, a.elements, a.unit_firing, a.saturation, a.max_abs)
        assert b.mean == pytest.approx(a.mean, rel=1e-12) and b.grad_rms == pytest.approx(a.grad_rms, rel=1e-12)


def test_a_batch_without_an_optimizer_step_is_measured_but_not_counted(make_mlp, train_step) -> None:
    """Gradient accumulation: end_step(count=False) keeps the batch's measurements in the window
    and counts neither a training step nor a window step; discovery still ends on counted steps."""
    model = make_mlp(4, 1)
    mon = ActivationMonitor(model, structure_steps=2).attach()
    train_step(mon, model, torch.randn(3, 4))
    for _ in range(3):  # three micro-batches, then the step that runs the optimizer
        mon.begin_step()
        assert mon.learning_structure  # still the second training step: discovery goes on
        model(torch.randn(3, 4)).square().mean().backward()
        mon.end_step(count=False)
    assert (mon.steps, mon.window_steps) == (1, 1)
    train_step(mon, model, torch.randn(3, 4))
    assert (mon.steps, mon.window_steps) == (2, 2)
    snap = mon.snapshot()
    mon.detach()
    assert snap.window_steps == 2 and snap.stats["1"].calls == 5 and snap.stats["1"].elements == 5 * 3 * 4


def test_a_snapshot_without_reset_keeps_the_window(make_mlp, train_step) -> None:
    model = make_mlp(4, 1)
    mon = ActivationMonitor(model).attach()
    for _ in range(2):
        train_step(mon, model, torch.randn(3, 4))
    peek = mon.snapshot(reset=False)
    train_step(mon, model, torch.randn(3, 4))
    full = mon.snapshot(step=7)
    empty = mon.snapshot()
    mon.detach()
    assert (peek.window_steps, peek.stats["1"].calls) == (2, 2)
    assert (full.step, full.window_steps, full.stats["1"].calls) == (7, 3, 3)
    assert (empty.step, empty.window_steps, empty.stats["1"].calls) == (3, 0, 0)
