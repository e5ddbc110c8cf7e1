"""Shared Lightning glue: schedule the monitor, hand snapshots to the rules and the outputs.

This class holds everything the two Lightning flavours have in common and imports neither of
them: the trainer and module are duck-typed, read through :mod:`.compat` only. Each flavour module
defines ``class ActivationDiagnostics(DiagnosticsCallbackCore, <flavour>.Callback)``.

Where things live: :mod:`.options` (the constructor's option groups and their checks),
:mod:`.schedule` (which steps are measured and logged), :mod:`.windows` (evaluation stages),
:mod:`.publishing` (reduce -> rules -> loggers, TensorBoard, report), :mod:`.distributed` (the rank
check), :mod:`.compat` (every private or version-dependent read of Lightning).

Hook use (ecosystem.md lists Lightning's order):

* ``setup``: build and attach the monitor (idempotent; re-attaches after a resume). Fitting another
  model starts over (findings, counts); testing another instance keeps the fit's findings.
* ``on_train_batch_start``: open a training step; log steps also record histograms etc.
* ``on_before_backward``: count the loss (non-finite, rules: non-finite); leave the function-mode
  stack (backward needs no tracing). Under manual
  optimisation the tracer stays on: a second forward may follow the first backward.
* ``on_before_optimizer_step``: on log steps, feeding-layer gradient norms (AMP already unscaled).
* ``on_train_batch_end``: close the step; on log steps reduce once, judge, write. Steps are counted
  as Lightning's loggers count them (batches that ran an optimizer step), so gradient accumulation
  and manual optimisation with several optimizers give one step per logged step.
* ``on_train_end``: flush the last partial window and write the report.
* ``on_validation_start`` / ``_end`` (and test, predict), with ``eval_stages``: see :mod:`.windows`.
* ``on_exception``: judge and write what was measured since the last log step (the failing step
  included, rank-local), then remove every hook. ``teardown`` removes them too (safe twice).

Distributed: see :mod:`.distributed` and docs/production.md.
"""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from act_diagnostics.callbacks import compat
from act_diagnostics.callbacks.distributed import DistributedMismatch, RankCheck  # noqa: F401 - DistributedMismatch re-exported
from act_diagnostics.callbacks.guard import COMPILED, UnsupportedSetup, guarded, how_it_stopped, warn_disabled, warn_unsupported  # noqa: F401 - UnsupportedSetup re-exported
from act_diagnostics.callbacks.hooks import LightningHooks
from act_diagnostics.callbacks.options import MonitorOptions, OutputOptions, RuleOptions, Stage, check_call, check_options
from act_diagnostics.callbacks.publishing import Publisher, reduce
from act_diagnostics.callbacks.schedule import StepSchedule
from act_diagnostics.callbacks.windows import EvalWindows
from act_diagnostics.core.monitor import ActivationMonitor
from act_diagnostics.core.snapshot import Snapshot
from act_diagnostics.outputs.chart import engine_thresholds
from act_diagnostics.outputs.report import Report


