"""Hook lifecycle, failure isolation, host syncs and memory of the monitor."""

from __future__ import annotations

import re

import gc
import pickle
import warnings
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from act_diagnostics.core import ActivationMonitor, MonitorConfig, MonitorFailure
from act_diagnostics.core.state import SiteState


def _hook_counts(model: nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def _no_hooks(model: nn.Module) -> bool:
    return all(f == 0 and p == 0 for f, p in _hook_counts(model))


def _mode_stack() -> list:
    return list(torch.overrides._get_current_function_mode_stack())


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)
        self.act = nn.GELU()

    def forward(self, x):
        return F.softmax(self.fc2(F.relu(self.act(self.fc1(x)))), dim=-1)


def test_detach_removes_every_hook_and_mode(train_step) -> None:
    model = Mixed()
    mon = ActivationMonitor(model).attach()
    assert _no_hooks(model)  # registered by the first measured step
    mon.begin_step()
    assert not _no_hooks(model)
    assert [type(m).__name__ for m in _mode_stack()] == ["ActivationTracer"] and mon.tracing
    model(torch.randn(2, 4))
    mon.detach()  # mid-step
    assert _no_hooks(model) and _mode_stack() == [] and not mon.attached
    mon.detach()  # twice is safe
    assert _no_hooks(model)
    model(torch.randn(2, 4)).sum().backward()  # the model works without the monitor


def test_attach_is_idempotent_and_reattach_works(train_step) -> None:
    model = Mixed()
    mon = ActivationMonitor(model).attach()
    counts = _hook_counts(model)
    mon.attach()
    mon.attach()
    assert _hook_counts(model) == counts
    train_step(mon, model, torch.randn(2, 4))
    mon.detach()
    mon.attach()
    assert _hook_counts(model) == counts
    train_step(mon, model, torch.randn(2, 4))
    snap = mon.snapshot()
    mon.detach()
    assert list(snap.sites) == ["act", ":relu", ":softmax"]
    assert all(st.calls == 2 for st in snap.stats.values())


def test_exception_mid_forward_leaves_nothing_behind() -> None:
    class Boom(nn.Module):
        def forward(self, x):
            x = F.relu(x)
            raise ValueError("boom")

    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), Boom())
    with pytest.raises(ValueError, match="boom"):
        with ActivationMonitor(model):
            model(torch.randn(1, 2))
    assert _no_hooks(model) and _mode_stack() == []


def test_exception_inside_an_activation_module_keeps_depth_consistent(train_step) -> None:
    class Bad(nn.ReLU):
        fail = True

        def forward(self, x):
            if self.fail:
                raise RuntimeError("bad activation")
            return super().forward(x)

    act = Bad()
    model = nn.Sequential(nn.Linear(2, 2), act, nn.Linear(2, 2), nn.Tanh())
    mon = ActivationMonitor(model).attach()
    mon.begin_step()
    with pytest.raises(RuntimeError, match="bad activation"):
        model(torch.randn(1, 2))
    mon.end_step()
    act.fail = False
    train_step(mon, model, torch.randn(1, 2))
    mon.detach()
    assert mon.activation_depth == 0 and mon.failure is None
    assert mon.snapshot().stats["3"].calls == 1


def test_internal_error_disables_with_one_warning(monkeypatch, make_mlp, train_step) -> None:
    def broken(self, x, y, detail):
        raise RuntimeError("internal bug")

    monkeypatch.setattr(SiteState, "observe", broken)
    model = make_mlp(4, 3)
    mon = ActivationMonitor(model).attach()
    with pytest.warns(MonitorFailure, match="internal bug") as caught:
        for _ in range(3):
            out = train_step(mon, model, torch.randn(2, 4), detail=True)
    failures = [w for w in caught if issubclass(w.category, MonitorFailure)]
    assert len(failures) == 1
    assert isinstance(mon.failure, RuntimeError) and not mon.enabled
    assert out.shape == (2, 3)
    assert _mode_stack() == []
    assert _no_hooks(model) and mon.attached  # off for the run: the model runs bare until detach
    mon.snapshot()  # still readable
    mon.detach()
    assert _no_hooks(model)


def test_internal_error_in_structure_tracking_does_not_break_training(monkeypatch, train_step) -> None:
    def broken(self, *args, **kwargs):
        raise RuntimeError("tracking bug")

    from act_diagnostics.core.structure import StructureFacts

    monkeypatch.setattr(StructureFacts, "produced_by", broken)
    model = Mixed()
    mon = ActivationMonitor(model).attach()
    with pytest.warns(MonitorFailure, match="tracking bug") as caught:
        for _ in range(2):
            train_step(mon, model, torch.randn(2, 4), target=torch.tensor([0, 1]), loss_fn=lambda p, t: F.nll_loss(torch.log(p), t))
    assert sum(issubclass(w.category, MonitorFailure) for w in caught) == 1
    mon.detach()


