"""TensorBoard extras: histograms, a custom-scalars dashboard, layers x steps heatmaps and findings as text.

Works with a TensorBoardLogger (either Lightning flavour) whose ``experiment`` is a
``torch.utils.tensorboard.SummaryWriter``. The other loggers receive the scalars through
``log_metrics`` (:mod:`act_diagnostics.outputs.scalars`); the TensorBoard logger receives them here,
in the same single event as the step's histograms and images.

One event per log step: ``SummaryWriter`` hands every event to its writer thread through a queue
of 10, so on a busy CPU each ``add_scalar`` costs about 0.1 ms, mostly waiting for that thread.
A Summary holds any number of values, so all of a log step's values go into one
(docs/performance.md, "What logging costs").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from act_diagnostics.core.snapshot import Snapshot
from act_diagnostics.outputs.heatmap import HeatmapWriter
from act_diagnostics.outputs.scalars import LOGGER_JOIN_CHAR, TAG_PREFIX, site_tag, site_tags

# Equal-width buckets over a sample's finite range, as TensorBoard's own histogram summaries use
# (tensorboard.plugins.histogram.summary_v2.DEFAULT_BUCKET_COUNT). add_histogram's default, 1549
# fixed edges, left about 300 non-empty buckets per site: without TensorFlow installed, TensorBoard's
# writer thread checksums every record in pure Python, 14.6 ms for 8 such histograms against 1.6 ms.
HISTOGRAM_BUCKETS = 30

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
# Transformer and mixture-of-experts statistics (issue-19 rules), charted when the model has them.
TRANSFORMER_CHARTS = {
    "attention: largest pre-softmax logit": r".*/max_logit",
    "log Z of the logits reaching the loss (mean)": r"loss/.*/log_z_mean",
    "MoE router load imbalance (1 balanced, E all on one)": r"router/.*/imbalance",
}
LAYOUT_CATEGORY = "act_diagnostics"
FINDINGS_TEXT_TAG = "act_diagnostics/findings"


def is_tensorboard_logger(logger: Any) -> bool:
    """A Lightning TensorBoardLogger, or a subclass of one, of either Lightning package (by name:
    neither package need be installed)."""
    return any(cls.__name__ == "TensorBoardLogger" for cls in type(logger).__mro__)


def find_tensorboard(loggers: Iterable[Any]) -> tuple[Any, Any] | None:
    """The first TensorBoard logger with a torch ``SummaryWriter`` and that writer, or None.

    The events are written through the writer's own FileWriter (``_get_file_writer``, there since
    torch 1.1); a writer without it is treated as any other logger (scalars through
    ``log_metrics``, no extras) rather than failing at the first log step.
    """
    from torch.utils.tensorboard import SummaryWriter

    for logger in loggers:
        if not is_tensorboard_logger(logger):
            continue
        writer = getattr(logger, "experiment", None)
        if isinstance(writer, SummaryWriter) and callable(getattr(writer, "_get_file_writer", None)):
            return logger, writer
    return None


def logger_prefix(logger: Any) -> str:
    """What a Lightning logger puts before each metric name (its ``prefix`` argument and "-")."""
    prefix = getattr(logger, "_prefix", "") or ""
    return f"{prefix}{getattr(logger, 'LOGGER_JOIN_CHAR', LOGGER_JOIN_CHAR)}" if prefix else ""


# A chart with more lines than this is a wall of colour: a model with more sites gets one chart per
# group of sites (by module path: block, then layer), each statistic in a category of its own.
MAX_LINES_PER_CHART = 8
_SEPARATORS = re.compile(r"([./])")


def _prefix(tag: str, components: int) -> str:
    """The first ``components`` path components of a site tag, with their separators."""
    return "".join(_SEPARATORS.split(tag)[: 2 * components - 1])


def _components(tag: str) -> int:
    return (len(_SEPARATORS.split(tag)) + 1) // 2


def _split(tags: list[str], depth: int, limit: int) -> list[tuple[str, list[str]]]:
    """(module-path prefix, its site tags) groups in forward order, each of at most ``limit`` tags
    where the names allow: a group too large is split one path level deeper."""
    buckets: dict[str, list[str]] = {}
    for tag in tags:
        buckets.setdefault(_prefix(tag, depth), []).append(tag)
    out: list[tuple[str, list[str]]] = []
    for prefix, members in buckets.items():
        deeper = any(_components(m) > depth for m in members)
        out += _split(members, depth + 1, limit) if len(members) > limit and deeper else [(prefix, members)]
    return out


def site_groups(tags: Iterable[str], limit: int = MAX_LINES_PER_CHART) -> list[list[tuple[str, list[str]]]]:
    """Site tags (forward order) packed into charts of at most ``limit`` lines: each chart a list of
    consecutive module-path groups (prefix, tags)."""
    charts: list[list[tuple[str, list[str]]]] = []
    size = 0
    for group in _split(list(tags), 1, limit):
        if charts and size + len(group[1]) <= limit:
            charts[-1].append(group)
            size += len(group[1])
        else:
            charts.append([group])
            size = len(group[1])
    return charts


def _group_pattern(prefix: str) -> str:
    """The prefix's own site and every site below it (``blocks.1`` matches ``blocks.1.act``, not ``blocks.10``)."""
    return re.escape(prefix) + r"(?:[./].*)?"


