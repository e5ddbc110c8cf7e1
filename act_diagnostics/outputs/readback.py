"""Read a finished run back: ``act-diagnostics report LOGDIR``.

A run is a log directory that holds ``act_diagnostics/report.json`` (written by the callback at the
end of fit, or from ``on_exception`` when training failed) and/or TensorBoard event files with
``act/<site>/<stat>`` scalars. ``LOGDIR`` may be the run's own directory (a TensorBoardLogger
``version_N``) or a parent that contains exactly one run.

The findings come from report.json; the per-layer table from the event files (every scalar is read:
EventAccumulator with size_guidance 0), or from report.json where there are no event files (e.g. a
CSVLogger run). A run that ended in an exception reads back the same way: what was measured up to
the failure.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from act_diagnostics.core.kinds import KINDS
from act_diagnostics.core.snapshot import LOGGED_STATS
from act_diagnostics.outputs.report import NOT_DEAD_FAMILIES, REPORT_DIRNAME, REPORT_FILENAME, Report, md_cell
from act_diagnostics.outputs.scalars import LOGGER_JOIN_CHAR, TAG_PREFIX, site_tags

EVENT_FILE_MARK = "events.out.tfevents."
# How deep below LOGDIR to look for a run (root/name/version_N is 2 levels).
SEARCH_DEPTH = 4
# Columns of the per-layer table, in order (every one is documented in docs/logged-metrics.md).
# A run without report.json (still training, or report=False): its findings are not in the event
# scalars, so "none" would be a claim the readback cannot make.
NO_REPORT_FINDINGS = (
    "not known without report.json (written at the end of fit): TensorBoard's Text tab lists them as "
    "they are raised"
)
TABLE_STATS = ("firing_rate", "dead_fraction", "saturation", "grad_rms", "std", "max_abs", "nonfinite")
Format = Literal["text", "json", "md"]
FORMATS: tuple[str, ...] = ("text", "json", "md")


class ReadbackError(Exception):
    """LOGDIR is missing or holds no act_diagnostics output; the message says what was looked for."""


@dataclass
class LayerRow:
    """The last logged values of one site (and the step they were logged at)."""

    site: str
    step: int | None = None
    values: dict[str, float | None] = field(default_factory=dict)
    kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"site": self.site, "kind": self.kind, "step": self.step}
        d.update({k: _json_number(v) for k, v in self.values.items()})
        return d


@dataclass
class RunReadback:
    """Everything ``act-diagnostics report`` prints about one run."""

    run_dir: Path
    report_path: Path | None
    event_files: list[Path]
    findings: list[dict[str, Any]]
    layers: list[LayerRow]
    last_step: int | None
    report_data: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def stopped_line(self) -> str:
        """How the fit ended, when it raised (report.json's "stopped"), else ""."""
        stopped = self.report_data.get("stopped")
        return Report(stopped=stopped).stopped_line() if isinstance(stopped, dict) else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "report_json": str(self.report_path) if self.report_path else None,
            "event_files": [str(p) for p in self.event_files],
            "last_step": self.last_step,
            "findings": self.findings if self.report_path is not None else None,
            "stopped": self.report_data.get("stopped"),
            "layers": [row.to_dict() for row in self.layers],
        }


# ---------------------------------------------------------------------------------- locating a run
def _has_events(d: Path) -> bool:
    return any(p.is_file() and p.name.startswith(EVENT_FILE_MARK) for p in d.iterdir())


def _is_run(d: Path) -> bool:
    return (d / REPORT_DIRNAME / REPORT_FILENAME).is_file() or _has_events(d)


def find_run(logdir: str | Path) -> Path:
    """The run directory for ``logdir``: itself, or the one run found below it.

    Raises:
        ReadbackError: ``logdir`` does not exist, is not a directory, holds no run, or several.
    """
    root = Path(logdir)
    if not root.exists():
        raise ReadbackError(f"{logdir}: no such directory")
    if not root.is_dir():
        raise ReadbackError(f"{logdir}: not a directory (pass the run's log directory)")
    if root.resolve().name == REPORT_DIRNAME and (root / REPORT_FILENAME).is_file():
        return root.resolve().parent  # the act_diagnostics/ folder itself was passed (even as ".")
    if _is_run(root):
        return root
    runs: list[Path] = []
    frontier = [root]
    for _ in range(SEARCH_DEPTH):
        below: list[Path] = []
        for d in frontier:
            for child in sorted(p for p in d.iterdir() if p.is_dir() and p.name != REPORT_DIRNAME):
                (runs if _is_run(child) else below).append(child)
        frontier = below
    if not runs:
        raise ReadbackError(
            f"{logdir}: no act_diagnostics output here: expected {REPORT_DIRNAME}/{REPORT_FILENAME} or TensorBoard "
            f"event files ({EVENT_FILE_MARK}*) in it or in one run directory below it"
        )
    if len(runs) > 1:
        listed = "\n  ".join(str(r) for r in runs[:20])
        raise ReadbackError(f"{logdir}: holds {len(runs)} runs; pass one of them:\n  {listed}")
    return runs[0]