def test_user_errors_inside_traced_calls_propagate_unchanged() -> None:
    model = Mixed()
    mon = ActivationMonitor(model).attach()
    mon.begin_step()
    with pytest.raises(IndexError):
        F.softmax(torch.randn(2, 3), dim=5)
    with pytest.raises(ValueError, match="Expected input batch_size"):
        F.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1, 2]))
    mon.end_step()
    mon.detach()
    assert mon.failure is None


def test_user_mode_pushed_outside_survives() -> None:
    class Outer(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    model = Mixed()
    with Outer() as outer:
        mon = ActivationMonitor(model).attach()
        mon.begin_step()
        model(torch.randn(2, 4))
        mon.end_step()
        assert _mode_stack() == [outer]
        mon.detach()
    assert mon.failure is None and len(mon.sites) == 3


def test_config_errors_name_the_argument() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module, got int"):
        ActivationMonitor(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="either `config` or keyword options"):
        ActivationMonitor(model, MonitorConfig(), gradients=False)
    with pytest.raises(ValueError, match=r"`kinds` entries must be activation kinds or families; got \['swish'\]"):
        MonitorConfig(kinds=["swish"])
    with pytest.raises(TypeError, match="`include` must be a string or a list of strings"):
        MonitorConfig(include=3)
    with pytest.raises(ValueError, match=r"`saturation_eps` must be a number in \(0, 0.5\), got 0.7"):
        MonitorConfig(saturation_eps=0.7)
    with pytest.raises(ValueError, match="`sample_elements` must be a positive int or None"):
        MonitorConfig(sample_elements=0)
    with pytest.raises(ValueError, match="`histogram_samples` must be an int >= 0"):
        MonitorConfig(histogram_samples=-1)
    with pytest.raises(ValueError, match="`structure_steps` must be an int >= 0"):
        MonitorConfig(structure_steps=True)
    with pytest.raises(TypeError, match="`unit_dim` must be an int or None"):
        MonitorConfig(unit_dim=1.0)
    with pytest.raises(TypeError, match="`gradients` must be True or False"):
        MonitorConfig(gradients=1)
    with pytest.raises(ValueError, match=r"`dead_unit_rate` must be a number in \[0, 1\), got 1.5"):
        MonitorConfig(dead_unit_rate=1.5)
    assert MonitorConfig(include="a.*").include == ("a.*",)
    with pytest.raises(TypeError, match="`config` must be a MonitorConfig, got dict; pass its fields as keyword options"):
        ActivationMonitor(model, {"include": "0*"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown option\\(s\\) 'sample_element' for ActivationMonitor; valid options: include, "):
        ActivationMonitor(model, sample_element=1000)


def test_numpy_scalars_are_numbers() -> None:
    """Values read from a YAML or numpy config: taken as the plain numbers they hold."""
    import numpy as np

    config = MonitorConfig(saturation_eps=np.float32(0.05), sample_elements=np.int64(1000), unit_dim=np.int32(1))
    assert config.saturation_eps == pytest.approx(0.05) and type(config.saturation_eps) is float
    assert config.sample_elements == 1000 and type(config.sample_elements) is int
    assert type(config.unit_dim) is int
    with pytest.raises(ValueError, match="`sample_elements` must be a positive int"):
        MonitorConfig(sample_elements=np.float64(10.0))


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


def test_gradients_false_registers_no_tensor_hooks(make_mlp, train_step) -> None:
    model = make_mlp(4, 2)
    mon = ActivationMonitor(model, gradients=False).attach()
    train_step(mon, model, torch.randn(2, 4))
    snap = mon.snapshot()
    mon.detach()
    assert all(st.grad_rms is None for st in snap.stats.values())


def test_model_stays_picklable_after_detach(make_mlp, train_step) -> None:
    model = make_mlp(4, 1)
    mon = ActivationMonitor(model).attach()
    train_step(mon, model, torch.randn(2, 4))
    mon.detach()
    pickle.loads(pickle.dumps(model))


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_of_an_attached_model_carry_inert_hooks(how: str, train_step) -> None:
    """An EMA/SWA copy (deepcopy) or torch.save(model) made while the hooks are on: the copy works
    and saves like the plain model, measures nothing, and leaves the monitor's windows alone."""
    import copy

    model = Mixed()  # a functional site: the monitor holds autograd node types, which do not pickle
    mon = ActivationMonitor(model).attach()
    for _ in range(3):
        train_step(mon, model, torch.randn(2, 4))
    mon.begin_step(detail=True)  # mid-step: every hook is on
    clone = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    model(torch.randn(2, 4)).sum().backward()
    mon.end_step()
    counters = {name: list(state.counters) for name, state in mon.states.items()}
    clone(torch.randn(5, 4)).sum().backward()  # as an EMA model's evaluation would
    assert {name: list(state.counters) for name, state in mon.states.items()} == counters
    copied = {getattr(h, "__self__", None) for m in clone.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())}
    assert len(copied) == 1 and mon not in copied
    (inert,) = copied
    assert not inert.attached and not inert.states and inert.model is not clone
    pickle.loads(pickle.dumps(clone))(torch.randn(2, 4))  # and it saves again
    train_step(mon, model, torch.randn(2, 4))
    assert mon.states[":relu"].counters[0] == counters[":relu"][0] + 1  # the monitor measures on
    mon.detach()


@pytest.mark.parametrize("detail", [False, True])
def test_jit_trace_of_an_attached_model_is_not_measured(detail: bool, train_step) -> None:
    """torch.jit.trace mid-step (exporting a checkpoint): the trace records the plain model, its
    forwards are not calls, and the step's own measuring goes on afterwards."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    mon = ActivationMonitor(model).attach()
    if detail:
        train_step(mon, model, torch.randn(3, 4))
    mon.begin_step(detail=detail)  # on the first step, discovery's hooks are all on
    model(torch.randn(3, 4)).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, torch.randn(3, 4), check_trace=False)  # its check re-runs forward untraced
    model(torch.randn(3, 4)).sum().backward()  # the same step goes on after the trace
    mon.end_step()
    assert mon.failure is None and mon.steps == 1 + detail
    snap = mon.snapshot()
    assert snap.stats["1"].calls == 2 + detail and snap.stats["1"].elements == 8 * 3 * (2 + detail)
    x = torch.randn(5, 4)
    assert torch.equal(traced(x), model(x))
    mon.detach()


def test_jit_trace_of_a_submodule_with_a_functional_activation() -> None:
    """The tracer is on the mode stack mid-step: a traced submodule's F.relu is not measured (with
    the trace's own check, measuring made its two traces differ and the trace raise)."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return F.relu(self.fc(x))

    model = nn.Sequential(Block(), nn.Linear(4, 2))
    mon = ActivationMonitor(model).attach()
    mon.begin_step(detail=True)
    model(torch.randn(3, 4)).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.jit.trace(model[0], torch.randn(3, 4), check_trace=False)  # its check re-runs it untraced
    mon.end_step()
    assert mon.failure is None and set(mon.sites) == {"0:relu"}
    assert mon.snapshot().stats["0:relu"].calls == 1  # the step's own call only
    mon.detach()


# ---------------------------------------------------------------- host syncs
class CountTransfers:
    """Counts device-to-host reads (item, tolist, cpu, numpy, bool/float/int of a tensor) from Python,
    including those made under torch._C.DisableTorchFunction (the monitor's own maths)."""

    READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        for name in self.READS:
            original = getattr(torch.Tensor, name)

            def wrapped(tensor, *a, __orig=original, **k):
                self.count += 1
                return __orig(tensor, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, wrapped)


@pytest.mark.parametrize("depth, act", [(2, nn.GELU), (2, nn.Sigmoid), (100, nn.Tanh)])
def test_no_host_sync_during_steps_and_constant_per_snapshot(depth: int, act, monkeypatch, make_mlp) -> None:
    model = make_mlp(16, depth, act=act)
    x = torch.randn(4, 16)
    mon = ActivationMonitor(model, structure_steps=1).attach()
    counter = CountTransfers(monkeypatch)
    for i in range(3):
        mon.begin_step(detail=(i == 1))
        loss = F.softmax(model(x), dim=-1).square().mean()
        loss.backward()
        mon.measure_param_grads()
        mon.end_step()
    during_steps = counter.count
    mon.snapshot()
    per_snapshot = counter.count - during_steps
    monkeypatch.undo()
    mon.detach()
    assert during_steps == 0
    assert 1 <= per_snapshot <= 2
    assert len(mon.sites) == depth + 1


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


def test_user_mode_left_above_the_tracer_is_not_disturbed() -> None:
    """A mode opened after the tracer and still open at the end of the step (a `with torch.device`
    around the loop): the tracer is taken out from under it, measuring goes on, and the user's
    mode still closes itself."""

    class Inner(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    model = Mixed()
    mon = ActivationMonitor(model).attach()
    mon.begin_step()
    inner = Inner().__enter__()
    model(torch.randn(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no MonitorFailure
        mon.end_step()
        assert _mode_stack() == [inner]
        mon.begin_step()
        model(torch.randn(2, 4))
        mon.end_step()
    assert _mode_stack() == [inner] and mon.failure is None
    inner.__exit__(None, None, None)
    snap = mon.snapshot()
    mon.detach()
    assert _mode_stack() == [] and _no_hooks(model)
    assert snap.stats and all(st.calls == 2 for st in snap.stats.values())


def test_two_monitors_on_one_model_each_measure_every_step() -> None:
    model = Mixed()
    with ActivationMonitor(model) as a, ActivationMonitor(model) as b:
        for _ in range(4):
            model(torch.randn(2, 4)).sum().backward()
            b.step()
            a.step()
        snaps = a.snapshot(), b.snapshot()
    assert a.failure is None and b.failure is None and _mode_stack() == []
    assert snaps[0].stats.keys() == snaps[1].stats.keys()
    assert all(st.calls == 4 for snap in snaps for st in snap.stats.values())
    # Closed out of order: neither tracer stays on torch's mode stack.
    a, b = ActivationMonitor(model).attach(), ActivationMonitor(model).attach()
    a.begin_step()
    b.begin_step()
    a.end_step()
    a.detach()
    b.end_step()
    b.detach()
    assert _mode_stack() == [] and _no_hooks(model)


class ModulesOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Dropout(0.0), nn.Linear(8, 2))

    def forward(self, x):
        return self.net(x)


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
    assert _no_hooks(model)


def test_a_window_defers_results_after_its_first_steps(train_step) -> None:
    """A window folds each site's results once, from its third measured step on; a window logged
    every step adds them call by call (a fold per step would cost more). Same statistics."""
    from act_diagnostics.core.monitor import DEFER_AFTER_STEPS

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
    assert _no_hooks(model) and mon.attached
    model(torch.randn(3, 4)).sum().backward()  # an unmeasured step
    train_step(mon, model, torch.randn(3, 4))
    assert mon.snapshot().stats["net.1"].calls == 2
    mon.detach()
    assert _no_hooks(model)


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


def test_torchscript_submodules_are_skipped_with_one_warning_and_the_rest_measured() -> None:
    from act_diagnostics.core import UnmeasuredModules

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), torch.jit.script(nn.Sequential(nn.Linear(8, 8), nn.Tanh())), nn.Linear(8, 2))
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        mon = ActivationMonitor(model).attach()
        for _ in range(3):
            mon.begin_step(detail=True)
            model(torch.randn(5, 4)).sum().backward()
            mon.end_step()
        snap = mon.snapshot()
        mon.detach()
    ours = [r for r in records if r.category.__module__.startswith("act_diagnostics")]
    assert [r.category for r in ours] == [UnmeasuredModules] and "(2)" in str(ours[0].message)
    assert mon.failure is None and sorted(snap.stats) == ["1"] and snap.stats["1"].calls == 3
    assert _no_hooks(model)


def test_a_torchscript_model_is_refused_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match="TorchScript"):
        ActivationMonitor(torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.ReLU())))