def dashboard_layout(
    scalar_prefix: str = "", site_tags: Iterable[str] | None = None, transformer: bool = False
) -> dict[str, dict[str, list]]:
    """Custom-scalars layout: one multiline chart per statistic, every site on it; with ``site_tags``
    (forward order) of more than :data:`MAX_LINES_PER_CHART` sites, one category per statistic
    holding a chart per group of sites. ``scalar_prefix``: what the TensorBoard logger puts before
    each tag (:func:`logger_prefix`). ``transformer``: add a category for the attention logits, log Z
    and router statistics (the model has attention sites, classification losses or MoE routers)."""
    start = rf"^{re.escape(scalar_prefix)}{TAG_PREFIX}/"
    tags = list(site_tags or [])
    layout: dict[str, dict[str, list]] = {}
    if transformer:
        layout[f"{LAYOUT_CATEGORY}: transformer"] = {
            title: ["Multiline", [rf"{start}{pattern}$"]] for title, pattern in TRANSFORMER_CHARTS.items()
        }
    if len(tags) <= MAX_LINES_PER_CHART:
        charts = {title: ["Multiline", [rf"{start}.*/{stat}$"]] for title, stat in DASHBOARD_CHARTS.items()}
        return {LAYOUT_CATEGORY: charts, **layout}
    groups = site_groups(tags)
    for title, stat in DASHBOARD_CHARTS.items():
        category = layout.setdefault(f"{LAYOUT_CATEGORY}: {title}", {})
        for chart in groups:
            first, last = chart[0][0], chart[-1][0]
            label = first if first == last else f"{first} ... {last}"
            alternatives = "|".join(_group_pattern(prefix) for prefix, _ in chart)
            category[f"{stat}: {label}"] = ["Multiline", [rf"{start}(?:{alternatives})/{stat}$"]]
    return layout


class TensorBoardExtras:
    """Writes a run's TensorBoard views: per log step one event with its scalars (when the
    TensorBoard logger's scalars are routed here), histograms and heatmap images."""

    def __init__(
        self, writer: Any, histograms: bool = True, grad_histograms: bool = False, heatmaps: bool = True, scalar_prefix: str = ""
    ) -> None:
        self.writer = writer
        self.histograms = histograms
        self.grad_histograms = grad_histograms
        self.scalar_prefix = scalar_prefix
        # Layers x steps images of dead fraction and saturation (outputs/heatmap.py).
        self.heatmaps = HeatmapWriter() if heatmaps else None
        self._layout_written = False

    def write_layout(self, site_tags: Iterable[str] | None = None, transformer: bool = False) -> None:
        """The custom-scalars layout, once per run (grouped by module path when ``site_tags`` are many)."""
        if not self._layout_written:
            self.writer.add_custom_scalars(dashboard_layout(self.scalar_prefix, site_tags, transformer))
            self._layout_written = True

    def write_snapshot(self, snapshot: Snapshot, step: int, scalars: dict[str, float] | None = None) -> None:
        """One event for the log step: ``scalars`` (tag -> value, as for ``log_metrics``), the
        histograms of the step's samples and, when due, the heatmap images."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import summary

        if not self._layout_written:  # the sites of the first log step name the layout's groups
            transformer = bool(
                getattr(snapshot, "log_z", None) or getattr(snapshot, "routers", None)
                or any(site.source == "attention" for site in snapshot.sites.values())
            )
            self.write_layout(site_tags(site.name for site, _ in snapshot.ordered()).values(), transformer)
        # What add_scalar writes (summary.scalar's simple_value), at a quarter of its cost.
        prefix = self.scalar_prefix
        values = [Summary.Value(tag=prefix + tag, simple_value=float(value)) for tag, value in (scalars or {}).items()]
        if self.heatmaps is not None:
            values += self.heatmaps.summaries(snapshot, step)
        if self.histograms:
            tags = site_tags(site.name for site, _ in snapshot.ordered())
            views = [("output", snapshot.out_samples)] + ([("grad", snapshot.grad_samples)] if self.grad_histograms else [])
            for suffix, samples in views:
                for name, sample in samples.items():
                    finite = np.asarray(sample, dtype=np.float64)
                    finite = finite[np.isfinite(finite)]  # NaN/Inf are reported as findings, not binned
                    if finite.size:
                        tag = f"{TAG_PREFIX}/{tags.get(name) or site_tag(name)}/{suffix}"
                        values += summary.histogram(tag, finite, HISTOGRAM_BUCKETS).value
        self._write(values, step)

    def finish(self, step: int) -> None:
        """End of fit: the heatmap images of the whole run, if windows came after the last ones."""
        if self.heatmaps is not None:
            self._write(self.heatmaps.final(), step)

    def _write(self, values: list[Any], step: int) -> None:
        if values:
            from tensorboard.compat.proto.summary_pb2 import Summary

            self.writer._get_file_writer().add_summary(Summary(value=values), step)

    def write_text(self, markdown: str, step: int, tag: str = FINDINGS_TEXT_TAG) -> None:
        self.writer.add_text(tag, markdown, step)

    def flush(self) -> None:
        self.writer.flush()
