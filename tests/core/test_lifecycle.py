"""Hook lifecycle and the step protocol: attach, pause, detach, which modules carry hooks on which
steps, the tracer on and off, and no tensor kept past its step."""

from __future__ import annotations

import gc
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from monitor_fixtures import Mixed, ModulesOnly, hook_counts, mode_stack, no_hooks

from act_diagnostics.core import ActivationMonitor


def test_detach_removes_every_hook_and_mode(train_step) -> None:
    model = Mixed()
    mon = ActivationMonitor(model).attach()
    assert no_hooks(model)  # registered by the first measured step
    mon.begin_step()
    assert not no_hooks(model)
    assert [type(m).__name__ for m in mode_stack()] == ["ActivationTracer"] and mon.tracing
    model(torch.randn(2, 4))
    mon.detach()  # mid-step
    assert no_hooks(model) and mode_stack() == [] and not mon.attached
    mon.detach()  # twice is safe
    assert no_hooks(model)
    model(torch.randn(2, 4)).sum().backward()  # the model works without the monitor


def test_attach_is_idempotent_and_reattach_works(train_step) -> None:
    model = Mixed()
    mon = ActivationMonitor(model).attach()
    counts = hook_counts(model)
    mon.attach()
    mon.attach()
    assert hook_counts(model) == counts
    train_step(mon, model, torch.randn(2, 4))
    mon.detach()
    mon.attach()
    assert hook_counts(model) == counts
    train_step(mon, model, torch.randn(2, 4))
    snap = mon.snapshot()
    mon.detach()
    assert list(snap.sites) == ["act", ":relu", ":softmax"]
    assert all(st.calls == 2 for st in snap.stats.values())


# ---------------------------------------------------------------- memory
def test_no_activation_tensor_outlives_its_step(make_mlp) -> None:
    model = make_mlp(8, 2)
    mon = ActivationMonitor(model, histogram_samples=16).attach()
    refs = []

    def keep(module, args, output):
        refs.append(weakref.ref(output))

    handles = [m.register_forward_hook(keep) for m in model if isinstance(m, (nn.ReLU, nn.Linear))]
    for step in range(3):  # structure steps and a plain one
        mon.begin_step(detail=True)
        out = model(torch.randn(4, 8))
        out.square().mean().backward()
        mon.measure_param_grads()
        mon.end_step()
        del out
        model.zero_grad(set_to_none=True)
        gc.collect()
        assert refs and all(r() is None for r in refs), step
        refs.clear()
    for h in handles:
        h.remove()
    mon.detach()


def test_state_size_is_constant_across_steps(make_mlp) -> None:
    model = make_mlp(8, 2)
    mon = ActivationMonitor(model, histogram_samples=16).attach()

    def size() -> int:
        total = 0
        for st in mon.states.values():
            for t in (st.totals, st.out_sample, st.grad_sample):
                total += 0 if t is None else t.numel()
            total += len(st.counters)
        return total + sum(mon.bookkeeping().values())

    sizes = []
    for step in range(40):
        mon.begin_step(detail=step % 2 == 0)
        model(torch.randn(4, 8)).square().mean().backward()
        mon.end_step()
        model.zero_grad(set_to_none=True)
        if step >= 4:
            sizes.append(size())
        if step % 10 == 9:
            mon.snapshot()
    mon.detach()
    assert max(sizes) == min(sizes) or max(sizes) - min(sizes) <= 2 * 16 * len(mon.states)
    assert max(sizes) < 400


def test_micro_batches_in_one_step_do_not_pile_up(make_mlp) -> None:
    model = make_mlp(8, 2)
    mon = ActivationMonitor(model).attach()
    mon.begin_step(detail=True)  # a structure step: the tracer follows tensors
    refs = []
    for _ in range(4):  # gradient accumulation
        out = model(torch.randn(4, 8))
        refs.append(weakref.ref(out))
        F.softmax(out, dim=-1).square().mean().backward()
        del out
        held = mon.bookkeeping()
        assert held["layer_outputs"] <= 3 and held["produced"] <= 3
    gc.collect()
    assert all(r() is None for r in refs[:-1])
    mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    assert snap.stats["1"].calls == 4 and snap.sites["1"].consumers == {"2"}


def _hooked(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks}


def test_after_discovery_only_activations_and_the_model_carry_hooks(train_step) -> None:
    model = ModulesOnly()
    mon = ActivationMonitor(model).attach()
    mon.begin_step()  # discovery: the layers are hooked too, to link them to the activations
    assert {"", "net.0", "net.1", "net.2", "net.3", "net.5"} <= _hooked(model)
    model(torch.randn(3, 4)).sum().backward()
    mon.end_step()
    for _ in range(4):
        train_step(mon, model, torch.randn(3, 4))
    mon.begin_step()
    assert _hooked(model) == {"", "net.1", "net.3"}  # no functional site: no owner names needed
    model(torch.randn(3, 4)).sum().backward()
    mon.end_step()
    snap = mon.snapshot()
    assert snap.stats["net.1"].calls == 6 and snap.stats["net.3"].calls == 6
    mon.detach()


