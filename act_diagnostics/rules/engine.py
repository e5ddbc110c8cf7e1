"""RuleEngine: runs every enabled rule on each snapshot, debounces, deduplicates, remembers.

* **Debounce**: a rule's condition must hold for ``rule.windows`` consecutive evaluations of the
  same site (statistical rules use 2); windows in which a rule could not judge a site (too few
  samples) keep the streak. Pre-flight findings are reported at once.
* **Dedupe**: each (rule, site) is reported once, and again only when markedly worse: the severity
  rises, or the rule's primary evidence number at least doubles.
* **Lifecycle**: a finding of a resolvable rule (one that re-judges its condition every window) is
  marked resolved (``Finding.resolved_step``, ``status == "resolved"``) once its condition has not
  held for ``rule.resolve_windows`` judged windows in a row (windows where the rule could not judge
  the site do not count); :attr:`RuleEngine.resolved` lists the findings resolved by the latest
  :meth:`RuleEngine.evaluate`. If the condition comes back, it is reported as a new finding.
* **Degenerate pre-flight batch**: rules that read statistics across rows skip a pre-flight check
  whose batch had one row or identical rows (nothing to learn about the model from it).
* With ``warn=True`` warning and error findings are issued once as :class:`ActivationWarning`
  (off by default: the Lightning callback issues them itself, from rank zero only).
* ``state_dict()`` / ``load_state_dict()`` carry all of this across a checkpoint resume.

Example::

    engine = RuleEngine(disable=["saturating-hidden-activation"], thresholds={"dead-units.warn_fraction": 0.3})
    new = engine.evaluate(monitor.snapshot())
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from act_diagnostics.core.checks import real
from act_diagnostics.core.snapshot import Snapshot
from act_diagnostics.rules.activation_loss import ActivationLossMismatch
from act_diagnostics.rules.activation_spike import ActivationSpike
from act_diagnostics.rules.attention_collapse import AttentionCollapse
from act_diagnostics.rules.attention_logit_growth import AttentionLogitGrowth
from act_diagnostics.rules.base import MeasurementRequests, Range, Rule, RuleContext
from act_diagnostics.rules.dead_experts import DeadExperts
from act_diagnostics.rules.dead_units import DeadUnits
from act_diagnostics.rules.exploding_activations import ExplodingActivations
from act_diagnostics.rules.exploding_gradient import ExplodingGradient
from act_diagnostics.rules.finding import Finding, emit_warning, severity_rank
from act_diagnostics.rules.input_scale import InputScale
from act_diagnostics.rules.missing_nonlinearity import MissingNonlinearity
from act_diagnostics.rules.near_dead import NearDeadUnits
from act_diagnostics.rules.non_finite import NonFinite
from act_diagnostics.rules.output_activation import OutputActivationMismatch
from act_diagnostics.rules.output_logit_divergence import OutputLogitDivergence
from act_diagnostics.rules.saturating_hidden import SaturatingHiddenActivation
from act_diagnostics.rules.saturation import Saturation
from act_diagnostics.rules.signal_propagation import SignalPropagation
from act_diagnostics.rules.vanishing_gradient import VanishingGradient

RULES: tuple[type[Rule], ...] = (
    NonFinite,
    ActivationLossMismatch,
    OutputActivationMismatch,
    MissingNonlinearity,
    InputScale,
    SaturatingHiddenActivation,
    SignalPropagation,
    DeadUnits,
    NearDeadUnits,
    Saturation,
    AttentionCollapse,
    AttentionLogitGrowth,
    OutputLogitDivergence,
    DeadExperts,
    VanishingGradient,
    ExplodingGradient,
    ExplodingActivations,
    ActivationSpike,
)
RULE_IDS: tuple[str, ...] = tuple(r.id for r in RULES)
STATE_VERSION = 1


def check_rule_ids(ids: Any, argument: str = "disable") -> tuple[str, ...]:
    """``ids`` (None, one id or several) as a tuple of known rule ids; errors name ``argument``."""
    if ids is None:
        return ()
    if isinstance(ids, str):
        ids = (ids,)
    if not isinstance(ids, Iterable) or not all(isinstance(d, str) for d in ids):
        raise TypeError(f"`{argument}` must be a rule id or a list of rule ids, got {ids!r}")
    ids = tuple(ids)
    unknown = [d for d in ids if d not in RULE_IDS]
    if unknown:
        raise ValueError(f"`{argument}` got unknown rule id(s) {unknown}; valid ids: {', '.join(RULE_IDS)}")
    return ids


def _check_thresholds(thresholds: Any) -> dict[str, dict[str, float]]:
    """``{"<rule>.<name>": value}`` -> ``{rule: {name: value}}``, every key and value checked."""
    if thresholds is None:
        return {}
    if not isinstance(thresholds, Mapping):
        raise TypeError(f"`thresholds` must be a dict like {{'dead-units.warn_fraction': 0.3}}, got {thresholds!r}")
    by_rule: dict[str, dict[str, float]] = {}
    defaults = {r.id: r.defaults for r in RULES}
    ranges = {r.id: r.ranges for r in RULES}
    for key, value in thresholds.items():
        rule, _, name = str(key).partition(".")
        if rule not in defaults:
            raise ValueError(f"`thresholds` key {key!r} names no rule; valid ids: {', '.join(RULE_IDS)}")
        if name not in defaults[rule]:
            keys = ", ".join(f"{rule}.{n}" for n in defaults[rule]) or "none (this rule has no thresholds)"
            raise ValueError(f"`thresholds` key {key!r} is not a threshold of {rule}; valid keys: {keys}")
        number = real(value)
        valid = ranges[rule].get(name, Range())
        if number is None or not math.isfinite(number):
            raise TypeError(f"`thresholds[{key!r}]` must be a finite number {valid}, got {value!r}")
        if number not in valid:
            raise ValueError(f"`thresholds[{key!r}]` must be {valid}, got {value!r}")
        by_rule.setdefault(rule, {})[name] = number
    return by_rule


class RuleEngine:
    """Judges snapshots with every enabled rule.

    Args:
        disable: rule ids to skip (see ``RULE_IDS``).
        thresholds: overrides as ``{"<rule-id>.<name>": value}``; each rule's page under
            docs/rules/ lists its thresholds and their sources.
        warn: issue new warning and error findings as :class:`ActivationWarning` from
            :meth:`evaluate` (torch-only use; the Lightning callback warns itself, on rank zero).

    Raises:
        TypeError / ValueError: naming the argument, the value received and the valid choices.
    """

    def __init__(self, disable: Iterable[str] | str = (), thresholds: Mapping[str, float] | None = None, warn: bool = False) -> None:
        if not isinstance(warn, bool):
            raise TypeError(f"`warn` must be True or False, got {warn!r}")
        self.disabled = check_rule_ids(disable)
        self._overrides = _check_thresholds(thresholds)  # {rule: {name: value}}
        self.warn = warn
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new fit): fresh rules, no findings."""
        self.rules: list[Rule] = [r(self._overrides.get(r.id)) for r in RULES if r.id not in self.disabled]
        self.findings: list[Finding] = []
        # Findings marked resolved by the latest evaluate (for the outputs).
        self.resolved: list[Finding] = []
        # What the latest evaluate's rules asked of the measuring schedule for the next window.
        self.requests = MeasurementRequests()
        self._clear: dict[tuple[str, str], int] = {}  # open findings' judged windows without the condition
        self._reported: dict[tuple[str, str], tuple[int, float | None]] = {}
        self._streaks: dict[tuple[str, str], int] = {}
        self._broken: set[str] = set()

    def evaluate(self, snapshot: Snapshot, preflight: bool = False) -> list[Finding]:
        """Judge one snapshot; return the findings that are new (debounced, deduplicated)."""
        new: list[Finding] = []
        self.resolved = []
        self.requests = MeasurementRequests()
        notions = None  # computed by the first rule that reads them, shared by the others
        for rule in self.rules:
            if rule.id in self._broken or not (rule.in_preflight if preflight else rule.in_training):
                continue
            ctx = RuleContext(snapshot, preflight, requests=self.requests, _notions=notions)
            try:
                if preflight and rule.reads_rows and ctx.notions.degenerate_batch:
                    notions = ctx.notions
                    continue
                candidates = rule.evaluate(ctx)
                notions = ctx._notions
            except Exception as exc:  # noqa: BLE001 - a rule's bug must never stop training
                self._broken.add(rule.id)
                message = f"act_diagnostics rule {rule.id} failed and is disabled ({type(exc).__name__}: {exc})"
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                continue
            seen = set()
            for finding in candidates:
                key = (rule.id, rule.topic(finding))
                seen.add(key)
                self._streaks[key] = self._streaks.get(key, 0) + 1
                if not preflight and self._streaks[key] < rule.windows:
                    continue
                if self._is_news(rule, finding):
                    new.append(finding)
            for key in [k for k in self._streaks if k[0] == rule.id and k not in seen and k[1] not in ctx.held]:
                del self._streaks[key]
            if rule.resolvable and not preflight:
                self._count_clear_windows(rule, seen, ctx)
        for finding in new:
            self.findings.append(finding)
            if self.warn and finding.severity != "info":
                emit_warning(finding)
        return new

    def _count_clear_windows(self, rule: Rule, seen: set[tuple[str, str]], ctx: RuleContext) -> None:
        """Resolve the rule's open findings whose condition has not held for ``rule.resolve_windows``
        judged windows in a row; a later return of the condition is news again."""
        open_keys = {(f.rule, rule.topic(f)) for f in self.findings if f.rule == rule.id and f.resolved_step is None}
        for key in open_keys:
            if key in seen:
                self._clear.pop(key, None)
                continue
            if key[1] in ctx.held or (rule.per_site and key[1] not in ctx.snapshot.stats):
                continue  # not judged this window (too few samples, or not measured): neither holds nor clears
            n = self._clear.get(key, 0) + 1
            if n < rule.resolve_windows:
                self._clear[key] = n
                continue
            self._clear.pop(key, None)
            for f in self.findings:
                if f.rule == rule.id and f.resolved_step is None and rule.topic(f) == key[1]:
                    f.resolved_step = ctx.step
                    self.resolved.append(f)
            self._reported.pop(key, None)
            self._streaks.pop(key, None)

    def _is_news(self, rule: Rule, finding: Finding) -> bool:
        key = (rule.id, rule.topic(finding))
        rank = severity_rank(finding.severity)
        value = finding.evidence.get(rule.primary) if rule.primary else None
        value = float(value) if isinstance(value, (int, float)) else None
        before = self._reported.get(key)
        if before is not None:
            old_rank, old_value = before
            worse_value = (
                old_value is not None and value is not None and math.isfinite(old_value) and old_value > 0 and value >= 2 * old_value
            )
            if rank <= old_rank and not worse_value:
                return False
        self._reported[key] = (rank, value)
        return True

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "findings": [f.to_dict() for f in self.findings],
            "reported": [[r, s, rank, value] for (r, s), (rank, value) in self._reported.items()],
            "streaks": [[r, s, n] for (r, s), n in self._streaks.items()],
            "clear": [[r, s, n] for (r, s), n in self._clear.items()],
            "rules": {rule.id: rule.state_dict() for rule in self.rules},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; missing keys (older checkpoints) mean "nothing yet"."""
        self.findings = [Finding.from_dict(d) for d in state.get("findings", [])]
        self._reported = {(r, s): (int(rank), value) for r, s, rank, value in state.get("reported", [])}
        self._streaks = {(r, s): int(n) for r, s, n in state.get("streaks", [])}
        self._clear = {(r, s): int(n) for r, s, n in state.get("clear", [])}
        self.resolved = []
        rules_state = state.get("rules", {}) or {}
        for rule in self.rules:
            rule.load_state_dict(rules_state.get(rule.id, {}) or {})
