"""Read a finished run back: ``act-diagnostics report LOGDIR``.

A run is a log directory that holds ``act-diagnostics/report.json`` (written by the callback at the
end of fit, or from ``on_exception`` when training failed; runs before 0.2 wrote it into
``act_diagnostics/``) and/or TensorBoard event files with ``act/<site>/<stat>`` scalars. ``LOGDIR``
may be the run's own directory (a TensorBoardLogger ``version_N``) or a parent that contains exactly
one run.

The findings come from report.json or, without one (still training, or ``report=False``), from the
findings text the callback writes to TensorBoard whenever one is raised. The per-layer table comes
from the event files (every scalar is read: EventAccumulator with size_guidance 0), or from
report.json where there are no event files (e.g. a CSVLogger run). A run that ended in an exception
reads back the same way: what was measured up to the failure.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from act_diagnostics.core.snapshot import LOGGED_STATS
from act_diagnostics.outputs.report import (
    LEGACY_REPORT_DIRNAMES,
    REPORT_DIRNAME,
    REPORT_FILENAME,
    TABLE_STATS,
    Report,
    aligned,
    evidence_text,
    md_cell,
    status_text,
    table_cell,
)
from act_diagnostics.outputs.scalars import LOGGER_JOIN_CHAR, TAG_PREFIX, site_tags
from act_diagnostics.rules.finding import format_number

EVENT_FILE_MARK = "events.out.tfevents."
# How deep below LOGDIR to look for a run (root/name/version_N is 2 levels).
SEARCH_DEPTH = 4
# The folders a run's report.json may be in: the current name first, then older runs' names.
REPORT_DIRNAMES: tuple[str, ...] = (REPORT_DIRNAME, *LEGACY_REPORT_DIRNAMES)
# TensorBoard text the callback writes: the final report at the end of fit, the findings so far
# whenever new ones are raised (outputs/tensorboard.py). Read, newest first, where report.json is missing.
FINDINGS_TEXT_TAGS = ("act_diagnostics/report", "act_diagnostics/findings")
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
    family: str | None = None

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
    findings: list[dict[str, Any]] | None  # None: not known (no report.json and no findings text)
    layers: list[LayerRow]
    last_step: int | None
    report_data: dict[str, Any] = field(default_factory=dict, repr=False)
    # Where the findings were read: "report.json", the TensorBoard text tag they came from, or None.
    findings_source: str | None = None

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
            "findings": self.findings,
            "findings_source": self.findings_source,
            "stopped": self.report_data.get("stopped"),
            "layers": [row.to_dict() for row in self.layers],
        }


# ---------------------------------------------------------------------------------- locating a run
def _has_events(d: Path) -> bool:
    return any(p.is_file() and p.name.startswith(EVENT_FILE_MARK) for p in d.iterdir())


def report_file(run_dir: Path) -> Path | None:
    """The run's report.json, in the current folder or an older run's (``act_diagnostics/``)."""
    for name in REPORT_DIRNAMES:
        path = run_dir / name / REPORT_FILENAME
        if path.is_file():
            return path
    return None


def _is_run(d: Path) -> bool:
    return report_file(d) is not None or _has_events(d)


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
    if root.resolve().name in REPORT_DIRNAMES and (root / REPORT_FILENAME).is_file():
        return root.resolve().parent  # the report folder itself was passed (even as ".")
    if _is_run(root):
        return root
    runs: list[Path] = []
    frontier = [root]
    for _ in range(SEARCH_DEPTH):
        below: list[Path] = []
        for d in frontier:
            for child in sorted(p for p in d.iterdir() if p.is_dir() and p.name not in REPORT_DIRNAMES):
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


@dataclass
class EventData:
    """What the event files hold for the readback."""

    rows: list[LayerRow]
    last_step: int | None
    findings: list[dict[str, Any]] | None  # None: no findings text in the files
    findings_source: str | None


def _read_events(run_dir: Path) -> EventData:
    """Per-site last values from the run's event files (in the order the sites were logged), and
    the newest findings text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(run_dir),
        size_guidance={"scalars": 0, "tensors": 0, "histograms": 1, "images": 1, "compressedHistograms": 1},
    )
    try:
        acc.Reload()
    except Exception as exc:
        raise ReadbackError(f"{run_dir}: cannot read the TensorBoard event files ({type(exc).__name__}: {exc})") from exc
    series: dict[str, dict[str, list[Any]]] = {}  # site -> stat -> events, in the order logged
    for tag in acc.Tags().get("scalars", []):
        parsed = split_tag(tag)
        events = acc.Scalars(tag) if parsed is not None else []
        if parsed is not None and events:
            series.setdefault(parsed[0], {})[parsed[1]] = events
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
    findings, source = _findings_from_text(acc)
    return EventData(rows, last_step, findings, source)


