"""Faults: a user exception mid-fit, an internal error, NaN/Inf inputs, and invalid arguments."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from prod_models import Classifier, MonitorOptions, OutputOptions, RuleOptions, diagnostics, hook_count, loader, trainer

import act_diagnostics.core.state as state_module
from act_diagnostics.core.monitor import MonitorFailure
from act_diagnostics.rules import ActivationWarning


class FailsAtStep2(Classifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if batch_idx == 2:
            raise RuntimeError("user bug in training_step")
        return super().training_step(batch, batch_idx)


def test_user_exception_leaves_no_hook_and_no_function_mode(tmp_path):
    model = FailsAtStep2()
    cb = diagnostics(rules=False, log_every_n_steps=1)
    with pytest.raises(RuntimeError, match="user bug in training_step"):
        trainer(tmp_path, [cb], max_steps=6).fit(model, loader())
    assert hook_count(model) == 0 and not cb.monitor.attached
    assert not torch.overrides._get_current_function_mode_stack()  # the tracer was entered at batch start
    # a fresh fit re-attaches cleanly (no pile-up) and removes everything again
    trainer(tmp_path, [cb], max_steps=2).fit(Classifier(net=model.net), loader())
    assert hook_count(model) == 0


class NaNLossAtStep6(Classifier):
    """Training stops with the user's own error once the loss goes NaN (a common guard)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step >= 6:
            batch = (batch[0] * float("inf"), batch[1])
        loss = super().training_step(batch, batch_idx)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()}")
        return loss


def test_a_failing_run_reports_its_last_window_and_the_failing_step(tmp_path):
    """What was measured after the last log step, the failing step included, is judged and
    written: the NaN that stopped the run is in the report (the old code dropped it)."""
    cb = diagnostics(log_every_n_steps=5, measure_every_n_steps=1, outputs=OutputOptions())
    with pytest.raises(FloatingPointError), pytest.warns(ActivationWarning, match=r"non-finite\] error at step 6"):
        trainer(tmp_path, [cb], max_steps=20).fit(NaNLossAtStep6(), loader())
    assert [(f.rule, f.step) for f in cb.report.findings if f.rule == "non-finite"] == [("non-finite", 6)]
    assert cb.report.stopped == {"step": 6, "exception": "FloatingPointError: loss is nan", "where": "training step", "scheduled": True, "measured": True}
    assert cb.last_snapshot is not None and cb.last_snapshot.step == 6 and cb.monitor.window_steps == 0
    assert not cb.monitor.attached
    report = (Path(cb.report_dir) / "report.json").read_text()
    assert '"non-finite"' in report