# ---------------------------------------------------------------------------------- reading
def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _read_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReadbackError(f"{path}: not a readable report ({exc})") from exc
    if not isinstance(data, dict):
        raise ReadbackError(f"{path}: not a readable report (expected a JSON object)")
    return data


def split_tag(tag: str) -> tuple[str, str] | None:
    """``act/<site tag>/<stat>`` -> (site tag, stat); None for any other tag. A logger prefix
    (``TensorBoardLogger(prefix="p")`` writes ``p-act/...``) is skipped: it holds no ``/``, so a
    site path containing ``-act/`` (``act_validate/blocks.pre-act/relu/std``) is not taken for one."""
    start = 0
    if not tag.startswith(TAG_PREFIX + "/"):
        start = tag.find(LOGGER_JOIN_CHAR + TAG_PREFIX + "/") + 1  # 0: no "-act/" in the tag
        if start == 0 or "/" in tag[:start]:
            return None
    site, _, stat = tag[start + len(TAG_PREFIX) + 1 :].rpartition("/")
    if not site or stat not in LOGGED_STATS:
        return None
    return site, stat


def _read_events(run_dir: Path) -> tuple[list[LayerRow], int | None]:
    """Per-site last values from the run's event files (in the order the sites were logged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(run_dir),
        size_guidance={"scalars": 0, "tensors": 0, "histograms": 1, "images": 1, "compressedHistograms": 1},
    )
    try:
        acc.Reload()
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: say which run
        raise ReadbackError(f"{run_dir}: cannot read the TensorBoard event files ({type(exc).__name__}: {exc})") from exc
    series: dict[str, dict[str, list[Any]]] = {}  # site -> stat -> events, in the order logged
    for tag in acc.Tags().get("scalars", []):
        parsed = split_tag(tag)
        events = acc.Scalars(tag) if parsed is not None else []
        if events:
            series.setdefault(parsed[0], {})[parsed[1]] = events  # type: ignore[index]
    rows: list[LayerRow] = []
    for site, stats in series.items():
        # One window per row: its last log step. A statistic not logged then (a detail-step-only
        # one, such as param_grad_norm) is left out rather than shown from an older window.
        step = max(int(events[-1].step) for events in stats.values())
        row = LayerRow(site=site, step=step)
        for stat, events in stats.items():
            if stat == "nonfinite":  # any NaN/Inf during the run, not only in the last window
                row.values[stat] = max(float(e.value) for e in events)
            elif int(events[-1].step) == step:
                row.values[stat] = float(events[-1].value)
        rows.append(row)
    last_step = max((row.step for row in rows if row.step is not None), default=None)
    return rows, last_step


def _rows_from_report(data: dict[str, Any]) -> list[LayerRow]:
    """Per-site rows from report.json where it carries them (``sites``/``layers``: list or mapping)."""
    raw = data.get("layers", data.get("sites"))
    if isinstance(raw, dict):
        items = [{"site": k, **v} for k, v in raw.items() if isinstance(v, dict)]
    elif isinstance(raw, list):
        items = [v for v in raw if isinstance(v, dict)]
    else:
        return []
    rows = []
    for item in items:
        stats = item.get("stats") if isinstance(item.get("stats"), dict) else item
        name = item.get("site", item.get("name"))
        if name is None:
            continue
        values = {k: stats.get(k) for k in TABLE_STATS if isinstance(stats.get(k), (int, float))}
        rows.append(LayerRow(site=str(name), step=data.get("step"), values=values, kind=item.get("kind")))
    return rows


def load_run(logdir: str | Path) -> RunReadback:
    """Read one finished (or failed) run; see the module docstring.

    Raises:
        ReadbackError: nothing act_diagnostics wrote is found, with the reason.
    """
    run_dir = find_run(logdir)
    report_path = run_dir / REPORT_DIRNAME / REPORT_FILENAME
    data = _read_report(report_path) if report_path.is_file() else {}
    event_files = sorted(p for p in run_dir.iterdir() if p.is_file() and p.name.startswith(EVENT_FILE_MARK))
    layers, last_step = _read_events(run_dir) if event_files else ([], None)
    if not data and not layers:
        raise ReadbackError(
            f"{run_dir}: the event files hold no act_diagnostics scalars ({TAG_PREFIX}/<site>/<stat>) and there is no "
            f"{REPORT_DIRNAME}/{REPORT_FILENAME}: was the run trained with ActivationDiagnostics?"
        )
    report_rows = _rows_from_report(data)
    if not layers:
        layers = report_rows
    else:
        # Event tags name sites in their logger-safe form (":" -> "/"); report.json has the real names and kinds.
        tags = site_tags(r.site for r in report_rows)  # report.json lists sites in forward order
        by_tag = {tags[r.site]: r for r in report_rows}
        for row in layers:
            match = by_tag.get(row.site)
            if match is not None:
                row.site, row.kind = match.site, match.kind
    findings = [f for f in data.get("findings", []) if isinstance(f, dict)]
    return RunReadback(
        run_dir=run_dir,
        report_path=report_path if report_path.is_file() else None,
        event_files=event_files,
        findings=findings,
        layers=layers,
        last_step=last_step if last_step is not None else data.get("step"),
        report_data=data,
    )


# ---------------------------------------------------------------------------------- rendering
def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        if 1e-3 <= abs(v) < 1e4:
            return f"{v:.3g}"
        return f"{v:.2e}"
    return str(value)


def _cell(row: LayerRow, stat: str) -> str:
    value = row.values.get(stat)
    kind = KINDS.get(row.kind or "")
    if stat == "dead_fraction" and kind is not None and kind.family in NOT_DEAD_FAMILIES:
        return "-"  # as in the report: never above 0.5 (sigmoid) is not dead
    if stat == "nonfinite" and value is not None:
        return "yes" if value > 0 else "no"
    return _fmt(value)


def _table_rows(run: RunReadback) -> tuple[list[str], list[list[str]]]:
    header = ["site", "kind", "step", *TABLE_STATS]
    body = [[row.site, row.kind or "-", _fmt(row.step), *(_cell(row, s) for s in TABLE_STATS)] for row in run.layers]
    return header, body


def _finding_where(f: dict[str, Any]) -> str:
    return f"site '{f['site']}'" if f.get("site") else "model"


def render_text(run: RunReadback) -> str:
    lines = [f"act_diagnostics report: {run.run_dir}"]
    if run.report_path is None:
        lines.append(f"(no {REPORT_DIRNAME}/{REPORT_FILENAME}: the run may still be running, or report=False)")
    if run.last_step is not None:
        lines.append(f"last logged step: {run.last_step}")
    lines.append("")
    if run.stopped_line:
        lines += [run.stopped_line, ""]
    if run.report_path is None:
        lines.append(f"Findings: {NO_REPORT_FINDINGS}")
    else:
        lines.append(f"Findings ({len(run.findings)}):" if run.findings else "Findings: none")
    for f in run.findings:
        lines.append(f"  [{f.get('severity', '?')}] {f.get('rule', '?')} at step {f.get('step', '?')}, {_finding_where(f)}: {f.get('message', '')}")
        if f.get("recommendation"):
            lines.append(f"      fix: {f['recommendation']}")
    lines.append("")
    if run.layers:
        header, body = _table_rows(run)
        widths = [max(len(header[i]), *(len(r[i]) for r in body)) for i in range(len(header))]
        lines.append("Per-layer statistics (last log window):")
        lines.append("  " + "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
        for r in body:
            lines.append("  " + "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    else:
        lines.append("Per-layer statistics: none logged")
    return "\n".join(lines)


def render_markdown(run: RunReadback) -> str:
    lines = ["# act_diagnostics report", "", f"Run: `{run.run_dir}`"]
    if run.last_step is not None:
        lines.append(f"Last logged step: {run.last_step}")
    lines += ["", "## Findings", ""]
    if run.stopped_line:
        lines += [f"**{md_cell(run.stopped_line)}**", ""]
    if run.report_path is None:
        lines.append(NO_REPORT_FINDINGS[0].upper() + NO_REPORT_FINDINGS[1:] + ".")
    elif run.findings:
        lines += ["| severity | rule | site | step | message | recommendation |", "|---|---|---|---:|---|---|"]
        for f in run.findings:
            cells = [f.get("severity", ""), f.get("rule", ""), f"`{f['site']}`" if f.get("site") else "(model)", f.get("step", ""), f.get("message", ""), f.get("recommendation", "")]
            lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    else:
        lines.append("No findings.")
    lines += ["", "## Per-layer statistics (last log window)", ""]
    if run.layers:
        header, body = _table_rows(run)
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|")
        for r in body:
            lines.append("| " + " | ".join([f"`{md_cell(r[0])}`", *(md_cell(c) for c in r[1:])]) + " |")
    else:
        lines.append("None logged.")
    return "\n".join(lines)


def render_run(logdir: str | Path, fmt: str = "text") -> str:
    """The report of the run at ``logdir`` as ``text``, ``json`` or ``md``.

    Raises:
        ValueError: ``fmt`` is not one of text, json, md.
        ReadbackError: see :func:`load_run`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"`fmt` must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run = load_run(logdir)
    if fmt == "json":
        return json.dumps(run.to_dict(), indent=2, default=str)
    if fmt == "md":
        return render_markdown(run)
    return render_text(run)