def _findings_from_text(acc: Any) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The findings of the newest findings text (the final report, else the latest findings table)."""
    tensor_tags = set(acc.Tags().get("tensors", []))
    for tag in FINDINGS_TEXT_TAGS:
        name = f"{tag}/text_summary"
        if name not in tensor_tags:
            continue
        events = acc.Tensors(name)
        if not events:
            continue
        last = events[-1]
        text = b"".join(last.tensor_proto.string_val).decode("utf-8", "replace")
        return parse_findings_markdown(text), f"TensorBoard text {tag} (step {last.step})"
    return None, None


def _md_cells(line: str) -> list[str]:
    """The cells of one markdown table row, ``\\|`` read back as ``|``."""
    body = line.strip()[1:-1].replace("\\|", "\x00")
    return [cell.strip().replace("\x00", "|") for cell in body.split("|")]


def parse_findings_markdown(text: str) -> list[dict[str, Any]]:
    """The findings of a :meth:`Report.markdown_table` (this version's columns or older ones')."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| severity | rule |")), None)
    if start is None:
        return []
    rename = {"finding": "message", "fix": "recommendation"}
    keys = [rename.get(h, h) for h in _md_cells(lines[start])]
    findings = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = _md_cells(line)
        if len(cells) != len(keys):
            continue
        f: dict[str, Any] = dict(zip(keys, cells))
        f["site"] = "" if f.get("site") == "(model)" else f.get("site", "")
        f["step"] = int(f["step"]) if str(f.get("step", "")).isdigit() else f.get("step")
        status = str(f.get("status", ""))
        if status.startswith("resolved at step "):
            f["resolved_step"] = int(status.rsplit(" ", 1)[1])
        findings.append(f)
    return findings


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
        stats = item.get("stats")
        if not isinstance(stats, dict):
            stats = item
        name = item.get("site", item.get("name"))
        if name is None:
            continue
        values = {k: stats.get(k) for k in TABLE_STATS if isinstance(stats.get(k), (int, float))}
        rows.append(LayerRow(site=str(name), step=data.get("step"), values=values, kind=item.get("kind"), family=item.get("family")))
    return rows


def _family_of(kind: str | None) -> str | None:
    """A kind's family, for runs whose report.json predates the ``family`` field."""
    from act_diagnostics.core.kinds import KINDS

    found = KINDS.get(kind or "")
    return getattr(found, "family", None)


def load_run(logdir: str | Path) -> RunReadback:
    """Read one finished (or failed) run; see the module docstring.

    Raises:
        ReadbackError: nothing act_diagnostics wrote is found, with the reason.
    """
    run_dir = find_run(logdir)
    report_path = report_file(run_dir)
    data = _read_report(report_path) if report_path is not None else {}
    event_files = sorted(p for p in run_dir.iterdir() if p.is_file() and p.name.startswith(EVENT_FILE_MARK))
    events = _read_events(run_dir) if event_files else EventData([], None, None, None)
    layers = events.rows
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
                row.site, row.kind, row.family = match.site, match.kind, match.family
    for row in layers:
        row.family = row.family or _family_of(row.kind)
    if report_path is not None:
        findings: list[dict[str, Any]] | None = [f for f in data.get("findings", []) if isinstance(f, dict)]
        source: str | None = str(Path(report_path.parent.name) / report_path.name)
    else:
        findings, source = events.findings, events.findings_source
    return RunReadback(
        run_dir=run_dir,
        report_path=report_path,
        event_files=event_files,
        findings=findings,
        layers=layers,
        last_step=events.last_step if events.last_step is not None else data.get("step"),
        report_data=data,
        findings_source=source,
    )