def test_a_run_stopped_at_an_unmeasured_step_says_so(tmp_path):
    """The automatic schedule measures about half the steps at interval 10: a guard raising at a
    step it skipped leaves no finding, so the report says how the run ended rather than look clean."""
    from act_diagnostics.callbacks.schedule import StepSchedule

    schedule = StepSchedule(10, None)
    unmeasured = next(s for s in range(11, 20) if not schedule.plan(s).measure)

    class StopsAt(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.global_step == unmeasured:
                raise FloatingPointError("loss is nan")
            return super().training_step(batch, batch_idx)

    cb = diagnostics(log_every_n_steps=10, outputs=OutputOptions())
    with pytest.raises(FloatingPointError):
        trainer(tmp_path, [cb], max_steps=30).fit(StopsAt(), loader(n=256))
    assert cb.report.stopped == {"step": unmeasured, "exception": "FloatingPointError: loss is nan", "where": "training step", "scheduled": False, "measured": False}
    line = cb.report.stopped_line()
    assert line.startswith(f"Training stopped at step {unmeasured} with FloatingPointError: loss is nan. That step was not measured")
    assert line in cb.report.console_table() and "measure_every_n_steps=1" in line
    saved = json.loads((Path(cb.report_dir) / "report.json").read_text())
    assert saved["stopped"]["measured"] is False
    trainer(tmp_path, [cb], max_steps=2).fit(Classifier(), loader())  # a new run ends normally
    assert cb.report.stopped is None and "stopped" not in cb.report.console_table()


class FailsInValidation(Classifier):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        raise RuntimeError("validation boom")


class FailsInTest(Classifier):
    def test_step(self, batch: Any, batch_idx: int) -> None:
        raise RuntimeError("test boom")


def test_a_run_stopped_outside_a_training_step_says_where(tmp_path):
    """Validation raising during fit: the last training step ended normally, so the report names
    the stage; a test run raising after a fit that ended normally is no end of the training."""
    cb = diagnostics(log_every_n_steps=2)
    t = trainer(tmp_path, [cb], max_steps=4, val_check_interval=2, num_sanity_val_steps=0)
    with pytest.raises(RuntimeError, match="validation boom"):
        t.fit(FailsInValidation(), loader(), loader(n=16))
    assert cb.report.stopped["where"] == "validate" and cb.report.stopped["step"] == 1
    assert cb.report.stopped_line() == (
        "Training stopped after step 1 with RuntimeError: validation boom, outside a training step (Lightning stage: validate)."
    )
    fine = diagnostics(log_every_n_steps=2)
    model = FailsInTest()
    t = trainer(tmp_path, [fine], max_steps=2)
    t.fit(model, loader())
    with pytest.raises(RuntimeError, match="test boom"):
        t.test(model, loader(n=16))
    assert fine.report.stopped is None


def _fit_recording(tmp_path: Any, cb: Any, model: pl.LightningModule | None = None, max_steps: int = 6, data: Any = None):
    model = model or Classifier()
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        t = trainer(tmp_path, [cb], max_steps=max_steps)
        t.fit(model, data or loader())
    return t, records, model


def test_internal_error_in_a_hook_disables_with_one_warning(tmp_path, monkeypatch):
    def broken(self, *args):
        raise ZeroDivisionError("bug inside act_diagnostics")

    monkeypatch.setattr(state_module.SiteState, "observe", broken)
    cb = diagnostics(log_every_n_steps=1)
    t, records, model = _fit_recording(tmp_path, cb)
    failures = [r for r in records if issubclass(r.category, MonitorFailure)]
    assert len(failures) == 1 and "ZeroDivisionError" in str(failures[0].message)
    assert t.global_step == 6  # training went on to the end
    assert isinstance(cb.failure, ZeroDivisionError)
    assert hook_count(model) == 0


def test_internal_error_in_the_callback_disables_with_one_warning(tmp_path):
    cb = diagnostics(log_every_n_steps=1)

    def broken(*args, **kwargs):
        raise KeyError("bug in a rule")

    cb.engine.evaluate = broken
    t, records, model = _fit_recording(tmp_path, cb)
    failures = [r for r in records if issubclass(r.category, MonitorFailure)]
    assert len(failures) == 1 and "KeyError" in str(failures[0].message)
    assert t.global_step == 6 and hook_count(model) == 0


def test_nan_and_inf_inputs_become_a_non_finite_finding(tmp_path):
    data = loader().dataset
    data.tensors[0][9, 3] = float("nan")  # second batch of 8
    data.tensors[0][17, 0] = float("inf")
    cb = diagnostics(log_every_n_steps=1)
    t, records, _ = _fit_recording(tmp_path, cb, data=torch.utils.data.DataLoader(data, batch_size=8))
    assert t.global_step == 6 and cb.failure is None
    rules = [f.rule for f in cb.engine.findings]
    assert "non-finite" in rules
    nonfinite = [f for f in cb.engine.findings if f.rule == "non-finite"]
    assert nonfinite[0].step == 1 and nonfinite[0].severity == "error"
    warned = [r for r in records if issubclass(r.category, ActivationWarning) and "non-finite" in str(r.message)]
    assert len(warned) == 1  # once, however many steps stay non-finite


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"log_every_n_steps": 0}, ValueError, r"`log_every_n_steps` must be a positive int or None .*got 0"),
        ({"log_every_n_steps": True}, ValueError, r"`log_every_n_steps` .*got True"),
        ({"verbose": "yes"}, TypeError, r"`verbose` must be True or False, got 'yes'"),
        ({"rules": 1}, TypeError, r"`rules` must be a RuleOptions, True \(the defaults\) or False \(rules off\), got 1"),
        ({"eval_stages": ["train"]}, ValueError, r"`eval_stages` entries must be 'validate', 'test' or 'predict', got \['train'\]"),
        ({"eval_stages": 5}, TypeError, r"`eval_stages` must be a list of 'validate', 'test', 'predict' or None, got 5"),
        ({"measure_every_n_steps": 0}, ValueError, r"`measure_every_n_steps` must be a positive int \(1: every step\) or None \(automatic: 5 measured steps per window after the first\), got 0"),
        ({"monitor": "all"}, TypeError, r"`monitor` must be a MonitorOptions or None \(the defaults\), got 'all'"),
    ],
)
def test_invalid_arguments_name_argument_value_and_choices(kwargs, error, match):
    with pytest.raises(error, match=match):
        diagnostics(**kwargs)


