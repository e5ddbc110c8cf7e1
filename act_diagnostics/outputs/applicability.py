"""Which logged statistic applies to which activation family: the one place outputs decide it.

A statistic that does not apply to a site is not logged as a scalar, is null in report.json, shows
as ``-`` in the tables and is grey in the heatmaps. Audit of :data:`~act_diagnostics.core.snapshot.LOGGED_STATS`
against the families of :mod:`act_diagnostics.core.kinds`:

* ``dead_fraction``: a unit is dead when it never fires *and* so passes no gradient. That holds for
  the ReLU family (output and gradient 0 below the threshold) and, nearly, for the smooth family
  (GELU, SiLU, ELU: a flat negative tail). Elsewhere "firing" is a position, not activity: sigmoid
  above 0.5, tanh/softsign above 0, hardtanh above max(0, min_val), a softmax class above 1/K,
  GLU's output above 0 (the sign of its linear half), tanhshrink above 0. A unit that never fires
  there still passes gradient, so its "dead fraction" would be a false alarm.
* ``firing_rate``: defined for every kind (docs/statistics.md lists each test); for the position
  families it reads as "share above the midpoint", which is what it says.
* ``saturation``: the core leaves it None where a kind has no saturation test (ReLU, leaky ReLU,
  threshold, tanhshrink); nothing to decide here.
* ``mean``, ``std``, ``max_abs``, ``grad_rms``, ``nonfinite``: every kind. ``param_grad_norm``: the
  core leaves it None where no layer feeds the activation; ``max_logit``: None except on attention
  sites.
"""

from __future__ import annotations

from typing import Any

# stat -> the families it applies to; a statistic not listed applies to every family.
APPLIES_TO: dict[str, frozenset[str]] = {
    "dead_fraction": frozenset({"relu", "smooth"}),
}


def applies(stat: str, family: str | None) -> bool:
    """Whether ``stat`` means something for a site of ``family`` (an unknown family: yes)."""
    families = APPLIES_TO.get(stat)
    return families is None or family is None or family in families


def applicable(stat: str, family: str | None, value: Any) -> Any:
    """``value`` where ``stat`` applies to ``family``, else None."""
    return value if applies(stat, family) else None
