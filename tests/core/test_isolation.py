"""Training never breaks because of the monitor: errors inside and around hooks, other function modes,
another monitor, copies and jit traces of the model, TorchScript and compiled models, bad options."""

from __future__ import annotations

import pickle
import re
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monitor_fixtures import Mixed, mode_stack, no_hooks
from torch.overrides import TorchFunctionMode

from act_diagnostics.core import ActivationMonitor, MonitorConfig, MonitorFailure
from act_diagnostics.core.state import SiteState


def test_exception_mid_forward_leaves_nothing_behind() -> None:
    class Boom(nn.Module):
        def forward(self, x):
            x = F.relu(x)
            raise ValueError("boom")

    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), Boom())
    with pytest.raises(ValueError, match="boom"), ActivationMonitor(model):
        model(torch.randn(1, 2))
    assert no_hooks(model) and mode_stack() == []


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
    assert mode_stack() == []
    assert no_hooks(model) and mon.attached  # off for the run: the model runs bare until detach
    mon.snapshot()  # still readable
    mon.detach()
    assert no_hooks(model)


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
        assert mode_stack() == [outer]
        mon.detach()
    assert mon.failure is None and len(mon.sites) == 3


def test_config_errors_name_the_argument() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"`model` must be a torch\.nn\.Module, got int"):
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
        assert mode_stack() == [inner]
        mon.begin_step()
        model(torch.randn(2, 4))
        mon.end_step()
    assert mode_stack() == [inner] and mon.failure is None
    inner.__exit__(None, None, None)
    snap = mon.snapshot()
    mon.detach()
    assert mode_stack() == [] and no_hooks(model)
    assert snap.stats and all(st.calls == 2 for st in snap.stats.values())


def test_two_monitors_on_one_model_each_measure_every_step() -> None:
    model = Mixed()
    with ActivationMonitor(model) as a, ActivationMonitor(model) as b:
        for _ in range(4):
            model(torch.randn(2, 4)).sum().backward()
            b.step()
            a.step()
        snaps = a.snapshot(), b.snapshot()
    assert a.failure is None and b.failure is None and mode_stack() == []
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
    assert mode_stack() == [] and no_hooks(model)


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
    assert no_hooks(model)


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
        assert mode_stack() == []
    mon.detach()
    assert mode_stack() == [] and mon.failure is None