@pytest.mark.parametrize(
    ("group", "kwargs", "error", "match"),
    [
        (OutputOptions, {"histograms": "yes"}, TypeError, r"`histograms` must be True or False, got 'yes'"),
        (OutputOptions, {"histogram_samples": -1}, ValueError, r"`histogram_samples` must be an int >= 0 .*got -1"),
        (MonitorOptions, {"kinds": ["relux"]}, ValueError, r"`kinds` .*\['relux'\].*Kinds: relu, .*Families: "),
        (MonitorOptions, {"saturation_eps": 0.7}, ValueError, r"`saturation_eps` must be a number in \(0, 0.5\), got 0.7"),
        (MonitorOptions, {"sample_elements": 0}, ValueError, r"`sample_elements` must be a positive int or None .*got 0"),
        (MonitorOptions, {"unit_dim": "1"}, TypeError, r"`unit_dim` must be an int or None .*got '1'"),
        (MonitorOptions, {"include": 5}, TypeError, r"`include` must be a string or a list of strings .*got 5"),
        (MonitorOptions, {"kinds": []}, ValueError, r"`kinds` is an empty list, which would select no site; pass None to watch every site"),
        (MonitorOptions, {"include": []}, ValueError, r"`include` is an empty list, which would select no site"),
        (RuleOptions, {"disable": ["nope"]}, ValueError, r"`disable` got unknown rule id\(s\) \['nope'\]; valid ids: .*dead-units"),
        (RuleOptions, {"disable": 3}, TypeError, r"`disable` must be a list of rule ids or None, got 3"),
        (RuleOptions, {"thresholds": {"dead-units.bogus": 1}}, ValueError, r"'dead-units.bogus' .*valid keys: dead-units.unit_rate"),
        (RuleOptions, {"thresholds": {"dead-units.warn_fraction": "high"}}, TypeError, r"must be a finite number"),
        (RuleOptions, {"warn": 1}, TypeError, r"`warn` must be True or False, got 1"),
    ],
)
def test_invalid_options_name_argument_value_and_choices(group, kwargs, error, match):
    # Checked when the group is built, before any Trainer: a typo in RuleOptions surfaces even
    # while the rules are switched off.
    with pytest.raises(error, match=match):
        group(**kwargs)


def test_an_empty_exclude_list_excludes_nothing():
    assert diagnostics(monitor=MonitorOptions(exclude=[])).monitor_config.exclude == ()


def test_single_string_options_are_accepted():
    cb = diagnostics(rules=RuleOptions(disable="saturation"), eval_stages="validate")
    assert cb.eval_stages == ("validate",)
