"""Shared Lightning glue: schedule the monitor, hand snapshots to the rules and the outputs.

This class holds everything the two Lightning flavours have in common and imports neither of
them: the trainer and module are duck-typed. Each flavour module defines
``class ActivationDiagnostics(DiagnosticsCallbackCore, <flavour>.Callback)``.

Hook use (ecosystem.md lists Lightning's order):

* ``setup``: build and attach the monitor (idempotent; re-attaches after a resume). Fitting another
  model starts over (findings, counts); testing another instance keeps the fit's findings.
* ``on_train_batch_start``: open a training step; log steps also record histograms etc.
* ``on_before_backward``: leave the function-mode stack (backward needs no tracing). Under manual
  optimisation the tracer stays on: a second forward may follow the first backward.
* ``on_before_optimizer_step``: on log steps, feeding-layer gradient norms (AMP already unscaled).
* ``on_train_batch_end``: close the step; on log steps reduce once, judge, write. Steps are counted
  as Lightning's loggers count them (batches that ran an optimizer step), so gradient accumulation
  and manual optimisation with several optimizers give one step per logged step.
* ``on_train_end``: flush the last partial window and write the report.
* ``on_validation_start`` / ``_end`` (and test, predict), with ``eval_stages``: set the training
  window aside, measure the stage's batches in a window of their own, log it under
  ``act_<stage>/``, bring the training window back.
* ``on_exception``: judge and write what was measured since the last log step (the failing step
  included, rank-local), then remove every hook. ``teardown`` removes them too (safe twice).

Distributed (docs/production.md): on a log step every rank first compares its site layout (and
health) with one tiny all-gather, then the packed statistics go through one all-gather; every rank
judges the same reduced statistics, and rank zero alone logs, warns and writes the report.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch

from act_diagnostics.callbacks.distributed import DistributedMismatch, RankCheck, all_gather_fn, world_size  # noqa: F401 - DistributedMismatch re-exported
from act_diagnostics.callbacks.schedule import MEASURED_STEPS_PER_WINDOW, StepSchedule
from act_diagnostics.core.checks import integer
from act_diagnostics.core.config import (
    DEFAULT_HISTOGRAM_SAMPLES,
    DEFAULT_SAMPLE_ELEMENTS,
    DEFAULT_SATURATION_EPS,
    MonitorConfig,
)
from act_diagnostics.core.monitor import ActivationMonitor, MonitorFailure, WindowStash, compiled_modules
from act_diagnostics.core.snapshot import Snapshot
from act_diagnostics.outputs.report import REPORT_DIRNAME
from act_diagnostics.outputs.scalars import eval_tag_prefix, log_to_loggers, snapshot_scalars
from act_diagnostics.outputs.tensorboard import TensorBoardExtras, find_tensorboard, is_tensorboard_logger, logger_prefix

F = TypeVar("F", bound=Callable[..., Any])

Stage = Literal["validate", "test", "predict"]
STAGES = ("validate", "test", "predict")


class UnsupportedSetup(RuntimeWarning):
    """Issued once when diagnostics switch themselves off for a set-up they cannot watch."""


def _guarded(method: F) -> F:
    """Run a callback hook; an internal error disables diagnostics with one warning instead."""

    @functools.wraps(method)
    def wrapper(self: "DiagnosticsCallbackCore", *args: Any, **kwargs: Any) -> Any:
        if self._disabled:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - training must never break because of diagnostics
            self._disable(exc)
            return None

    return wrapper  # type: ignore[return-value]


def _eval_hook(stage: str, start: bool) -> Callable[..., None]:
    """A batch hook of an evaluation stage: measure it only when ``stage`` is in eval_stages
    (never the sanity check's batches before fit)."""

    @_guarded
    def hook(self: "DiagnosticsCallbackCore", trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        if self._eval_stash is not None:
            self._eval_batch_start() if start else self._eval_batch_end()

    hook.__name__ = f"on_{stage}_batch_{'start' if start else 'end'}"
    return hook


def _eval_stage_hook(stage: str, start: bool) -> Callable[..., None]:
    """Start or end of an evaluation stage: its batches are measured in a window of their own."""

    @_guarded
    def hook(self: "DiagnosticsCallbackCore", trainer: Any, pl_module: Any) -> None:
        if start and stage in self.eval_stages and not getattr(trainer, "sanity_checking", False):
            if _is_compiled(pl_module):  # compiled in configure_model(), which runs after setup
                self._stand_down(COMPILED)
                return
            self._eval_stage_start()
        elif not start and self._eval_stash is not None:
            self._eval_stage_end(trainer, stage)

    hook.__name__ = f"on_{stage.replace('validate', 'validation')}_{'start' if start else 'end'}"
    return hook


class DiagnosticsCallbackCore:
    """Activation diagnostics for a Lightning Trainer. See the flavour classes for the docstring."""

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        kinds: list[str] | None = None,
        functional: bool = True,
        gradients: bool = True,
        histograms: bool = True,
        grad_histograms: bool = False,
        heatmaps: bool = True,
        histogram_samples: int = DEFAULT_HISTOGRAM_SAMPLES,
        saturation_eps: float = DEFAULT_SATURATION_EPS,
        sample_elements: int | None = DEFAULT_SAMPLE_ELEMENTS,
        unit_dim: int | None = None,
        rules: bool = True,
        disable_rules: list[str] | None = None,
        thresholds: dict[str, float] | None = None,
        warn: bool = True,
        preflight: bool = True,
        report: bool = True,
        verbose: bool = True,
        eval_stages: list[Stage] | None = None,
        measure_every_n_steps: int | None = None,
    ) -> None:
        super().__init__()
        if measure_every_n_steps is not None:
            n = integer(measure_every_n_steps)
            if n is None or n < 1:
                raise ValueError(
                    "`measure_every_n_steps` must be a positive int (1: every step) or None "
                    f"(automatic: {MEASURED_STEPS_PER_WINDOW} measured steps per window after the first), got {measure_every_n_steps!r}"
                )
            measure_every_n_steps = n
        if log_every_n_steps is not None:
            n = integer(log_every_n_steps)
            if n is None or n < 1:
                raise ValueError(f"`log_every_n_steps` must be a positive int or None (follow the Trainer), got {log_every_n_steps!r}")
            log_every_n_steps = n
        for name, value in (
            ("histograms", histograms),
            ("grad_histograms", grad_histograms),
            ("heatmaps", heatmaps),
            ("rules", rules),
            ("warn", warn),
            ("preflight", preflight),
            ("report", report),
            ("verbose", verbose),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be True or False, got {value!r}")
        if isinstance(eval_stages, str):
            eval_stages = [eval_stages]
        if eval_stages is not None and not isinstance(eval_stages, (list, tuple)):
            raise TypeError(f"`eval_stages` must be a list of 'validate', 'test', 'predict' or None, got {eval_stages!r}")
        stages = tuple(eval_stages or ())
        bad = [s for s in stages if s not in STAGES]
        if bad:
            raise ValueError(f"`eval_stages` entries must be 'validate', 'test' or 'predict', got {bad}")
        self.monitor_config = MonitorConfig(
            include=include,
            exclude=exclude,
            kinds=kinds,
            functional=functional,
            unit_dim=unit_dim,
            saturation_eps=saturation_eps,
            sample_elements=sample_elements,
            histogram_samples=histogram_samples if histograms else 0,
            gradients=gradients,
        )
        self.log_every_n_steps = log_every_n_steps
        self.measure_every_n_steps = measure_every_n_steps
        self.histograms = histograms
        self.grad_histograms = grad_histograms
        self.heatmaps = heatmaps
        self.warn = warn
        self.preflight = preflight
        self.write_report = report
        self.verbose = verbose
        self.eval_stages = stages
        self.engine = self._make_engine(rules, disable_rules, thresholds)
        self.monitor: ActivationMonitor | None = None
        self.last_snapshot: Snapshot | None = None
        # The last window of each evaluation stage in eval_stages ("validate", "test", "predict").
        self.eval_snapshots: dict[str, Snapshot] = {}
        self._eval_stash: WindowStash | None = None  # the training window, set aside during one
        self.report_dir: str | None = None
        self._stage: str | None = None  # the trainer function running: "fit", "validate", "test", "predict"
        self._batch_measured = False  # the open training batch is a measured step
        self._last_measured_step = -1  # the last training step the schedule measured
        self._stopped: dict[str, Any] | None = None  # how a run that raised ended (the report says it)
        self._in_train_batch = False  # between on_train_batch_start and on_train_batch_end
        self._batches_run = 0  # training batches started in this fit
        self._own_fit = False  # this callback has measured a fit of its own (see load_state_dict)
        self._tb: TensorBoardExtras | None = None
        self._tb_logger: Any = None  # the TensorBoard logger whose scalars go through self._tb
        self._disabled = False
        self._failure: BaseException | None = None
        self._batch_step = 0  # index of the step being run, as Lightning's loggers count steps
        self._batch_global = 0  # trainer.global_step when the batch started (did an optimizer step run?)
        self._batch_detail = False
        self._batch_log = False
        self._schedule: StepSchedule | None = None
        self._last_logged_step = -1
        self._steps_offset = 0  # measured steps restored from a checkpoint
        self._rank_check = RankCheck()

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _make_engine(rules: bool, disable: list[str] | None, thresholds: dict[str, float] | None) -> Any:
        if not isinstance(rules, bool):
            raise TypeError(f"`rules` must be True or False, got {rules!r}")
        from act_diagnostics.rules import RuleEngine
        from act_diagnostics.rules.engine import check_rule_ids

        if disable is not None and not isinstance(disable, (str, list, tuple)):
            raise TypeError(f"`disable_rules` must be a list of rule ids or None, got {disable!r}")
        # Checked with rules off too: a typo must not wait for the day the rules are switched on.
        engine = RuleEngine(disable=check_rule_ids(disable, "disable_rules"), thresholds=thresholds)
        return engine if rules else None

    @property
    def report(self) -> Any:
        """The findings so far (an :class:`act_diagnostics.outputs.report.Report`)."""
        from act_diagnostics.outputs.report import Report

        findings = list(self.engine.findings) if self.engine is not None else []
        return Report(findings=findings, snapshot=self.last_snapshot, stopped=self._stopped)

    @property
    def failure(self) -> BaseException | None:
        """The internal error that disabled diagnostics, or None."""
        if self._failure is not None:
            return self._failure
        return self.monitor.failure if self.monitor is not None else None

    def _disable(self, exc: BaseException) -> None:
        self._failure = exc
        self._disabled = True
        if self.monitor is not None:
            self.monitor.detach()
        warnings.warn(
            f"act_diagnostics disabled itself after an internal error ({type(exc).__name__}: {exc}); "
            "training continues without activation diagnostics.",
            MonitorFailure,
            stacklevel=3,
        )

    def _stand_down(self, why: str) -> None:
        """Switch diagnostics off for a set-up they cannot serve, with one warning; training goes on."""
        self._disabled = True
        if self.monitor is not None:
            self.monitor.detach()
        warnings.warn(f"act_diagnostics: {why}", UnsupportedSetup, stacklevel=3)

    # ------------------------------------------------------------------ scheduling
    def _interval(self, trainer: Any) -> int:
        return self.log_every_n_steps or max(1, int(getattr(trainer, "log_every_n_steps", 50) or 50))

    def _schedule_for(self, trainer: Any) -> StepSchedule:
        interval = self._interval(trainer)
        if self._schedule is None or self._schedule.interval != interval:
            self._schedule = StepSchedule(interval, self.measure_every_n_steps, self.preflight)
        return self._schedule

    def _measure_every(self, trainer: Any) -> int:
        return self._schedule_for(trainer).measure_every

    @staticmethod
    def _step_index(trainer: Any) -> int:
        """The current step as Lightning's loggers number it.

        Lightning logs with ``fit_loop.epoch_loop._batches_that_stepped`` (batches that ran an
        optimizer step), not ``global_step``, which counts optimizer steps and so moves by two per
        batch with two optimizers under manual optimisation.
        """
        loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
        value = getattr(loop, "_batches_that_stepped", None)
        return value if isinstance(value, int) else int(getattr(trainer, "global_step", 0))

    @property
    def state_key(self) -> str:
        """Where a checkpoint keeps this callback's state. Callbacks watching different parts of one
        model (``include=`` / ``exclude=`` / ``kinds=``) get a key each, so Lightning takes them side
        by side; the default selection keeps the class name (checkpoints of earlier versions)."""
        selection = self._selection()
        return f"{type(self).__qualname__}{selection}" if selection else type(self).__qualname__

    def _selection(self) -> dict[str, list[str]]:
        """The sites this callback watches, when not all (include / exclude / kinds)."""
        cfg = self.monitor_config
        return {name: sorted(value) for name, value in (("include", cfg.include), ("exclude", cfg.exclude), ("kinds", cfg.kinds)) if value}

    @property
    def _legacy_state_key(self) -> str:
        # Lightning's fallback when a checkpoint has no state under state_key: checkpoints made
        # before selections had keys of their own keep the state under the class name.
        return type(self).__qualname__

    @property
    def steps(self) -> int:
        """Training steps measured so far, counting those before a resume."""
        return self._steps_offset + (self.monitor.steps if self.monitor is not None else 0)

    @staticmethod
    def _rank_zero(trainer: Any) -> bool:
        return bool(getattr(trainer, "is_global_zero", True))

    @staticmethod
    def _world_size(trainer: Any) -> int:
        return world_size(trainer)

    def _all_gather(self, trainer: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return all_gather_fn(trainer)

    def _ranks_agree(self, trainer: Any, healthy: bool) -> bool:
        """Whether this log step can be reduced across ranks (see :class:`RankCheck`)."""
        return self._rank_check.agree(trainer, self.monitor, healthy)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._stage = stage  # Lightning restores a checkpoint's callback state after setup
        if stage == "fit":
            self._stopped = None
            self._in_train_batch = False
            self._batches_run = 0
        new_model = self.monitor is None or self.monitor.model is not pl_module
        if self._disabled and new_model and stage == "fit":
            # Diagnostics were off "for this run" (a compiled model, an internal error): another
            # model's fit is another run.
            self._disabled, self._failure = False, None
        self._setup(trainer, pl_module, stage, new_model)

    @_guarded
    def _setup(self, trainer: Any, pl_module: Any, stage: str, new_model: bool) -> None:
        if _is_compiled(pl_module):
            self._stand_down(COMPILED)
            return
        if new_model:
            if self.monitor is not None:
                self.monitor.detach()
                if stage == "fit":  # another model's training: the last one's findings are not its own
                    self._start_over()
                else:  # trainer.test(best_model) after fit: evaluate it, keep the fit's findings
                    self._steps_offset += self.monitor.steps
            self.monitor = ActivationMonitor(pl_module, self.monitor_config)
        self._unscale_activation_grads(trainer)
        self.monitor.attach()

    def _start_over(self) -> None:
        """Forget the previous model's run: findings, step counts, schedule, last snapshot. A
        checkpoint restored after setup (``ckpt_path=``) then brings back its own."""
        if self.engine is not None:
            self.engine.reset()
        self.last_snapshot = None
        self.eval_snapshots = {}
        self.report_dir = None
        self._stopped = None
        self._last_measured_step = -1
        self._own_fit = False
        self._schedule = None
        self._last_logged_step = -1
        self._steps_offset = 0
        self._rank_check = RankCheck()

    def _unscale_activation_grads(self, trainer: Any) -> None:
        """With a GradScaler (float16 AMP) backward runs on ``loss * scale``: the gradients the
        activation hooks see carry that factor (pitfall 7). Divide it out on the device, no sync.
        Parameter gradients need nothing: they are read in on_before_optimizer_step, unscaled."""
        precision = getattr(getattr(trainer, "strategy", None), "precision_plugin", None)
        scaler = getattr(precision, "scaler", None)
        if scaler is not None and self.monitor is not None:
            # The scale is a device tensor the scaler updates in place: reading it costs no sync.
            self.monitor.grad_scale = lambda: getattr(scaler, "_scale", None)

    @_guarded
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning runs configure_model() after the callbacks' setup: a submodule compiled there.
        if _is_compiled(pl_module):
            self._stand_down(COMPILED)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        # The schedule is kept even when disabled: a disabled rank still answers the rank check.
        self._batch_step = self._step_index(trainer)
        self._batch_global = int(trainer.global_step)
        self._in_train_batch = True
        self._batches_run += 1
        self._own_fit = True
        plan = self._schedule_for(trainer).plan(self._batch_step)
        self._batch_log, self._batch_detail, self._batch_measured = plan.log, plan.detail, plan.measure
        if getattr(getattr(trainer, "fit_loop", None), "_skip_backward", False):
            # StochasticWeightAveraging's last epoch only recomputes BatchNorm statistics, with no
            # backward (Lightning's fit_loop._skip_backward, the same on every rank): no training step.
            self._batch_log = self._batch_detail = self._batch_measured = False
        if self._batch_measured:
            self._last_measured_step = self._batch_step
            self._begin_batch()
        else:
            self._pause_batch()

    @_guarded
    def _begin_batch(self) -> None:
        if self.monitor is not None:
            self.monitor.begin_step(detail=self._batch_detail)

    @_guarded
    def _pause_batch(self) -> None:
        # A step that is not measured runs the bare model: no hook is called at all.
        if self.monitor is not None:
            self.monitor.pause()

    @_guarded
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        # Manual optimisation may run another forward after this backward: keep tracing then.
        if self.monitor is not None and self.monitor.enabled: self.monitor.network.observe_loss(loss)  # lead: port to the new callbacks  # noqa: E701
        if self.monitor is not None and getattr(pl_module, "automatic_optimization", True):
            self.monitor.stop_tracing()

    @_guarded
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.monitor is not None and self._batch_detail:
            self.monitor.measure_param_grads()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._in_train_batch = False
        # A step as Lightning's loggers count them: an optimizer step under automatic optimisation
        # (accumulating batches are not one); every batch under manual optimisation, which Lightning
        # never accumulates, whether or not this one called optimizer.step(), unless it returned
        # before running the model (counted, such batches would end discovery before any forward).
        manual = not getattr(pl_module, "automatic_optimization", True)
        stepped = int(trainer.global_step) > self._batch_global or (manual and self._batch_ran(trainer))
        publish = self._batch_log and stepped and self._batch_step != self._last_logged_step
        if self._disabled:
            if publish and self._world_size(trainer) > 1:
                self._answer_rank_check(trainer)
            return
        self._end_batch(trainer, stepped, publish)

    def _batch_ran(self, trainer: Any) -> bool:
        """This batch ran the model. Under DDP, decided from the trainer alone (every batch), so
        that all ranks make the same collective calls."""
        if self._world_size(trainer) > 1 or self.monitor is None or self._disabled:
            return True
        return self.monitor.ran_in_step

    def _answer_rank_check(self, trainer: Any) -> None:
        """A disabled rank still takes part in the rank check, so the others never wait for it."""
        try:
            self._ranks_agree(trainer, healthy=False)
        except Exception:  # noqa: BLE001 - already disabled and warned; training goes on
            self._rank_check.diverged = True

    @_guarded
    def _end_batch(self, trainer: Any, stepped: bool, publish: bool) -> None:
        mon = self.monitor
        if mon is None:
            return
        counts = (mon.steps, mon.window_steps)
        mon.end_step()
        if not stepped:  # gradient accumulation: one step is counted per optimizer step
            mon.steps, mon.window_steps = counts
        if publish:
            self._publish(trainer, self._batch_step, preflight=self._batch_step == 0 and self.preflight)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        last = self._step_index(trainer) - 1
        if self._world_size(trainer) > 1:
            # Decided from the schedule alone, so every rank makes the same collective calls: a
            # window is pending if a step since the last log step was measured.
            pending = self._last_measured_step > self._last_logged_step
        else:
            pending = self.monitor is not None and self.monitor.window_steps > 0
        if self._disabled:
            if pending and self._world_size(trainer) > 1:
                self._answer_rank_check(trainer)
            return
        self._train_end(trainer, pending, max(0, last))

    @_guarded
    def _train_end(self, trainer: Any, pending: bool, last: int) -> None:
        if self.monitor is None:
            return
        if pending:  # nothing measured is lost: publish the last partial window
            self._publish(trainer, last, preflight=False)
        self._finish(trainer)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.monitor is not None:
            self.monitor.detach()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        mon = self.monitor
        if mon is None:
            return
        try:  # keep what was measured up to the failure, the failing step included
            if not self._disabled and mon.failure is None:
                # A guard that raises on a NaN loss at a step the schedule did not measure leaves
                # no finding behind: the report says how the run ended, and whether that was seen.
                # A test or validation run after fit raising is no end of the training.
                if self._stage == "fit":
                    self._stopped = self._how_it_stopped(trainer, exception)
                # The failing step may have stopped inside its forward or backward (counted), or
                # before measuring anything (not counted); an evaluation batch is no training step.
                mon.close_step(training=self._eval_stash is None)
                if self._eval_stash is not None:  # failed during evaluation: the training window
                    mon.restore_window(self._eval_stash)
                    self._eval_stash = None
                if mon.window_steps > 0:
                    # Rank-local: another rank may never reach this point, so no collective here.
                    self._publish(trainer, max(self._step_index(trainer), self._last_logged_step + 1), False, gather=False)
                self._finish(trainer)
        except Exception:  # noqa: BLE001 - the user's exception is the one that matters
            pass
        finally:
            mon.detach()

    def _how_it_stopped(self, trainer: Any, exception: BaseException) -> dict[str, Any]:
        in_step = self._in_train_batch
        stage = getattr(getattr(getattr(trainer, "state", None), "stage", None), "value", None)
        return {
            "step": self._batch_step if self._batches_run else None,  # None: before the first step
            "exception": (f"{type(exception).__name__}: {exception}" if str(exception) else type(exception).__name__)[:500],
            "where": "training step" if in_step else str(stage or "fit"),  # e.g. "validate"
            "scheduled": bool(in_step and self._batch_measured),  # the schedule measured that step
            "measured": bool(in_step and self._batch_measured and self.monitor is not None and self.monitor.ran_in_step),
        }

    # Evaluation stages are measured only when asked (eval_stages), each in a window of its own:
    # the training window is set aside at the stage's start and comes back at its end.
    def _eval_stage_start(self) -> None:
        if self.monitor is not None and self._eval_stash is None:
            self._eval_stash = self.monitor.stash_window()

    def _eval_batch_start(self) -> None:
        if self.monitor is not None:
            self.monitor.begin_step(detail=False, training=False)

    def _eval_batch_end(self) -> None:
        if self.monitor is not None:
            self.monitor.end_step(training=False)  # not a training step: cb.steps stays

    def _eval_stage_end(self, trainer: Any, stage: str) -> None:
        """Log the stage's window under ``act_<stage>/<site>/<stat>`` (not judged: no gradients,
        and the rules' windows are training windows), then bring the training window back."""
        mon, stash = self.monitor, self._eval_stash
        self._eval_stash = None
        if mon is None or stash is None:
            return
        try:
            if mon.window_steps > 0 and mon.failure is None:
                step = self._step_index(trainer)
                # Rank-local under DDP: whether a rank has a window here depends on its own batches
                # and health, so a collective could be left waiting. Rank zero's batches are a sample.
                snap = self._reduce(trainer, step, gather=False)
                self.eval_snapshots[stage] = snap
                if self._rank_zero(trainer):
                    loggers = list(getattr(trainer, "loggers", []) or [])
                    log_to_loggers(loggers, snapshot_scalars(snap, prefix=eval_tag_prefix(stage)), step)
                    # Printed for trainer.test / predict / validate; not for each validation of a fit.
                    fitting = getattr(getattr(trainer, "state", None), "fn", None) == "fit"
                    if self.verbose and not fitting:
                        from act_diagnostics.outputs.report import Report

                        print(f"act_diagnostics, {stage} ({snap.window_steps} batches):")  # noqa: T201
                        print(Report(snapshot=snap).layer_table())  # noqa: T201
        finally:
            mon.restore_window(stash)

    # Lightning passes (trainer, pl_module, [outputs,] batch, batch_idx, dataloader_idx).
    on_validation_start = _eval_stage_hook("validate", start=True)
    on_validation_end = _eval_stage_hook("validate", start=False)
    on_test_start = _eval_stage_hook("test", start=True)
    on_test_end = _eval_stage_hook("test", start=False)
    on_predict_start = _eval_stage_hook("predict", start=True)
    on_predict_end = _eval_stage_hook("predict", start=False)
    on_validation_batch_start = _eval_hook("validate", start=True)
    on_validation_batch_end = _eval_hook("validate", start=False)
    on_test_batch_start = _eval_hook("test", start=True)
    on_test_batch_end = _eval_hook("test", start=False)
    on_predict_batch_start = _eval_hook("predict", start=True)
    on_predict_batch_end = _eval_hook("predict", start=False)

    # ------------------------------------------------------------------ publishing
    def _reduce(self, trainer: Any, step: int, gather: bool = True) -> Snapshot:
        """The window's snapshot, reduced across ranks when ``gather`` (and they agree)."""
        assert self.monitor is not None
        all_gather = None
        if gather and self._world_size(trainer) > 1 and self._ranks_agree(trainer, healthy=self.monitor.failure is None):
            all_gather = self._all_gather(trainer)
        snap = self.monitor.snapshot(step=step, all_gather=all_gather)
        if all_gather is not None:
            # DDP averages gradients across ranks, so the loss being trained is the mean of the ranks'
            # losses and each rank's activation gradients are world_size times those of that loss.
            world = self._world_size(trainer)
            for st in snap.stats.values():
                if st.grad_rms is not None:
                    st.grad_rms /= world
        return snap

    def _publish(self, trainer: Any, step: int, preflight: bool, gather: bool = True) -> None:
        """Reduce the window (across ranks when ``gather``), judge it, and write it out (rank zero)."""
        snap = self._reduce(trainer, step, gather)
        self.last_snapshot = snap
        self._last_logged_step = step
        new = self.engine.evaluate(snap, preflight=preflight) if self.engine is not None else []
        if not self._rank_zero(trainer):
            return
        loggers = list(getattr(trainer, "loggers", []) or [])
        if not any(lg is self._tb_logger for lg in loggers):  # first log step, or another trainer's loggers
            found = find_tensorboard(loggers)
            self._tb_logger, writer = found if found is not None else (None, None)
            self._tb = TensorBoardExtras(
                writer, histograms=self.histograms, grad_histograms=self.grad_histograms, heatmaps=self.heatmaps,
                scalar_prefix=logger_prefix(self._tb_logger),
            ) if writer is not None else None
        scalars = snapshot_scalars(snap)
        log_to_loggers([lg for lg in loggers if lg is not self._tb_logger], scalars, step)
        if self._tb is not None:
            self._tb.write_snapshot(snap, step, scalars)  # one event: scalars, histograms, images
        if new:
            if self.warn:
                from act_diagnostics.rules import emit_warning

                for finding in new:
                    if finding.severity in ("warning", "error"):
                        emit_warning(finding)
            if self._tb is not None:
                self._tb.write_text(self.report.markdown_table(), step)

    def _finish(self, trainer: Any) -> None:
        """End of fit (or failure): report files, TensorBoard text, console summary (rank zero)."""
        if not self._rank_zero(trainer) or not (self.write_report or self._tb is not None or self.verbose):
            return
        report = self.report
        # fast_dev_run is a smoke test: Lightning writes no logs for it, and neither do we.
        if self.write_report and not getattr(trainer, "fast_dev_run", False):
            self.report_dir = os.path.join(_log_dir(trainer), REPORT_DIRNAME)
            os.makedirs(self.report_dir, exist_ok=True)
            report.write_json(os.path.join(self.report_dir, "report.json"))
            report.write_markdown(os.path.join(self.report_dir, "report.md"))
        if self._tb is not None:
            # The step the loggers use (not global_step, which counts every optimizer's steps).
            last_step = max(0, self._step_index(trainer) - 1, self._last_logged_step)
            self._tb.finish(last_step)
            self._tb.write_text(report.markdown_table(), last_step, tag="act_diagnostics/report")
            self._tb.flush()
        if self.verbose:
            print(report.console_table())  # noqa: T201 - the end-of-fit summary is for the console
            if self.report_dir:
                print(f"act_diagnostics report: {self.report_dir}")  # noqa: T201

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "selection": self._selection(),  # whose state this is, for Lightning's fallback key
            "steps": self.steps,
            "last_logged_step": self._last_logged_step,
            "engine": self.engine.state_dict() if self.engine is not None else {},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("selection", self._selection()) != self._selection():
            # Lightning's fallback key handed over another callback's state (a checkpoint without
            # one of this selection); checkpoints from before selections had keys carry none.
            return
        if self._stage != "fit" and self._own_fit:
            # trainer.test(ckpt_path="best") after fit: Lightning restores every callback from the
            # checkpoint, but this callback's own fit is newer than any checkpoint of it.
            return
        # The monitor's own count restarts so it re-learns the structure (feeding layers,
        # consumers) in its first steps after a resume; the callback keeps the total.
        self._steps_offset = int(state_dict.get("steps", 0)) - (self.monitor.steps if self.monitor is not None else 0)
        self._last_logged_step = int(state_dict.get("last_logged_step", -1))
        if self.engine is not None and state_dict.get("engine"):
            self.engine.load_state_dict(state_dict["engine"])


COMPILED = (
    "the model (or a submodule) is torch.compile'd: dynamo would trace the diagnostics' hooks "
    "into the graph and recompile as their state changes, or ignore them "
    "(pytorch/pytorch#117758), so act_diagnostics is off for this run. Run a few hundred "
    "steps uncompiled with diagnostics to check the activations, then compile."
)


def _is_compiled(module: Any) -> bool:
    """True for a LightningModule passed to fit as ``torch.compile(model)`` (Lightning unwraps it and
    keeps ``_compiler_ctx``) or one holding a compiled submodule."""
    if getattr(module, "_compiler_ctx", None):
        return True
    return isinstance(module, torch.nn.Module) and bool(compiled_modules(module))


def _log_dir(trainer: Any) -> str:
    """Where the run's logs go: the first logger's log_dir (or save_dir), else the trainer's root dir.

    Not ``trainer.log_dir``: that property broadcasts from rank zero (a collective), and the report
    is written on rank zero alone, so calling it there would leave rank zero waiting for the others.
    """
    loggers = list(getattr(trainer, "loggers", []) or [])
    # The TensorBoard logger's directory first: the report then lies beside the event files, where
    # `act-diagnostics report` reads both (a CSVLogger listed first has its own version folder).
    tensorboard = [lg for lg in loggers if is_tensorboard_logger(lg)]
    for logger in tensorboard + loggers:
        value = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        if value:
            return str(value)
    return str(getattr(trainer, "default_root_dir", None) or ".")