@pytest.mark.parametrize("how", ["wrapped", "submodule", "in_place"])
def test_a_compiled_model_is_refused_with_a_clear_error(how: str) -> None:
    """torch.compile'd modules (a wrapper, a compiled submodule, nn.Module.compile()) would trace or
    skip the hooks: refused at construction, naming the module, before anything compiles."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    if how == "wrapped":
        model, name = torch.compile(model, backend="eager"), "<model>"
    elif how == "submodule":
        model, name = nn.Sequential(torch.compile(model, backend="eager"), nn.Tanh()), "0"
    else:
        model[1].compile(backend="eager")
        name = "1"
    with pytest.raises(TypeError, match=rf"torch.compile'd \({re.escape(name)}\).*_orig_mod"):
        ActivationMonitor(model)


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


def test_a_shared_block_checkpointed_twice_keeps_each_calls_gradient() -> None:
    """Reentrant checkpoints re-run in backward last first: each call's gradient goes to its own
    site (they were swapped), as without checkpointing."""
    from torch.utils.checkpoint import checkpoint

    class Net(nn.Module):
        def __init__(self, use_checkpoint: bool) -> None:
            super().__init__()
            self.fc, self.act, self.head = nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 1)
            self.use_checkpoint = use_checkpoint

        def block(self, h):
            return self.act(self.fc(h))

        def forward(self, x):
            h = x
            for _ in range(2):
                h = checkpoint(self.block, h, use_reentrant=True) if self.use_checkpoint else self.block(h)
            return self.head(h * torch.arange(1.0, 7.0))  # unequal weights: the two calls' gradients differ

    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)
        model = Net(use_checkpoint)
        x = torch.randn(5, 6, requires_grad=True)
        mon = ActivationMonitor(model).attach()
        mon.begin_step()
        model(x).pow(2).sum().backward()
        mon.end_step()
        snap = mon.snapshot()
        mon.detach()
        grads.append([snap.stats[n].grad_rms for n in ("act", "act#1")])
    plain, checkpointed = grads
    assert plain[0] != pytest.approx(plain[1], rel=0.1)
    assert checkpointed == pytest.approx(plain, rel=1e-6)



def test_calls_repeated_inside_one_checkpointed_region_keep_their_gradients() -> None:
    """A reentrant checkpoint re-runs the calls of one region in forward order (regions last first):
    a ResNet block's shared ReLU, or F.silu called twice, gets each call's gradient back at its call."""
    from torch.utils.checkpoint import checkpoint

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.act = nn.Linear(6, 6), nn.Linear(6, 6), nn.ReLU()

        def forward(self, h):
            h = F.silu(self.act(self.fc1(h)))
            return F.silu(self.act(self.fc2(h)) * torch.arange(1.0, 7.0))  # unequal: the calls' gradients differ

    class Net(nn.Module):
        def __init__(self, use_checkpoint: bool) -> None:
            super().__init__()
            self.blocks, self.head = nn.ModuleList([Block(), Block()]), nn.Linear(6, 1)
            self.use_checkpoint = use_checkpoint

        def forward(self, x):
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=True) if self.use_checkpoint else block(x)
            return self.head(x)

    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)
        model = Net(use_checkpoint)
        mon = ActivationMonitor(model).attach()
        mon.begin_step()
        model(torch.randn(5, 6, requires_grad=True)).pow(2).sum().backward()
        mon.end_step()
        snap = mon.snapshot()
        mon.detach()
        grads.append({name: st.grad_rms for name, st in snap.stats.items()})
    plain, checkpointed = grads
    assert sorted(plain) == sorted(checkpointed) and {"blocks.0.act#1", "blocks.1:silu#1"} <= set(plain)
    assert plain["blocks.0.act"] != pytest.approx(plain["blocks.0.act#1"], rel=0.1)
    assert checkpointed == pytest.approx(plain, rel=1e-6)


class GeluMLP(nn.Module):
    """A functional activation: measured by the tracer (detail steps) or at its consumer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


