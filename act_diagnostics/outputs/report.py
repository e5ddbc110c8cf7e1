"""The end-of-fit report: every finding plus a per-layer table of the latest statistics.

Built from the rule engine's findings, the last :class:`~act_diagnostics.core.Snapshot` and, where the
callback recorded it, the run's :class:`~act_diagnostics.outputs.history.StatHistory`; written as
``report.json`` (read back by ``act-diagnostics report``), ``report.md`` with one chart per finding
(PNG files beside it: the folder is self-contained, one thing to attach to a bug report), a
Markdown table for TensorBoard's text tab, and a plain-text table for the terminal.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from act_diagnostics.core.snapshot import Snapshot
from act_diagnostics.outputs.applicability import applicable, applies
from act_diagnostics.rules.finding import SEVERITIES, Finding, format_number

# The folder, beside a run's logs, that holds report.json, report.md and its charts (the one
# definition). A hyphen makes it impossible to import: a run with logger=False writes it into the
# working directory, and a folder named like the package there would shadow the package.
REPORT_DIRNAME = "act-diagnostics"
# Where runs before that name wrote it (read by ``act-diagnostics report``).
LEGACY_REPORT_DIRNAMES: tuple[str, ...] = ("act_diagnostics",)
REPORT_FILENAME = "report.json"
MARKDOWN_FILENAME = "report.md"

# The per-layer table's columns, each a SiteStats field and named as it is logged
# (``act/<site>/<stat>``) and in report.json: the console table, report.md, TensorBoard's text and
# ``act-diagnostics report`` all use these names.
TABLE_STATS: tuple[str, ...] = ("firing_rate", "dead_fraction", "saturation", "grad_rms", "std", "max_abs", "nonfinite")
_ORDER = {s: i for i, s in enumerate(reversed(SEVERITIES))}  # errors first


def table_cell(stat: str, value: Any, family: str | None = None) -> str:
    """One cell of the per-layer table: ``-`` where nothing was measured or ``stat`` does not apply
    to the site's ``family``; ``yes``/``no`` for ``nonfinite``; else a short number."""
    if value is None or not applies(stat, family):
        return "-"
    if stat == "nonfinite" or isinstance(value, bool):
        return "yes" if float(value) > 0 else "no"
    return "0" if value == 0 else format_number(value)


def aligned(table: Iterable[list[str]], left: int = 2) -> list[str]:
    """Rows of text cells as aligned lines: the first ``left`` columns flush left, the rest right."""
    table = list(table)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  " + "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in table]


def status_text(finding: Finding | Mapping[str, Any]) -> str:
    """``open`` while the condition holds, ``resolved at step N`` once it stopped holding."""
    resolved = finding.resolved_step if isinstance(finding, Finding) else finding.get("resolved_step")
    return "open" if resolved is None else f"resolved at step {resolved}"


