"""Evaluation windows: validation, test and predict batches measured apart from training.

With ``eval_stages`` a stage's batches are measured in a window of their own: the training window
is set aside at the stage's start (:meth:`ActivationMonitor.stash_window`), the stage's batches are
measured without gradients and without counting as training steps, and at the stage's end its
window is logged under ``act_<stage>/<site>/<stat>`` and the training window comes back. The
stage's window is not judged: the rules read training windows (gradients, trends).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from act_diagnostics.callbacks import compat
from act_diagnostics.core.snapshot import Snapshot
from act_diagnostics.outputs.scalars import eval_tag_prefix, log_to_loggers, snapshot_scalars


class EvalWindows:
    """The evaluation stages' windows of one callback, and the last snapshot of each stage."""

    def __init__(self, stages: tuple[str, ...]) -> None:
        self.stages = stages
        # The last window of each evaluation stage in ``stages`` ("validate", "test", "predict").
        self.snapshots: dict[str, Snapshot] = {}
        self._stash: Any = None  # the training window, set aside while a stage runs

    @property
    def open(self) -> bool:
        """A stage's window is being measured (its batches are measured, not training's)."""
        return self._stash is not None

    def wanted(self, stage: str, trainer: Any) -> bool:
        """Whether to measure ``stage`` now (never the sanity check's batches before fit)."""
        return stage in self.stages and not compat.sanity_checking(trainer)

    def start(self, monitor: Any) -> None:
        if monitor is not None and self._stash is None:
            self._stash = monitor.stash_window()

    def batch_start(self, monitor: Any) -> None:
        if monitor is not None and self.open:
            monitor.begin_step(detail=False, training=False)

    def batch_end(self, monitor: Any) -> None:
        if monitor is not None and self.open:
            monitor.end_step(training=False)  # not a training step: the step count stays

    def abandon(self, monitor: Any) -> None:
        """A stage that raised: bring the training window back, unlogged."""
        if monitor is not None and self._stash is not None:
            monitor.restore_window(self._stash)
        self._stash = None

    def end(self, monitor: Any, trainer: Any, stage: str, reduce: Callable[[int], Snapshot], verbose: bool) -> None:
        """Log the stage's window (rank zero), keep its snapshot, bring the training window back.

        ``reduce(step)`` reduces the window rank-locally: under DDP whether a rank has a window here
        depends on its own batches and health, so a collective could be left waiting; rank zero's
        batches are a sample.
        """
        stash, self._stash = self._stash, None
        if monitor is None or stash is None:
            return
        try:
            if monitor.window_steps > 0 and monitor.failure is None:
                step = compat.step_index(trainer)
                snap = reduce(step)
                self.snapshots[stage] = snap
                if compat.is_global_zero(trainer):
                    log_to_loggers(compat.loggers(trainer), snapshot_scalars(snap, prefix=eval_tag_prefix(stage)), step)
                    # Printed for trainer.test / predict / validate; not for each validation of a fit.
                    if verbose and not compat.fitting(trainer):
                        from act_diagnostics.outputs.report import Report

                        print(f"act_diagnostics, {stage} ({snap.window_steps} batches):")  # noqa: T201
                        print(Report(snapshot=snap).layer_table())  # noqa: T201
        finally:
            monitor.restore_window(stash)