def test_activation_pre_hooks_only_on_steps_that_read_inputs(train_step) -> None:
    """Pre-activation moments are a detail-step statistic: plain measured steps run the
    activation modules without a pre-hook, detail steps with one, and read the moments."""
    model = ModulesOnly()
    mon = ActivationMonitor(model).attach()
    for _ in range(3):
        train_step(mon, model, torch.randn(3, 4))
    mon.snapshot()
    relu, tanh = model.net[1], model.net[3]
    mon.begin_step()  # plain measured step
    assert not relu._forward_pre_hooks and not tanh._forward_pre_hooks
    assert relu._forward_hooks and tanh._forward_hooks
    model(torch.randn(3, 4)).sum().backward()
    mon.end_step()
    assert mon.snapshot().stats["net.3"].input_std is None
    mon.begin_step(detail=True)
    assert relu._forward_pre_hooks and tanh._forward_pre_hooks
    model(torch.randn(3, 4)).sum().backward()
    mon.end_step()
    assert mon.snapshot().stats["net.3"].input_std is not None
    mon.begin_step()  # and off again
    assert not relu._forward_pre_hooks
    mon.end_step()
    mon.detach()
    assert no_hooks(model)


def test_functional_sites_keep_the_owner_hooks(train_step) -> None:
    model = Mixed()
    mon = ActivationMonitor(model).attach()
    for _ in range(4):
        train_step(mon, model, torch.randn(2, 4))
    mon.begin_step()
    assert {"fc1", "fc2"} <= _hooked(model)  # owner names for ':relu' and ':softmax'
    mon.end_step()
    mon.detach()


def test_pause_runs_the_bare_model_and_the_next_step_measures_again(train_step) -> None:
    model = ModulesOnly()
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(3, 4))
    mon.pause()
    assert no_hooks(model) and mon.attached
    model(torch.randn(3, 4)).sum().backward()  # an unmeasured step
    train_step(mon, model, torch.randn(3, 4))
    assert mon.snapshot().stats["net.1"].calls == 2
    mon.detach()
    assert no_hooks(model)


def test_a_functional_call_first_made_late_is_found_on_a_detail_step(train_step) -> None:
    class Late(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.Tanh()
            self.late = False

        def forward(self, x):
            h = self.act(self.fc(x))
            return F.silu(h) if self.late else h

    model = Late()
    mon = ActivationMonitor(model).attach()
    for _ in range(4):
        train_step(mon, model, torch.randn(3, 4))
    assert list(mon.sites) == ["act"] and not mon.tracing
    model.late = True
    train_step(mon, model, torch.randn(3, 4))  # not a detail step: the tracer is off
    assert list(mon.sites) == ["act"]
    train_step(mon, model, torch.randn(3, 4), detail=True)
    assert list(mon.sites) == ["act", ":silu"]
    train_step(mon, model, torch.randn(3, 4))  # from now on traced on every measured step
    assert mon.snapshot().stats[":silu"].calls == 2
    mon.detach()


def test_leaving_a_with_block_counts_only_steps_that_ran(make_mlp) -> None:
    """The README's loop calls step() after each batch, so the last one opens a step that never
    runs: leaving the block does not count it."""
    model = make_mlp()
    with ActivationMonitor(model) as mon:
        for _ in range(3):
            model(torch.randn(4, model[0].in_features)).sum().backward()
            mon.step()
    snap = mon.snapshot()
    assert mon.steps == 3 and snap.window_steps == 3
    assert {st.calls for st in snap.stats.values()} == {3}


def test_the_public_probes_follow_a_step(make_mlp) -> None:
    model = make_mlp(4, 1)
    mon = ActivationMonitor(model).attach()
    assert not mon.tracing and not mon.ran_in_step and mon.bookkeeping()["hooks"] == 0
    mon.begin_step()
    assert mon.tracing and not mon.ran_in_step  # discovery: the tracer is on the mode stack
    model(torch.randn(2, 4)).sum().backward()
    held = mon.bookkeeping()
    assert mon.ran_in_step and held["produced"] > 0 and held["hooks"] > 0
    mon.end_step()
    held = mon.bookkeeping()
    assert not mon.tracing and held["produced"] == held["layer_outputs"] == held["pending_inputs"] == 0
    mon.detach()
    assert mon.bookkeeping()["hooks"] == 0