def evidence_text(evidence: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={format_number(v)}" for k, v in evidence.items())


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def md_cell(text: Any) -> str:
    """``text`` safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


@dataclass
class Report:
    """Findings (errors first, then by step) and the latest per-layer statistics."""

    findings: list[Finding] = field(default_factory=list)
    snapshot: Snapshot | None = None
    # How a fit that raised ended: {"step", "exception", "where", "scheduled", "measured"}; None when it
    # ended normally. "where": "training step", or the Lightning stage it raised in outside one;
    # "scheduled": the schedule measured that step; "measured": its forward ran too.
    stopped: dict[str, Any] | None = None
    # The run's per-site series (outputs/history.py), for report.md's charts; None: no charts.
    history: Any = None
    # The rule thresholds the run was judged with ({"<rule>.<name>": value}), for the charts' lines.
    thresholds: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        self.findings = sorted(self.findings, key=lambda f: (_ORDER.get(f.severity, 9), f.step, f.rule, f.site))

    # ------------------------------------------------------------------ data
    def counts(self) -> dict[str, int]:
        return {s: sum(1 for f in self.findings if f.severity == s) for s in SEVERITIES}

    def layers(self) -> list[dict[str, Any]]:
        """One row per site in forward order: site, kind, family and the TABLE_STATS values (None
        where nothing was measured or the statistic does not apply to the site's family)."""
        if self.snapshot is None:
            return []
        rows = []
        for site, stats in self.snapshot.ordered():
            row: dict[str, Any] = {"site": site.name, "kind": site.kind, "family": site.family}
            row.update({key: _json_value(applicable(key, site.family, getattr(stats, key))) for key in TABLE_STATS})
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.snapshot.step if self.snapshot is not None else None,
            "summary": self.counts(),
            "findings": [dict(f.to_dict(), status=f.status) for f in self.findings],
            "layers": self.layers(),
            "stopped": self.stopped,
        }

    def stopped_line(self) -> str:
        """One sentence on how a fit that raised ended ("" when it ended normally)."""
        if not self.stopped:
            return ""
        step, exception, where = self.stopped.get("step"), self.stopped.get("exception"), self.stopped.get("where", "training step")
        if where != "training step":  # in validation, or in a hook between steps
            when = "before the first step" if step is None else f"after step {step}"
            return f"Training stopped {when} with {exception}, outside a training step (Lightning stage: {where})."
        line = f"Training stopped at step {step} with {exception}"
        if self.stopped.get("measured"):
            return line + " (that step was measured: the findings include it)."
        if self.stopped.get("scheduled"):
            return line + ", raised before the model's forward ran: nothing of that step was measured."
        return line + (
            ". That step was not measured (by default about 5 steps of each logging window are), so what "
            "raised is not in these findings: rerun with measure_every_n_steps=1 to measure every step."
        )

    # ------------------------------------------------------------------ writers
    def write_json(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, allow_nan=False)
            fh.write("\n")

    def write_markdown(self, path: str | os.PathLike[str]) -> None:
        """report.md, with each finding's chart written beside it (``finding-<n>-<rule>.png``)."""
        charts = self.write_charts(Path(path).parent)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.markdown(charts) + "\n")

    def write_charts(self, folder: str | os.PathLike[str]) -> dict[int, str]:
        """One PNG per finding that has a chart and a recorded series; finding index -> file name."""
        from act_diagnostics.outputs.chart import SHARE_STATS, chart_spec, draw_chart

        if self.history is None:
            return {}
        written: dict[int, str] = {}
        for i, f in enumerate(self.findings, start=1):
            spec = chart_spec(f, self.thresholds)
            points = self.history.series(f.site, spec[0]) if spec is not None else []
            if spec is None or not points:
                continue
            stat, name, value = spec
            marks = [(f.step, "raised")] + ([(f.resolved_step, "resolved")] if f.resolved_step is not None else [])
            filename = f"finding-{i}-{f.rule}.png"
            try:
                draw_chart(
                    points, Path(folder) / filename, f"{stat} of {f.site}",
                    threshold=(f"{f.rule}.{name}", value) if name is not None and value is not None else None,
                    marks=marks, share=stat in SHARE_STATS,
                )
            except Exception:  # noqa: BLE001 - a picture must never cost the report its text
                continue
            written[i] = filename
        return written

    def markdown(self, charts: Mapping[int, str] | None = None) -> str:
        """The whole report.md: summary, each finding with its evidence, status and chart, the table."""
        c = self.counts()
        lines = ["# act_diagnostics report", "", f"**Findings**: {c['error']} error(s), {c['warning']} warning(s), {c['info']} info", ""]
        if self.stopped:
            lines += [f"**{md_cell(self.stopped_line())}**", ""]
        for i, f in enumerate(self.findings, start=1):
            where = f"`{f.site}`" if f.site else "the model"
            lines += [f"## {i}. {f.severity}: {f.rule} at {where}, step {f.step} ({status_text(f)})", "", f.message.rstrip(".") + ".", ""]
            if f.evidence:
                lines += [f"- **Evidence**: {evidence_text(f.evidence)}"]
            lines += [f"- **Status**: {self._status_sentence(f)}", f"- **Fix**: {f.recommendation}", ""]
            if charts and i in charts:
                lines += [f"![{md_cell(f.rule)}: {md_cell(f.site)} over the run]({charts[i]})", ""]
        lines += self._layer_lines()
        return "\n".join(lines).rstrip()

    def _status_sentence(self, f: Finding) -> str:
        if f.resolved_step is not None:
            return f"resolved: the condition stopped holding at step {f.resolved_step}"
        end = f" (step {self.snapshot.step})" if self.snapshot is not None else ""
        return f"open: the condition still held at the end of the run{end}"

    def markdown_table(self) -> str:
        """Findings and the per-layer table as Markdown (also TensorBoard's text tab)."""
        c = self.counts()
        lines = [f"**Findings**: {c['error']} error(s), {c['warning']} warning(s), {c['info']} info", ""]
        if self.stopped:
            lines += [f"**{md_cell(self.stopped_line())}**", ""]
        if self.findings:
            lines += ["| severity | rule | site | step | status | finding | evidence | fix |", "|---|---|---|---|---|---|---|---|"]
            for f in self.findings:
                where = f.site or "(model)"
                cells = [f.severity, f.rule, where, f.step, status_text(f), f.message, evidence_text(f.evidence), f.recommendation]
                lines.append("| " + " | ".join(md_cell(x) for x in cells) + " |")
            lines.append("")
        lines += self._layer_lines()
        return "\n".join(lines).rstrip()

    def _layer_lines(self) -> list[str]:
        rows = self.layers()
        if not rows:
            return []
        step = self.snapshot.step if self.snapshot is not None else "?"
        lines = [f"**Per-layer statistics** (window ending at step {step})", ""]
        lines.append("| site | kind | " + " | ".join(TABLE_STATS) + " |")
        lines.append("|---|---|" + "---:|" * len(TABLE_STATS))
        for r in rows:
            cells = [table_cell(k, r[k], r.get("family")) for k in TABLE_STATS]
            lines.append(f"| {md_cell(r['site'])} | {r['kind']} | " + " | ".join(cells) + " |")
        return lines

    def console_table(self) -> str:
        """A plain-text summary for the terminal: findings, then the per-layer table."""
        c = self.counts()
        lines = [f"act_diagnostics: {c['error']} error(s), {c['warning']} warning(s), {c['info']} info"]
        if self.stopped:
            lines.append("  " + self.stopped_line())
        for f in self.findings:
            where = f"'{f.site}'" if f.site else "model"
            lines.append(f"  [{f.severity}] {f.rule} at step {f.step}, {where} ({status_text(f)}): {f.message}")
            if f.evidence:
                lines.append(f"      evidence: {evidence_text(f.evidence)}")
            lines.append(f"      fix: {f.recommendation}")
        table = self.layer_table()
        if table:
            lines += ["", table]
        return "\n".join(lines)

    def layer_table(self) -> str:
        """The per-layer statistics of the snapshot as aligned plain text ("" without one)."""
        rows = self.layers()
        if not rows:
            return ""
        header = ["site", "kind", *TABLE_STATS]
        body = [[str(r["site"]), str(r["kind"]), *(table_cell(k, r[k], r.get("family")) for k in TABLE_STATS)] for r in rows]
        return "\n".join(aligned([header, *body]))
