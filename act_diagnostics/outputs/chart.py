"""A finding's chart for report.md: the statistic behind it over the run, with its threshold.

Drawn with Pillow (matplotlib is a development extra only): a line of the site's statistic per log
step, the rule's threshold as a dashed red line, and grey markers at the step the finding was raised
and, once it stopped holding, the step it was resolved.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from act_diagnostics.outputs.heatmap import draw_text, font
from act_diagnostics.rules.finding import Finding, format_number

# rule id -> (site statistic charted, threshold suffix or None). The threshold drawn is the rule's
# "<severity prefix>_<suffix>" (warn_fraction for a warning, error_fraction for an error), so the
# line is the one the finding crossed; None: the rule judges a ratio between sites, not this line.
FINDING_CHARTS: dict[str, tuple[str, str | None]] = {
    "dead-units": ("dead_fraction", "fraction"),
    "saturation": ("saturated_units", "fraction"),
    "near-dead-units": ("saturated_units", "fraction"),
    "attention-collapse": ("saturation", "share"),
    "saturating-hidden-activation": ("saturation", None),
    "vanishing-gradient": ("grad_rms", None),
    "exploding-gradient": ("grad_rms", None),
    "exploding-activations": ("max_abs", None),
    "signal-propagation": ("std", None),
}
_SEVERITY_PREFIX = {"info": "info", "warning": "warn", "error": "error"}
# Statistics that are shares: the y axis is 0..1 whatever the data.
SHARE_STATS = frozenset({"firing_rate", "dead_fraction", "saturation", "saturated_units"})

WIDTH, HEIGHT = 480, 190
RIGHT, TOP, BOTTOM = 16, 30, 34
LINE_RGB = (33, 102, 172)
THRESHOLD_RGB = (200, 30, 30)
MARK_RGB = (150, 150, 150)
INK_RGB = (0, 0, 0)


def rule_thresholds(rule: str, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The thresholds a rule judges with: its defaults, then ``{"<rule>.<name>": value}`` overrides."""
    from act_diagnostics.rules import RULES

    defaults = next((dict(r.defaults) for r in RULES if r.id == rule), {})
    for key, value in (overrides or {}).items():
        owner, _, name = key.partition(".")
        if owner == rule and name:
            defaults[name] = float(value)
    return defaults


def chart_spec(finding: Finding, overrides: Mapping[str, float] | None = None) -> tuple[str, str | None, float | None] | None:
    """(statistic, threshold name, threshold value) of ``finding``'s chart, or None without one."""
    spec = FINDING_CHARTS.get(finding.rule)
    if spec is None or not finding.site:
        return None
    stat, suffix = spec
    if suffix is None:
        return stat, None, None
    thresholds = rule_thresholds(finding.rule, overrides)
    for prefix in (_SEVERITY_PREFIX.get(finding.severity, "warn"), "warn"):
        name = f"{prefix}_{suffix}"
        if name in thresholds:
            return stat, name, float(thresholds[name])
    return stat, None, None


def _dashed_hline(draw: Any, x0: int, x1: int, y: int, rgb: tuple[int, int, int], dash: int = 6) -> None:
    for x in range(x0, x1, 2 * dash):
        draw.line([x, y, min(x + dash, x1), y], fill=rgb, width=2)


def draw_chart(
    points: Sequence[tuple[int, float]],
    path: str | os.PathLike[str],
    title: str,
    threshold: tuple[str, float] | None = None,
    marks: Sequence[tuple[int, str]] = (),
    share: bool = False,
) -> None:
    """Write a PNG line chart of ``points`` (step, value) to ``path``.

    ``threshold``: (label, value) drawn dashed; ``marks``: (step, label) vertical markers;
    ``share``: a 0..1 y axis (else the data's range, with the threshold in it).
    """
    from PIL import Image, ImageDraw

    fnt = font()
    img = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    steps = [s for s, _ in points] + [s for s, _ in marks]
    s_lo, s_hi = (min(steps), max(steps)) if steps else (0, 1)
    s_hi = s_hi if s_hi > s_lo else s_lo + 1
    values = [v for _, v in points if math.isfinite(v)] + ([threshold[1]] if threshold else [])
    if share:
        v_lo, v_hi = 0.0, 1.0
    else:
        v_lo, v_hi = (min(min(values), 0.0), max(values) * 1.1) if values else (0.0, 1.0)
        v_hi = v_hi if v_hi > v_lo else v_lo + 1.0
    y_labels = [format_number(float(v)) if v else "0" for v in (v_lo, v_hi)]
    left = 10 + max(int(draw.textbbox((0, 0), t, font=fnt)[2]) for t in y_labels)
    x0, x1, y0, y1 = left, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    draw_text(draw, (x0, 6), title, fnt)
    draw.rectangle([x0, y1, x1, y0], outline=INK_RGB)

    def xy(step: float, value: float) -> tuple[float, float]:
        return x0 + (step - s_lo) / (s_hi - s_lo) * (x1 - x0), y0 - (value - v_lo) / (v_hi - v_lo) * (y0 - y1)

    for step, label in marks:  # labelled at the bottom, inside the plot
        x = xy(step, v_lo)[0]
        draw.line([x, y1, x, y0], fill=MARK_RGB)
        draw_text(draw, (x + 3, y0 - 3), label, fnt, anchor="lb", fill=MARK_RGB)
    if threshold is not None:
        label, value = threshold
        y = int(round(xy(s_lo, value)[1]))
        _dashed_hline(draw, x0, x1, y, THRESHOLD_RGB)
        draw_text(draw, (x1 - 2, y - 2), f"{label} {format_number(value)}", fnt, anchor="rb", fill=THRESHOLD_RGB)
    line = [xy(s, v) for s, v in points if math.isfinite(v)]
    if len(line) > 1:
        draw.line(line, fill=LINE_RGB, width=2)
    for px, py in line:
        draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=LINE_RGB)
    for value, label in zip((v_lo, v_hi), y_labels):  # y axis: its two ends
        draw_text(draw, (x0 - 4, xy(s_lo, value)[1]), label, fnt, anchor="rm", fill=INK_RGB)
    draw_text(draw, (x0, y0 + 4), str(s_lo), fnt, anchor="la", fill=INK_RGB)
    draw_text(draw, (x1, y0 + 4), str(s_hi), fnt, anchor="ra", fill=INK_RGB)
    draw_text(draw, ((x0 + x1) // 2, y0 + 4), "training step", fnt, anchor="ma", fill=INK_RGB)
    img.save(path, format="PNG")


def engine_thresholds(engine: Any) -> dict[str, float]:
    """Every threshold a rule engine judges with, as ``{"<rule>.<name>": value}`` ({} without one)."""
    rules = getattr(engine, "rules", None) or []
    return {f"{rule.id}.{name}": float(value) for rule in rules for name, value in getattr(rule, "t", {}).items()}
