"""Findings: what a rule concluded about one site, and how it reaches the user as a Python warning."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any, Literal

Severity = Literal["info", "warning", "error"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error")


class ActivationWarning(UserWarning):
    """Category of every warning act_diagnostics issues about a model's activations."""


def severity_rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for error."""
    return SEVERITIES.index(severity)


def _number(value: Any) -> Any:
    # JSON has no NaN/Inf: keep them readable as strings instead of failing the dump.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def format_number(value: Any) -> str:
    """Short human form: 0.734, 3.1e-07, 12000."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return str(value)
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.2e}"


@dataclass
class Finding:
    """One conclusion of one rule about one site (or about the whole model: site ``""``)."""

    rule: str
    site: str
    severity: Severity
    message: str
    recommendation: str
    step: int
    evidence: dict[str, Any] = field(default_factory=dict)
    # Lifecycle: None while the condition still holds (open); the step of the log step at which the
    # rule judged it had stopped holding (resolved). The rule engine sets it.
    resolved_step: int | None = None

    @property
    def status(self) -> Literal["open", "resolved"]:
        """``"open"`` while the condition holds, ``"resolved"`` once it stopped holding."""
        return "open" if self.resolved_step is None else "resolved"

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"`severity` must be one of {', '.join(SEVERITIES)}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["evidence"] = {k: _number(v) for k, v in self.evidence.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict`; tolerant of missing keys (old checkpoints)."""
        return cls(
            rule=str(d.get("rule", "")),
            site=str(d.get("site", "")),
            severity=d.get("severity", "info"),
            message=str(d.get("message", "")),
            recommendation=str(d.get("recommendation", "")),
            step=int(d.get("step", 0)),
            evidence=dict(d.get("evidence", {})),
            resolved_step=None if d.get("resolved_step") is None else int(d["resolved_step"]),
        )

    def evidence_text(self) -> str:
        return ", ".join(f"{k}={format_number(v)}" for k, v in self.evidence.items())

    def text(self) -> str:
        """One paragraph naming the rule, the site, the evidence and the fix."""
        where = f"site '{self.site}'" if self.site else "model"
        return (
            f"[act_diagnostics:{self.rule}] {self.severity} at step {self.step}, {where}: {self.message} "
            f"(evidence: {self.evidence_text()}). Fix: {self.recommendation}"
        )


# Packages between the user's code and a finding's warning: the location printed is the first
# frame outside them (the user's ``trainer.fit(...)`` line, or their loop calling the engine).
FRAMEWORK_MODULES = ("act_diagnostics", "lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities", "torch")


def _is_framework(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in FRAMEWORK_MODULES)


def user_frame() -> Any:
    """The innermost stack frame outside :data:`FRAMEWORK_MODULES`, or None when every frame is inside."""
    import sys

    frame: FrameType | None = sys._getframe(1)
    while frame is not None and _is_framework(str(frame.f_globals.get("__name__", ""))):
        frame = frame.f_back
    return frame


def emit_warning(finding: Finding) -> None:
    """Issue ``finding`` as one :class:`ActivationWarning` whose text names site, evidence and fix.

    The finding is about the user's model, so the warning points at the user's code: the first
    frame outside act_diagnostics, Lightning and torch (for a Lightning fit, the line that called
    ``trainer.fit``), printed as ``train.py:42: ActivationWarning: [act_diagnostics:dead-units] ...``.
    With no such frame it is issued as Python would from a script named ``act_diagnostics``.
    """
    frame = user_frame()
    if frame is None:
        warnings.warn_explicit(finding.text(), ActivationWarning, filename="act_diagnostics", lineno=1, module="act_diagnostics")
        return
    globs = frame.f_globals
    where = dict(
        filename=frame.f_code.co_filename,
        lineno=frame.f_lineno,
        module=str(globs.get("__name__", "__main__")),
        registry=globs.setdefault("__warningregistry__", {}),
    )
    try:
        # module_globals lets the printed warning quote the user's source line.
        warnings.warn_explicit(finding.text(), ActivationWarning, **where, module_globals=globs)
    except IndexError:
        # CPython fails to quote a line that is no longer in the file (the script was edited while
        # it trains): the warning goes out without the quoted line.
        warnings.warn_explicit(finding.text(), ActivationWarning, **where)