# ---------------------------------------------------------------------------------- rendering
def missing_findings_text(run: RunReadback) -> str:
    """What is missing when the findings cannot be read, and what that means."""
    upto = f" up to step {run.last_step}" if run.last_step is not None else ""
    return (
        f"not known: there is no {REPORT_DIRNAME}/{REPORT_FILENAME} (written at the end of fit; the run may still be "
        f"running, or report=False) and the event files hold no findings text ({FINDINGS_TEXT_TAGS[1]}, written to "
        f"TensorBoard when a finding is raised): either none was raised{upto}, or the rules were off"
    )


def _table_rows(run: RunReadback) -> tuple[list[str], list[list[str]]]:
    """The per-layer table: the same columns as the end-of-fit report (TABLE_STATS), and the step."""
    header = ["site", "kind", "step", *TABLE_STATS]
    body = [
        [
            row.site,
            row.kind or "-",
            format_number(row.step) if row.step is not None else "-",
            *(table_cell(s, row.values.get(s), row.family) for s in TABLE_STATS),
        ]
        for row in run.layers
    ]
    return header, body


def _finding_where(f: dict[str, Any]) -> str:
    return f"site '{f['site']}'" if f.get("site") else "model"


def _evidence(f: dict[str, Any]) -> str:
    evidence = f.get("evidence")
    return evidence_text(evidence) if isinstance(evidence, dict) else str(evidence or "")


def render_text(run: RunReadback) -> str:
    lines = [f"act_diagnostics report: {run.run_dir}"]
    if run.report_path is None:
        lines.append(f"(no {REPORT_DIRNAME}/{REPORT_FILENAME}: the run may still be running, or report=False)")
    if run.last_step is not None:
        lines.append(f"last logged step: {run.last_step}")
    lines.append("")
    if run.stopped_line:
        lines += [run.stopped_line, ""]
    if run.findings is None:
        lines.append(f"Findings: {missing_findings_text(run)}")
    else:
        source = f", from {run.findings_source}" if run.report_path is None and run.findings_source else ""
        lines.append(f"Findings ({len(run.findings)}{source}):" if run.findings else f"Findings: none{source}")
    for f in run.findings or []:
        lines.append(
            f"  [{f.get('severity', '?')}] {f.get('rule', '?')} at step {f.get('step', '?')}, {_finding_where(f)} "
            f"({status_text(f)}): {f.get('message', '')}"
        )
        if _evidence(f):
            lines.append(f"      evidence: {_evidence(f)}")
        if f.get("recommendation"):
            lines.append(f"      fix: {f['recommendation']}")
    lines.append("")
    if run.layers:
        header, body = _table_rows(run)
        lines.append("Per-layer statistics (last log window):")
        lines += aligned([header, *body])
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
    if run.findings is None:
        text = missing_findings_text(run)
        lines.append(text[0].upper() + text[1:] + ".")
    elif run.findings:
        if run.report_path is None and run.findings_source:
            lines += [f"From {run.findings_source}.", ""]
        lines += ["| severity | rule | site | step | status | finding | evidence | fix |", "|---|---|---|---:|---|---|---|---|"]
        for f in run.findings:
            site = f"`{f['site']}`" if f.get("site") else "(model)"
            head = [f.get("severity", ""), f.get("rule", ""), site, f.get("step", ""), status_text(f)]
            cells = [*head, f.get("message", ""), _evidence(f), f.get("recommendation", "")]
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
