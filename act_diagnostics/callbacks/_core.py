"""Shared Lightning glue: schedule the monitor, hand snapshots to the rules and the outputs.

This class holds everything the two Lightning flavours have in common and imports neither of
them: the trainer and module are duck-typed. Each flavour module defines
``class ActivationDiagnostics(DiagnosticsCallbackCore, <flavour>.Callback)``.

Hook use (ecosystem.md lists Lightning's order):

* ``setup``: build and attach the monitor (idempotent; re-attaches after a resume).
* ``on_train_batch_start``: open a training step; log steps also record histograms etc.
* ``on_before_backward``: leave the function-mode stack (backward needs no tracing).
* ``on_before_optimizer_step``: on log steps, feeding-layer gradient norms (AMP already unscaled).
* ``on_train_batch_end``: close the step; on log steps reduce once, judge, write.
* ``on_train_end``: flush the last partial window and write the report.
* ``teardown`` / ``on_exception``: remove every hook (safe twice).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch

from act_diagnostics.core.config import (
    DEFAULT_HISTOGRAM_SAMPLES,
    DEFAULT_SAMPLE_ELEMENTS,
    DEFAULT_SATURATION_EPS,
    MonitorConfig,
)
from act_diagnostics.core.monitor import ActivationMonitor, MonitorFailure
from act_diagnostics.core.snapshot import Snapshot
from act_diagnostics.outputs.scalars import log_to_loggers, snapshot_scalars
from act_diagnostics.outputs.tensorboard import TensorBoardExtras, find_writer

F = TypeVar("F", bound=Callable[..., Any])

REPORT_DIRNAME = "act_diagnostics"
Stage = Literal["validate", "test", "predict"]


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
    ) -> None:
        super().__init__()
        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool) or not isinstance(log_every_n_steps, int) or log_every_n_steps < 1
        ):
            raise ValueError(f"`log_every_n_steps` must be a positive int or None (follow the Trainer), got {log_every_n_steps!r}")
        for name, value in (
            ("histograms", histograms),
            ("grad_histograms", grad_histograms),
            ("rules", rules),
            ("warn", warn),
            ("preflight", preflight),
            ("report", report),
            ("verbose", verbose),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be True or False, got {value!r}")
        stages = tuple(eval_stages or ())
        bad = [s for s in stages if s not in ("validate", "test", "predict")]
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
        self.histograms = histograms
        self.grad_histograms = grad_histograms
        self.warn = warn
        self.preflight = preflight
        self.write_report = report
        self.verbose = verbose
        self.eval_stages = stages
        self.engine = self._make_engine(rules, disable_rules, thresholds)
        self.monitor: ActivationMonitor | None = None
        self.last_snapshot: Snapshot | None = None
        self.report_dir: str | None = None
        self._tb: TensorBoardExtras | None = None
        self._disabled = False
        self._failure: BaseException | None = None
        self._batch_step = 0
        self._batch_detail = False
        self._last_logged_step = -1
        self._eval_active = False

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _make_engine(rules: bool, disable: list[str] | None, thresholds: dict[str, float] | None) -> Any:
        if not isinstance(rules, bool):
            raise TypeError(f"`rules` must be True or False, got {rules!r}")
        if not rules:
            return None
        from act_diagnostics.rules import RuleEngine

        return RuleEngine(disable=tuple(disable or ()), thresholds=thresholds)

    @property
    def report(self) -> Any:
        """The findings so far (an :class:`act_diagnostics.outputs.report.Report`)."""
        from act_diagnostics.outputs.report import Report

        findings = list(self.engine.findings) if self.engine is not None else []
        return Report(findings=findings, snapshot=self.last_snapshot)

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

    # ------------------------------------------------------------------ scheduling
    def _interval(self, trainer: Any) -> int:
        return self.log_every_n_steps or max(1, int(getattr(trainer, "log_every_n_steps", 50) or 50))

    def _due(self, trainer: Any, step: int) -> bool:
        return (step + 1) % self._interval(trainer) == 0 or (self.preflight and step == 0)

    @staticmethod
    def _rank_zero(trainer: Any) -> bool:
        return bool(getattr(trainer, "is_global_zero", True))

    def _all_gather(self, trainer: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
        world = int(getattr(trainer, "world_size", 1) or 1)
        if world <= 1:
            return None
        strategy = trainer.strategy
        return lambda t: strategy.all_gather(t).reshape(world, -1)

    # ------------------------------------------------------------------ Lightning hooks
    @_guarded
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.monitor is None or self.monitor.model is not pl_module:
            if self.monitor is not None:
                self.monitor.detach()
            restored_steps = getattr(self, "_restored_steps", 0)
            self.monitor = ActivationMonitor(pl_module, self.monitor_config)
            self.monitor.steps = restored_steps
        self.monitor.attach()

    @_guarded
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.monitor is None:
            return
        self._batch_step = int(trainer.global_step)
        self._batch_detail = self._due(trainer, self._batch_step)
        self.monitor.begin_step(detail=self._batch_detail)

    @_guarded
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        if self.monitor is not None:
            self.monitor.stop_tracing()

    @_guarded
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.monitor is not None and self._batch_detail:
            self.monitor.measure_param_grads()

    @_guarded
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        mon = self.monitor
        if mon is None:
            return
        mon.end_step()
        stepped = int(trainer.global_step) > self._batch_step
        if self._batch_detail and stepped and self._batch_step != self._last_logged_step:
            self._publish(trainer, self._batch_step, preflight=self._batch_step == 0 and self.preflight)

    @_guarded
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        mon = self.monitor
        if mon is None:
            return
        if mon.window_steps > 0:  # nothing measured is lost: publish the last partial window
            self._publish(trainer, max(0, int(trainer.global_step) - 1), preflight=False)
        self._finish(trainer)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.monitor is not None:
            self.monitor.detach()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.monitor is None:
            return
        self.monitor.detach()
        try:  # keep what was measured up to the failure
            if not self._disabled:
                self._finish(trainer)
        except Exception:  # noqa: BLE001 - the user's exception is the one that matters
            pass

    # Evaluation stages are measured only when asked (eval_stages); they add to the window.
    def _eval_batch_start(self) -> None:
        if self.monitor is not None and not self._disabled:
            self.monitor.begin_step(detail=False)

    def _eval_batch_end(self) -> None:
        if self.monitor is not None and not self._disabled:
            self.monitor.end_step()

    @_guarded
    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if "validate" in self.eval_stages:
            self._eval_batch_start()

    @_guarded
    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if "validate" in self.eval_stages:
            self._eval_batch_end()

    @_guarded
    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if "test" in self.eval_stages:
            self._eval_batch_start()

    @_guarded
    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if "test" in self.eval_stages:
            self._eval_batch_end()

    @_guarded
    def on_predict_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if "predict" in self.eval_stages:
            self._eval_batch_start()

    @_guarded
    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if "predict" in self.eval_stages:
            self._eval_batch_end()

    # ------------------------------------------------------------------ publishing
    def _publish(self, trainer: Any, step: int, preflight: bool) -> None:
        assert self.monitor is not None
        snap = self.monitor.snapshot(step=step, all_gather=self._all_gather(trainer))
        self.last_snapshot = snap
        self._last_logged_step = step
        new = self.engine.evaluate(snap, preflight=preflight) if self.engine is not None else []
        if not self._rank_zero(trainer):
            return
        loggers = list(getattr(trainer, "loggers", []) or [])
        log_to_loggers(loggers, snapshot_scalars(snap), step)
        if self._tb is None:
            writer = find_writer(loggers)
            self._tb = TensorBoardExtras(writer, histograms=self.histograms, grad_histograms=self.grad_histograms) if writer is not None else None
        if self._tb is not None:
            self._tb.write_snapshot(snap, step)
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
        if not self._rank_zero(trainer):
            return
        report = self.report
        if self.write_report:
            self.report_dir = os.path.join(_log_dir(trainer), REPORT_DIRNAME)
            os.makedirs(self.report_dir, exist_ok=True)
            report.write_json(os.path.join(self.report_dir, "report.json"))
            report.write_markdown(os.path.join(self.report_dir, "report.md"))
        if self._tb is not None:
            self._tb.write_text(report.markdown_table(), max(0, int(trainer.global_step) - 1), tag="act_diagnostics/report")
            self._tb.flush()
        if self.verbose:
            print(report.console_table())  # noqa: T201 - the end-of-fit summary is for the console
            if self.report_dir:
                print(f"act_diagnostics report: {self.report_dir}")  # noqa: T201

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "steps": self.monitor.steps if self.monitor is not None else getattr(self, "_restored_steps", 0),
            "last_logged_step": self._last_logged_step,
            "engine": self.engine.state_dict() if self.engine is not None else {},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_steps = int(state_dict.get("steps", 0))
        self._last_logged_step = int(state_dict.get("last_logged_step", -1))
        if self.monitor is not None:
            self.monitor.steps = self._restored_steps
        if self.engine is not None and state_dict.get("engine"):
            self.engine.load_state_dict(state_dict["engine"])


def _log_dir(trainer: Any) -> str:
    """Where the run's logs go: the first logger's log_dir, else the trainer's root dir."""
    for attr in ("log_dir",):
        value = getattr(trainer, attr, None)
        if value:
            return str(value)
    return str(getattr(trainer, "default_root_dir", "."))