@pytest.mark.parametrize("functional", [False, True], ids=["modules", "functional"])
@pytest.mark.parametrize("detail", [False, True], ids=["plain_step", "detail_step"])
def test_statistic_ops_stay_out_of_other_torch_function_modes(make_mlp, train_step, functional, detail) -> None:
    """A user's TorchFunctionMode (a FLOP counter) sees the model's ops only, whether the
    monitor's tracer is on (detail steps, functional sites) or off."""
    from torch.overrides import TorchFunctionMode

    class Counting(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            self.calls += 1
            return func(*args, **(kwargs or {}))

    model, x = (GeluMLP() if functional else make_mlp()), torch.randn(4, 8)
    with Counting() as bare:
        model(x)
    mon = ActivationMonitor(model).attach()
    for _ in range(4):  # past discovery
        train_step(mon, model, x)
    mon.begin_step(detail=detail)
    with Counting() as seen:
        model(x)
    mon.end_step()
    mon.detach()
    assert seen.calls == bare.calls


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


def test_a_later_forward_under_a_users_mode_does_not_restart_the_tracer_above_it() -> None:
    """After stop_tracing(), a forward inside `with torch.device(...)`: the tracer is not entered
    above that mode (its exit would pop the tracer and leave itself on the stack for good)."""
    model = Mixed()
    mon = ActivationMonitor(model).attach()
    for _ in range(3):
        mon.begin_step()
        loss = model(torch.randn(2, 4)).sum()
        mon.stop_tracing()
        loss.backward()
        with torch.no_grad(), torch.device("cpu"):
            model(torch.randn(2, 4))
        mon.end_step()
        assert _mode_stack() == []
    mon.detach()
    assert _mode_stack() == [] and mon.failure is None
