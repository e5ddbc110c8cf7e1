"""The end-of-fit report: every finding plus a per-layer table of the latest statistics.

Built from the rule engine's findings and the last :class:`~act_diagnostics.core.Snapshot`; written
as ``report.json`` (read back by ``act-diagnostics report``), ``report.md``, a Markdown table for
TensorBoard's text tab, and a plain-text table for the terminal.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from act_diagnostics.core.snapshot import Snapshot
from act_diagnostics.rules.finding import SEVERITIES, Finding, format_number

# The folder, beside a run's logs, that holds report.json and report.md (the one definition).
REPORT_DIRNAME = "act_diagnostics"
REPORT_FILENAME = "report.json"

# Per-layer columns: (key, header). Every key is a SiteStats field.
LAYER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("firing_rate", "firing"),
    ("dead_fraction", "dead"),
    ("saturation", "saturated"),
    ("grad_rms", "grad RMS"),
    ("std", "std"),
    ("max_abs", "max abs"),
    ("nonfinite", "NaN/Inf"),
)
_ORDER = {s: i for i, s in enumerate(reversed(SEVERITIES))}  # errors first
# Families whose "firing" is a position, not activity (sigmoid > 0.5, tanh > 0, softmax > 1/K):
# a unit that never fires there is not dead, so the tables show "-" for it (report.json keeps it).
NOT_DEAD_FAMILIES = frozenset({"sigmoid", "tanh", "softmax"})


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format_number(value)


def _row_cells(row: dict[str, Any]) -> list[str]:
    """A layer row's LAYER_COLUMNS as table text."""
    return [
        "-" if key == "dead_fraction" and row.get("family") in NOT_DEAD_FAMILIES else _cell(row[key]) for key, _ in LAYER_COLUMNS
    ]


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

    def __post_init__(self) -> None:
        self.findings = sorted(self.findings, key=lambda f: (_ORDER.get(f.severity, 9), f.step, f.rule, f.site))

    @classmethod
    def from_engine(cls, engine: Any, snapshot: Snapshot | None = None) -> "Report":
        return cls(findings=list(engine.findings), snapshot=snapshot)

    # ------------------------------------------------------------------ data
    def counts(self) -> dict[str, int]:
        return {s: sum(1 for f in self.findings if f.severity == s) for s in SEVERITIES}

    def layers(self) -> list[dict[str, Any]]:
        """One row per site in forward order: site, kind, family and the LAYER_COLUMNS values."""
        if self.snapshot is None:
            return []
        rows = []
        for site, stats in self.snapshot.ordered():
            row: dict[str, Any] = {"site": site.name, "kind": site.kind, "family": site.family}
            row.update({key: _json_value(getattr(stats, key)) for key, _ in LAYER_COLUMNS})
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.snapshot.step if self.snapshot is not None else None,
            "summary": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
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
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("# act_diagnostics report\n\n" + self.markdown_table() + "\n")

    def markdown_table(self) -> str:
        """Findings and the per-layer table as Markdown (also TensorBoard's text tab)."""
        c = self.counts()
        lines = [f"**Findings**: {c['error']} error(s), {c['warning']} warning(s), {c['info']} info", ""]
        if self.stopped:
            lines += [f"**{md_cell(self.stopped_line())}**", ""]
        if self.findings:
            lines += ["| severity | rule | site | step | finding | fix |", "|---|---|---|---|---|---|"]
            for f in self.findings:
                lines.append(f"| {f.severity} | {f.rule} | {md_cell(f.site or '(model)')} | {f.step} | {md_cell(f.message)} | {md_cell(f.recommendation)} |")
            lines.append("")
        rows = self.layers()
        if rows:
            step = self.snapshot.step if self.snapshot is not None else "?"
            lines += [f"**Per-layer statistics** (window ending at step {step})", ""]
            lines.append("| site | kind | " + " | ".join(h for _, h in LAYER_COLUMNS) + " |")
            lines.append("|---|---|" + "---:|" * len(LAYER_COLUMNS))
            for r in rows:
                lines.append(f"| {md_cell(r['site'])} | {r['kind']} | " + " | ".join(_row_cells(r)) + " |")
        return "\n".join(lines)

    def console_table(self) -> str:
        """A plain-text summary for the terminal: findings, then the per-layer table."""
        c = self.counts()
        lines = [f"act_diagnostics: {c['error']} error(s), {c['warning']} warning(s), {c['info']} info"]
        if self.stopped:
            lines.append("  " + self.stopped_line())
        for f in self.findings:
            where = f"'{f.site}'" if f.site else "model"
            lines.append(f"  [{f.severity}] {f.rule} at step {f.step}, {where}: {f.message}")
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
        header = ["site", "kind", *(h for _, h in LAYER_COLUMNS)]
        body = [[str(r["site"]), str(r["kind"]), *_row_cells(r)] for r in rows]
        return "\n".join(_aligned([header, *body]))


def _aligned(table: Iterable[list[str]]) -> list[str]:
    table = list(table)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  " + "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in table]
