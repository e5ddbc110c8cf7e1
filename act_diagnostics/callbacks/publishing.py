"""Publishing a log step: reduce once -> judge with the rules -> write to loggers, TensorBoard, warnings.

And at the end of fit (or when training raised): the report files, TensorBoard's report text and
the console summary. Rank zero alone writes; every rank reduces and judges the same statistics.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from act_diagnostics.callbacks import compat
from act_diagnostics.callbacks.distributed import RankCheck
from act_diagnostics.callbacks.options import Options
from act_diagnostics.core.snapshot import Snapshot
from act_diagnostics.outputs.history import StatHistory, record_history
from act_diagnostics.outputs.report import REPORT_DIRNAME, Report
from act_diagnostics.outputs.scalars import log_to_loggers, snapshot_scalars
from act_diagnostics.outputs.tensorboard import TensorBoardExtras, find_tensorboard, logger_prefix


def reduce(monitor: Any, trainer: Any, step: int, rank_check: RankCheck | None) -> Snapshot:
    """The window's snapshot, reduced across ranks when ``rank_check`` is given and the ranks agree
    (one tiny all-gather for the check, one for the statistics); rank-local otherwise."""
    world = compat.world_size(trainer)
    gather = None
    if rank_check is not None and world > 1 and rank_check.agree(trainer, monitor, healthy=monitor.failure is None):
        gather = compat.all_gather(trainer)
    snap = monitor.snapshot(step=step, all_gather=gather)
    if gather is not None:
        # DDP averages gradients across ranks, so the loss being trained is the mean of the ranks'
        # losses and each rank's activation gradients are world_size times those of that loss.
        for st in snap.stats.values():
            if st.grad_rms is not None:
                st.grad_rms /= world
    return snap


class Publisher:
    """Writes what one callback measured (rank zero): scalars to every logger, TensorBoard's extras
    (histograms, heatmaps, dashboard, findings text) to a TensorBoard logger's writer, new findings
    as warnings, and at the end the report files and the console summary."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.tb: TensorBoardExtras | None = None
        self._tb_logger: Any = None  # the TensorBoard logger whose scalars go through self.tb
        self.history: StatHistory | None = None  # report.md's charts

    def write(self, trainer: Any, snap: Snapshot, step: int, new: list[Any], report: Callable[[], Report]) -> None:
        """One log step's writing: ``new`` findings are warned once and the findings table rewritten."""
        self.history = record_history(self.history, snap)
        found = compat.loggers(trainer)
        if not any(lg is self._tb_logger for lg in found):  # first log step, or another trainer's loggers
            self._find_tensorboard(found)
        scalars = snapshot_scalars(snap)
        log_to_loggers([lg for lg in found if lg is not self._tb_logger], scalars, step)
        if self.tb is not None:
            self.tb.write_snapshot(snap, step, scalars)  # one event: scalars, histograms, images
        if not new:
            return
        if self.options.warn:
            from act_diagnostics.rules import emit_warning

            for finding in new:
                if finding.severity in ("warning", "error"):
                    emit_warning(finding)
        if self.tb is not None:
            self.tb.write_text(report().markdown_table(), step)

    def _find_tensorboard(self, found: list[Any]) -> None:
        located = find_tensorboard(found)
        self._tb_logger, writer = located if located is not None else (None, None)
        outputs = self.options.outputs
        self.tb = TensorBoardExtras(
            writer, histograms=outputs.histograms, grad_histograms=outputs.grad_histograms, heatmaps=outputs.heatmaps,
            scalar_prefix=logger_prefix(self._tb_logger),
        ) if writer is not None else None

    def finish(self, trainer: Any, report: Report, last_step: int) -> str | None:
        """End of fit (or failure): report files, TensorBoard text, console summary. Returns the
        report folder, or None when none was written."""
        write_report = self.options.outputs.report
        if not (write_report or self.tb is not None or self.options.verbose):
            return None
        report_dir = None
        # fast_dev_run is a smoke test: Lightning writes no logs for it, and neither do we.
        if write_report and not compat.fast_dev_run(trainer):
            report_dir = os.path.join(compat.log_dir(trainer), REPORT_DIRNAME)
            os.makedirs(report_dir, exist_ok=True)
            report.write_json(os.path.join(report_dir, "report.json"))
            report.write_markdown(os.path.join(report_dir, "report.md"))
        if self.tb is not None:
            self.tb.finish(last_step)
            self.tb.write_text(report.markdown_table(), last_step, tag="act_diagnostics/report")
            self.tb.flush()
        if self.options.verbose:
            print(report.console_table())  # noqa: T201 - the end-of-fit summary is for the console
            if report_dir:
                print(f"act_diagnostics report: {report_dir}")  # noqa: T201
        return report_dir
