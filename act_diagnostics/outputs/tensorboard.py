"""TensorBoard extras: histograms, a custom-scalars dashboard, layers x steps heatmaps and findings as text.

Works with any logger whose ``experiment`` is a ``torch.utils.tensorboard.SummaryWriter`` (both
Lightning flavours' TensorBoardLogger). Scalars themselves go through every logger
(:mod:`act_diagnostics.outputs.scalars`); this module only adds what TensorBoard alone can show.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from act_diagnostics.core.snapshot import Snapshot
from act_diagnostics.outputs.heatmap import HeatmapWriter
from act_diagnostics.outputs.scalars import TAG_PREFIX, site_tag

# Charts of the dashboard: title -> the statistic whose per-site curves share it.
DASHBOARD_CHARTS = {
    "firing rate (share of outputs active)": "firing_rate",
    "dead fraction (share of units that never fire)": "dead_fraction",
    "saturation (share of outputs where the derivative < ~0.01)": "saturation",
    "gradient RMS at the activation output": "grad_rms",
    "output std": "std",
    "output max |value|": "max_abs",
    "feeding-layer gradient norm": "param_grad_norm",
}
LAYOUT_CATEGORY = "act_diagnostics"
FINDINGS_TEXT_TAG = "act_diagnostics/findings"


def find_writer(loggers: Iterable[Any]) -> Any | None:
    """The SummaryWriter of the first TensorBoard logger, or None."""
    for logger in loggers:
        if type(logger).__name__ != "TensorBoardLogger":
            continue
        writer = getattr(logger, "experiment", None)
        if writer is not None and hasattr(writer, "add_custom_scalars"):
            return writer
    return None


def dashboard_layout() -> dict[str, dict[str, list]]:
    """Custom-scalars layout: one multiline chart per statistic, every site on it."""
    charts = {
        title: ["Multiline", [rf"^{TAG_PREFIX}/.*/{stat}$"]] for title, stat in DASHBOARD_CHARTS.items()
    }
    return {LAYOUT_CATEGORY: charts}


class TensorBoardExtras:
    """Writes the TensorBoard-only views for one run."""

    def __init__(self, writer: Any, histograms: bool = True, grad_histograms: bool = False, heatmaps: bool = True) -> None:
        self.writer = writer
        self.histograms = histograms
        self.grad_histograms = grad_histograms
        # Layers x steps images of dead fraction and saturation (outputs/heatmap.py).
        self.heatmaps = HeatmapWriter(writer) if heatmaps else None
        self._layout_written = False

    def write_layout(self) -> None:
        if not self._layout_written:
            self.writer.add_custom_scalars(dashboard_layout())
            self._layout_written = True

    def write_snapshot(self, snapshot: Snapshot, step: int) -> None:
        self.write_layout()
        if self.heatmaps is not None:
            self.heatmaps.write(snapshot, step)
        if not self.histograms:
            return
        views = [("output", snapshot.out_samples)] + ([("grad", snapshot.grad_samples)] if self.grad_histograms else [])
        for suffix, samples in views:
            for name, values in samples.items():
                finite = np.asarray(values, dtype=np.float64)
                finite = finite[np.isfinite(finite)]  # NaN/Inf are reported as findings, not binned
                if finite.size:
                    self.writer.add_histogram(f"{TAG_PREFIX}/{site_tag(name)}/{suffix}", finite, step)

    def write_text(self, markdown: str, step: int, tag: str = FINDINGS_TEXT_TAG) -> None:
        self.writer.add_text(tag, markdown, step)

    def flush(self) -> None:
        self.writer.flush()
