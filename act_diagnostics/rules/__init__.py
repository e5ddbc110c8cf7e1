"""Judging: one rule per module on a common base, run by :class:`RuleEngine`, producing Findings."""

from act_diagnostics.rules.base import Rule, RuleContext
from act_diagnostics.rules.engine import RULE_IDS, RULES, RuleEngine
from act_diagnostics.rules.finding import ActivationWarning, Finding, emit_warning

__all__ = ["RULES", "RULE_IDS", "ActivationWarning", "Finding", "Rule", "RuleContext", "RuleEngine", "emit_warning"]