class DiagnosticsCallbackCore(LightningHooks):
    """Activation diagnostics for a Lightning Trainer. See the flavour classes for the docstring."""

    def __new__(cls, *args: Any, **kwargs: Any) -> DiagnosticsCallbackCore:
        # Checked before __init__, so a wrong keyword is answered in the user's words, not by
        # Python's "DiagnosticsCallbackCore.__init__() got an unexpected keyword argument".
        check_call(cls, args, kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        *,
        log_every_n_steps: int | None = None,
        measure_every_n_steps: int | None = None,
        monitor: MonitorOptions | None = None,
        rules: RuleOptions | bool = True,
        outputs: OutputOptions | None = None,
        eval_stages: list[Stage] | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        self.options = check_options(log_every_n_steps, measure_every_n_steps, monitor, rules, outputs, eval_stages, verbose)
        self.monitor_config = self.options.monitor_config()
        self.engine = self.options.rules.engine() if self.options.rules is not None else None
        self.monitor: ActivationMonitor | None = None
        self.last_snapshot: Snapshot | None = None
        self.report_dir: str | None = None
        self._windows = EvalWindows(self.options.eval_stages)
        self._publisher = Publisher(self.options)
        self._stage: str | None = None  # the trainer function running: "fit", "validate", "test", "predict"
        self._batch_measured = False  # the open training batch is a measured step
        self._last_measured_step = -1  # the last training step the schedule measured
        self._stopped: dict[str, Any] | None = None  # how a run that raised ended (the report says it)
        self._in_train_batch = False  # between on_train_batch_start and on_train_batch_end
        self._batches_run = 0  # training batches started in this fit
        self._own_fit = False  # this callback has measured a fit of its own (see load_state_dict)
        self._disabled = False
        self._failure: BaseException | None = None
        self._batch_step = 0  # index of the step being run, as Lightning's loggers count steps
        self._batch_global = 0  # global_step when the batch started (did an optimizer step run?)
        self._batch_detail = False
        self._batch_log = False
        self._schedule: StepSchedule | None = None
        self._last_logged_step = -1
        self._steps_offset = 0  # measured steps restored from a checkpoint
        self._rank_check = RankCheck()

    # ------------------------------------------------------------------ what the user reads
    @property
    def eval_stages(self) -> tuple[str, ...]:
        return self.options.eval_stages

    @property
    def eval_snapshots(self) -> dict[str, Snapshot]:
        """The last window of each evaluation stage in ``eval_stages``, by stage."""
        return self._windows.snapshots

    @property
    def report(self) -> Report:
        """The findings so far (an :class:`act_diagnostics.outputs.report.Report`)."""
        findings = list(self.engine.findings) if self.engine is not None else []
        history, thresholds = self._publisher.history, engine_thresholds(self.engine)  # report.md's charts
        return Report(findings=findings, snapshot=self.last_snapshot, stopped=self._stopped, history=history, thresholds=thresholds)

    @property
    def failure(self) -> BaseException | None:
        """The internal error that disabled diagnostics, or None."""
        if self._failure is not None:
            return self._failure
        return self.monitor.failure if self.monitor is not None else None

    @property
    def steps(self) -> int:
        """Training steps measured so far, counting those before a resume."""
        return self._steps_offset + (self.monitor.steps if self.monitor is not None else 0)

    # ------------------------------------------------------------------ scheduling
    def _interval(self, trainer: Any) -> int:
        return self.options.log_every_n_steps or compat.log_interval(trainer)

    def _schedule_for(self, trainer: Any) -> StepSchedule:
        interval = self._interval(trainer)
        if self._schedule is None or self._schedule.interval != interval:
            self._schedule = StepSchedule(interval, self.options.measure_every_n_steps, self.options.preflight)
        return self._schedule

    # ------------------------------------------------------------------ Lightning hooks: set-up
    @override
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

    @guarded
    def _setup(self, trainer: Any, pl_module: Any, stage: str, new_model: bool) -> None:
        if compat.is_compiled(pl_module):
            self._stand_down(COMPILED)
            return
        monitor = self.monitor
        if new_model or monitor is None:
            if monitor is not None:
                monitor.detach()
                if stage == "fit":  # another model's training: the last one's findings are not its own
                    self._start_over()
                else:  # trainer.test(best_model) after fit: evaluate it, keep the fit's findings
                    self._steps_offset += monitor.steps
            monitor = self.monitor = ActivationMonitor(pl_module, self.monitor_config)
        # With a GradScaler (float16 AMP) backward runs on ``loss * scale``: the gradients the
        # activation hooks see carry that factor (pitfall 7); the monitor divides it out on the
        # device. Parameter gradients need nothing: read in on_before_optimizer_step, unscaled.
        scale = compat.grad_scale(trainer)
        if scale is not None:
            monitor.grad_scale = scale
        monitor.attach()

    def _start_over(self) -> None:
        """Forget the previous model's run: findings, step counts, schedule, last snapshot. A
        checkpoint restored after setup (``ckpt_path=``) then brings back its own."""
        if self.engine is not None:
            self.engine.reset()
        self.last_snapshot = None
        self._windows = EvalWindows(self.options.eval_stages)
        self.report_dir = None
        self._stopped = None
        self._last_measured_step = -1
        self._own_fit = False
        self._schedule = None
        self._last_logged_step = -1
        self._steps_offset = 0
        self._rank_check = RankCheck()

    @override
    @guarded
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning runs configure_model() after the callbacks' setup: a submodule compiled there.
        if compat.is_compiled(pl_module):
            self._stand_down(COMPILED)

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.monitor is not None:
            self.monitor.detach()

    # ------------------------------------------------------------------ Lightning hooks: training
    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        # The schedule is kept even when disabled: a disabled rank still answers the rank check.
        self._batch_step = compat.step_index(trainer)
        self._batch_global = compat.global_step(trainer)
        self._in_train_batch = True
        self._batches_run += 1
        self._own_fit = True
        plan = self._schedule_for(trainer).plan(self._batch_step)
        self._batch_log, self._batch_detail, self._batch_measured = plan.log, plan.detail, plan.measure
        if compat.skips_backward(trainer):  # a batch without backward (SWA's BatchNorm pass): no step
            self._batch_log = self._batch_detail = self._batch_measured = False
        if self._batch_measured:
            self._last_measured_step = self._batch_step
            self._begin_batch()
        else:
            self._pause_batch()

    @guarded
    def _begin_batch(self) -> None:
        if self.monitor is not None:
            self.monitor.begin_step(detail=self._batch_detail)

    @guarded
    def _pause_batch(self) -> None:
        # A step that is not measured runs the bare model: no hook is called at all.
        if self.monitor is not None:
            self.monitor.pause()

    @override
    @guarded
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        # Manual optimisation may run another forward after this backward: keep tracing then.
        if self.monitor is not None:
            self.monitor.observe_loss(loss)  # a NaN loss is news even where no site shows it
        if self.monitor is not None and compat.automatic_optimization(pl_module):
            self.monitor.stop_tracing()

    @override
    @guarded
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.monitor is not None and self._batch_detail:
            self.monitor.measure_param_grads()

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._in_train_batch = False
        # A step as Lightning's loggers count them: an optimizer step under automatic optimisation
        # (accumulating batches are not one); every batch under manual optimisation, which Lightning
        # never accumulates, whether or not this one called optimizer.step(), unless it returned
        # before running the model (counted, such batches would end discovery before any forward).
        manual = not compat.automatic_optimization(pl_module)
        stepped = compat.global_step(trainer) > self._batch_global or (manual and self._batch_ran(trainer))
        publish = self._batch_log and stepped and self._batch_step != self._last_logged_step
        if self._disabled:
            if publish and compat.world_size(trainer) > 1:
                self._rank_check.answer_disabled(trainer)
            return
        self._end_batch(trainer, stepped, publish)

    def _batch_ran(self, trainer: Any) -> bool:
        """This batch ran the model. Under DDP, decided from the trainer alone (every batch), so
        that all ranks make the same collective calls."""
        if compat.world_size(trainer) > 1 or self.monitor is None or self._disabled:
            return True
        return self.monitor.ran_in_step

    @guarded
    def _end_batch(self, trainer: Any, stepped: bool, publish: bool) -> None:
        if self.monitor is None:
            return
        if stepped:
            self.monitor.end_step()
        else:  # gradient accumulation: one step is counted per optimizer step
            self.monitor.end_step(count=False)
        if publish:
            self._publish(trainer, self._batch_step, preflight=self._batch_step == 0 and self.options.preflight)

    @override
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        last = compat.step_index(trainer) - 1
        distributed = compat.world_size(trainer) > 1
        if distributed:
            # Decided from the schedule alone, so every rank makes the same collective calls: a
            # window is pending if a step since the last log step was measured.
            pending = self._last_measured_step > self._last_logged_step
        else:
            pending = self.monitor is not None and self.monitor.window_steps > 0
        if self._disabled:
            if pending and distributed:
                self._rank_check.answer_disabled(trainer)
            return
        self._train_end(trainer, pending, max(0, last))

    @guarded
    def _train_end(self, trainer: Any, pending: bool, last: int) -> None:
        if self.monitor is None:
            return
        if pending:  # nothing measured is lost: publish the last partial window
            self._publish(trainer, last, preflight=False)
        self._finish(trainer)

    @override
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
                    in_step = self._in_train_batch
                    measured = in_step and self._batch_measured and mon.ran_in_step
                    self._stopped = how_it_stopped(trainer, exception, self._batch_step if self._batches_run else None,
                                                   in_step, in_step and self._batch_measured, measured)
                # The failing step may have stopped inside its forward or backward (counted), or
                # before measuring anything (not counted); an evaluation batch is no training step.
                mon.close_step(training=not self._windows.open)
                self._windows.abandon(mon)  # failed during evaluation: the training window back
                if mon.window_steps > 0:
                    # Rank-local: another rank may never reach this point, so no collective here.
                    step = max(compat.step_index(trainer), self._last_logged_step + 1)
                    self._publish(trainer, step, preflight=False, gather=False)
                self._finish(trainer)
        except Exception:  # noqa: BLE001 - the user's exception is the one that matters
            pass
        finally:
            mon.detach()

    # ------------------------------------------------------------------ Lightning hooks: evaluation
    # Lightning passes (trainer, pl_module, [outputs,] batch, batch_idx, dataloader_idx).
    @override
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, pl_module, "validate")

    @override
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end(trainer, "validate")

    @override
    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, pl_module, "test")

    @override
    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end(trainer, "test")

    @override
    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, pl_module, "predict")

    @override
    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end(trainer, "predict")

    @override
    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch(start=True)

    @override
    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch(start=False)

    @override
    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch(start=True)

    @override
    def on_test_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch(start=False)

    @override
    def on_predict_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch(start=True)

    @override
    def on_predict_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch(start=False)

    @guarded
    def _eval_start(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not self._windows.wanted(stage, trainer):
            return
        if compat.is_compiled(pl_module):  # compiled in configure_model(), which runs after setup
            self._stand_down(COMPILED)
            return
        self._windows.start(self.monitor)

    @guarded
    def _eval_batch(self, start: bool) -> None:
        if start:
            self._windows.batch_start(self.monitor)
        else:
            self._windows.batch_end(self.monitor)

    @guarded
    def _eval_end(self, trainer: Any, stage: str) -> None:
        self._windows.end(self.monitor, trainer, stage, lambda step: self._reduce(trainer, step, gather=False), self.options.verbose)

    # ------------------------------------------------------------------ publishing
    def _reduce(self, trainer: Any, step: int, gather: bool = True) -> Snapshot:
        assert self.monitor is not None
        return reduce(self.monitor, trainer, step, self._rank_check if gather else None)

    def _publish(self, trainer: Any, step: int, preflight: bool, gather: bool = True) -> None:
        """Reduce the window (across ranks when ``gather``), judge it, and write it out (rank zero)."""
        snap = self._reduce(trainer, step, gather)
        snap.dataset_rows, snap.epoch = compat.train_rows(trainer), compat.epoch(trainer)
        self.last_snapshot = snap
        self._last_logged_step = step
        new = self.engine.evaluate(snap, preflight=preflight) if self.engine is not None else []
        if self.engine is not None and self._schedule is not None:
            if self.engine.requests.detail:  # a spike: the next log step records its histograms
                self._schedule.request_detail()
            if self.engine.requests.dense:  # a verdict waits on samples: measure the next window's every step
                self._schedule.request_dense()
        if compat.is_global_zero(trainer):
            self._publisher.write(trainer, snap, step, new, lambda: self.report)

    def _finish(self, trainer: Any) -> None:
        """End of fit (or failure): report files, TensorBoard text, console summary (rank zero)."""
        if compat.is_global_zero(trainer):
            # The step the loggers use (not global_step, which counts every optimizer's steps).
            last_step = max(0, compat.step_index(trainer) - 1, self._last_logged_step)
            self.report_dir = self._publisher.finish(trainer, self.report, last_step) or self.report_dir

    # ------------------------------------------------------------------ failure
    def _disable(self, exc: BaseException) -> None:
        """An internal error: diagnostics off for this run, with one warning; training goes on."""
        self._failure = exc
        self._stand_down(None, exc)

    def _stand_down(self, why: str | None, exc: BaseException | None = None) -> None:
        """Switch diagnostics off for this run (a set-up they cannot serve: ``why``), with one warning."""
        self._disabled = True
        if self.monitor is not None:
            self.monitor.detach()
        warn_disabled(exc) if exc is not None else warn_unsupported(str(why))

    # ------------------------------------------------------------------ checkpointing
    @property
    @override
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
    @override
    def _legacy_state_key(self) -> Any:
        # Lightning's fallback when a checkpoint has no state under state_key: checkpoints made
        # before selections had keys of their own keep the state under the class name. (A str:
        # Lightning annotates type[Callback] but only looks the value up as a checkpoint key.)
        return type(self).__qualname__

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "selection": self._selection(),  # whose state this is, for Lightning's fallback key
            "steps": self.steps,
            "last_logged_step": self._last_logged_step,
            "engine": self.engine.state_dict() if self.engine is not None else {},
        }

    @override
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
