"""RuleEngine mechanics: argument checks, disable, thresholds, debounce, dedupe, warnings, state."""

from __future__ import annotations

import json
import warnings

import pytest
from snapshot_builders import make_site, make_snapshot, relu_stats

from act_diagnostics.core import SiteStats
from act_diagnostics.rules import RULE_IDS, ActivationWarning, Finding, RuleEngine, emit_warning

REQUIRED = {
    "dead-units", "saturation", "saturating-hidden-activation", "vanishing-gradient", "exploding-gradient",
    "exploding-activations", "non-finite", "activation-loss-mismatch", "output-activation-mismatch",
}


def dead(fraction_dead: int, step: int):
    rates = [0.0] * fraction_dead + [0.5] * (8 - fraction_dead)
    return make_snapshot([(make_site("fc.act", "relu"), relu_stats(rates))], step=step)


def test_rule_ids_cover_the_contract():
    assert set(RULE_IDS) >= REQUIRED and len(set(RULE_IDS)) == len(RULE_IDS)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"disable": ["dead-unit"]}, ValueError, r"`disable` got unknown rule id\(s\) \['dead-unit'\]; valid ids: .*dead-units"),
        ({"disable": 3}, TypeError, "`disable` must be a rule id or a list of rule ids, got 3"),
        ({"thresholds": {"dead-units.warn": 0.3}}, ValueError, r"not a threshold of dead-units; valid keys: dead-units.unit_rate"),
        ({"thresholds": {"nope.x": 1}}, ValueError, "names no rule; valid ids"),
        ({"thresholds": {"dead-units.warn_fraction": "high"}}, TypeError, r"`thresholds\['dead-units.warn_fraction'\]` must be a finite number in \[0, 1\], got 'high'"),
        ({"thresholds": {"dead-units.warn_fraction": 2}}, ValueError, r"`thresholds\['dead-units.warn_fraction'\]` must be in \[0, 1\], got 2"),
        ({"thresholds": {"dead-units.unit_rate": 0}}, ValueError, r"`thresholds\['dead-units.unit_rate'\]` must be in \(0, 1\), got 0"),
        ({"thresholds": {"exploding-gradient.min_sites": 2.5}}, ValueError, r"must be a whole number >= 2, got 2.5"),
        ({"thresholds": {"exploding-gradient.growth": 0.5}}, ValueError, r"must be > 1, got 0.5"),
        ({"thresholds": [("a", 1)]}, TypeError, "`thresholds` must be a dict"),
        ({"warn": "yes"}, TypeError, "`warn` must be True or False, got 'yes'"),
    ],
)
def test_argument_errors_name_argument_value_and_choices(kwargs, error, match):
    with pytest.raises(error, match=match):
        RuleEngine(**kwargs)


def test_disable_and_thresholds():
    assert RuleEngine(disable="dead-units").evaluate(dead(8, 1), preflight=True) == []
    strict = RuleEngine(thresholds={"dead-units.warn_fraction": 0.1})
    assert [f.rule for f in strict.evaluate(dead(1, 1), preflight=True)] == ["dead-units"]  # 12.5% > 10%
    assert RuleEngine().evaluate(dead(1, 1), preflight=True) == []


def saturated(on: bool, step: int):
    """A tanh layer saturated (or not) over a window of 2000 samples per unit (saturation: 2 windows)."""
    share = 0.8 if on else 0.1
    st = SiteStats(calls=1, elements=16000, sampled=16000, units=8, saturation=share, saturated_units=share, rms=0.9, max_abs=1.0)
    return make_snapshot([(make_site("h.tanh", "tanh"), st)], step=step)


def test_debounce_streak_resets_when_condition_clears():
    engine = RuleEngine(disable="saturating-hidden-activation")
    assert engine.evaluate(saturated(True, 100)) == []
    assert engine.evaluate(saturated(False, 200)) == []  # cleared: the streak starts over
    assert engine.evaluate(saturated(True, 300)) == []
    assert [f.step for f in engine.evaluate(saturated(True, 400))] == [400]


def dead16(n_dead: int, step: int):
    rates = [0.0] * n_dead + [0.5] * (16 - n_dead)
    return make_snapshot([(make_site("fc.act", "relu", n_units=16), relu_stats(rates))], step=step)


def test_dedupe_reports_again_only_when_markedly_worse():
    engine = RuleEngine()
    assert [f.severity for f in engine.evaluate(dead16(4, 100))] == ["warning"]  # 25%
    assert engine.evaluate(dead16(6, 200)) == []  # 37.5%: worse, but neither doubled nor an error
    assert [f.severity for f in engine.evaluate(dead16(8, 300))] == ["error"]  # 50%: severity rises
    assert [f.evidence["dead_fraction"] for f in engine.evaluate(dead16(16, 400))] == [1.0]  # doubled
    assert engine.evaluate(dead16(16, 500)) == []
    assert len(engine.findings) == 3


def test_warnings_only_when_asked_and_they_name_site_evidence_fix():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RuleEngine().evaluate(dead(8, 1), preflight=True)
        assert caught == []
        RuleEngine(warn=True).evaluate(dead(8, 1), preflight=True)
    (w,) = caught
    assert issubclass(w.category, ActivationWarning) and issubclass(w.category, UserWarning)
    text = str(w.message)
    assert "'fc.act'" in text and "dead_fraction=1" in text and "Fix:" in text and "Kaiming" in text


def test_emit_warning_and_finding_round_trip():
    f = Finding("non-finite", "a", "error", "NaN", "clip", 7, {"x": float("inf"), "n": 2})
    d = f.to_dict()
    assert json.loads(json.dumps(d))["evidence"] == {"x": "inf", "n": 2}
    assert Finding.from_dict(d).site == "a" and Finding.from_dict({}).severity == "info"
    with pytest.raises(ValueError, match="`severity` must be one of info, warning, error, got 'fatal'"):
        Finding("r", "s", "fatal", "m", "f", 0)  # type: ignore[arg-type]
    with pytest.warns(ActivationWarning, match=r"site 'a'.*evidence: x=inf, n=2.*Fix: clip"):
        emit_warning(f)


def test_state_dict_round_trip_keeps_dedupe_streaks_and_dead_unit_evidence():
    engine = RuleEngine(disable="saturating-hidden-activation")
    engine.evaluate(dead(3, 1), preflight=True)  # born dead, reported
    engine.evaluate(dead(3, 100))
    engine.evaluate(saturated(True, 100))  # a debounce streak in progress
    state = json.loads(json.dumps(engine.state_dict()))  # checkpoints may be serialised
    resumed = RuleEngine(disable="saturating-hidden-activation")
    resumed.load_state_dict(state)
    assert [f.rule for f in resumed.findings] == ["dead-units"]
    assert [f.rule for f in resumed.evaluate(saturated(True, 200))] == ["saturation"]  # the streak survived
    assert resumed.evaluate(dead(3, 200)) == []  # already reported: not repeated after resume
    # The resumed engine still knows which units were dead at initialisation: 5 more dying later
    # are told apart from the 3 born dead.
    (f,) = resumed.evaluate(dead(8, 300))
    assert (f.evidence["born_dead"], f.evidence["died_later"]) == (3, 5) and "died after step 200" in f.message
    RuleEngine().load_state_dict({})  # tolerant of empty / old checkpoints


def test_dead_unit_evidence_in_progress_survives_a_resume():
    engine = RuleEngine()
    few = lambda step: make_snapshot([(make_site("fc.act", "relu"), relu_stats([0.0] * 2 + [0.5] * 6, samples_per_unit=200))], step=step)  # noqa: E731
    # 2 of 8 silent on 200 samples: 0.99^200 = 13% each, 2 such of 8 live units 29%: not conclusive yet
    assert engine.evaluate(few(100)) == []
    resumed = RuleEngine()
    resumed.load_state_dict(json.loads(json.dumps(engine.state_dict())))
    assert [f.rule for f in resumed.evaluate(few(200))] == ["dead-units"]  # 400: 1.8%, conclusive


def test_a_failing_rule_is_disabled_not_raised(monkeypatch):
    from act_diagnostics.rules.dead_units import DeadUnits

    monkeypatch.setattr(DeadUnits, "evaluate", lambda self, ctx: 1 / 0)
    engine = RuleEngine()
    with pytest.warns(RuntimeWarning, match="rule dead-units failed"):
        engine.evaluate(dead(8, 1), preflight=True)
    assert engine.evaluate(dead(8, 2), preflight=True) == []


def test_sample_pool_weights_windows_until_enough_samples() -> None:
    from act_diagnostics.rules.base import SamplePool

    pool = SamplePool()
    assert pool.add("s", [1.0, 0.0], 300, 1000) == (None, 300)
    means, seen = pool.add("s", [0.0, 0.0], 700, 1000)
    assert seen == 1000 and means.tolist() == [0.3, 0.0]
    assert pool.add("s", [1.0], 600, 1000) == (None, 600)  # a new window starts the pool over
    means, seen = pool.add("s", [0.5, 0.5, 0.5], 2000, 1000)  # the site changed width
    assert seen == 2000 and means.tolist() == [0.5, 0.5, 0.5]


# Rules whose modules another engineer owns (they may declare ranges later).
OWNED_ELSEWHERE: tuple[str, ...] = ()


def test_every_threshold_has_a_range_its_default_lies_in():
    """Each rule of this package declares the range of each threshold; the defaults lie inside."""
    from act_diagnostics.rules.engine import RULES

    for rule in RULES:
        for name, value in rule.defaults.items():
            valid = rule.ranges.get(name)
            if rule.id in OWNED_ELSEWHERE and valid is None:
                continue  # any number >= 0 until their owners declare theirs
            assert valid is not None, f"{rule.id}.{name} declares no range"
            assert value in valid, f"{rule.id}.{name} = {value} outside {valid}"


def _until_reported(engine: RuleEngine, snap_at, start: int) -> tuple[Finding, int]:
    for step in range(start, start + 1000, 100):
        new = engine.evaluate(snap_at(step))
        if new:
            return new[0], step
    raise AssertionError("never reported")


def test_a_finding_resolves_after_two_clear_windows_and_reopens_as_a_new_one():
    engine = RuleEngine()
    f, step = _until_reported(engine, lambda s: dead(4, s), 100)
    assert f.status == "open" and engine.resolved == []
    assert engine.evaluate(dead(0, step + 100)) == [] and engine.resolved == [] and f.status == "open"
    engine.evaluate(dead(0, step + 200))
    assert engine.resolved == [f] and f.resolved_step == step + 200 and f.status == "resolved"
    engine.evaluate(dead(0, step + 300))
    assert engine.resolved == []  # resolved once
    g, _ = _until_reported(engine, lambda s: dead(4, s), step + 400)
    assert g is not f and g.status == "open" and f.status == "resolved"
    assert [x.status for x in engine.findings] == ["resolved", "open"]


def test_a_window_that_holds_the_condition_restarts_the_count():
    engine = RuleEngine()
    f, step = _until_reported(engine, lambda s: dead(4, s), 100)
    engine.evaluate(dead(0, step + 100))
    engine.evaluate(dead(4, step + 200))  # holds again: not news, the clear count starts over
    engine.evaluate(dead(0, step + 300))
    assert f.status == "open"
    engine.evaluate(dead(0, step + 400))
    assert f.resolved_step == step + 400


def test_windows_the_rule_could_not_judge_do_not_resolve():
    engine = RuleEngine()
    f, step = _until_reported(engine, lambda s: dead(4, s), 100)
    few = make_snapshot([(make_site("fc.act", "relu"), relu_stats([0.0] * 8, samples_per_unit=1))], step=step + 100)
    for k in range(1, 4):
        few.step = step + 100 * k
        engine.evaluate(few)
    assert f.status == "open"


def test_static_structure_findings_never_resolve():
    from snapshot_builders import chain

    engine = RuleEngine(disable=[r for r in RULE_IDS if r != "saturating-hidden-activation"])
    (f,) = engine.evaluate(chain("sigmoid", [1.0] * 6), preflight=True)
    for _step in (100, 200, 300):
        engine.evaluate(chain("relu", [1.0] * 6))
    assert f.status == "open"


def test_lifecycle_survives_a_checkpoint():
    engine = RuleEngine()
    f, step = _until_reported(engine, lambda s: dead(4, s), 100)
    engine.evaluate(dead(0, step + 100))  # one clear window so far
    state = json.loads(json.dumps(engine.state_dict()))
    resumed = RuleEngine()
    resumed.load_state_dict(state)
    resumed.evaluate(dead(0, step + 200))  # the second: resolved
    assert [x.resolved_step for x in resumed.findings] == [step + 200]
    again = RuleEngine()
    again.load_state_dict(json.loads(json.dumps(resumed.state_dict())))
    assert again.findings[0].status == "resolved"


def test_a_degenerate_preflight_batch_is_not_judged():
    from snapshot_builders import chain

    collapsed = chain("relu", [1e-3] * 4, input_std=[1.0, 0.05, 0.01, 0.5])
    assert [f.rule for f in RuleEngine().evaluate(collapsed, preflight=True)] == ["signal-propagation"]
    for rows, spread in ((1, 2.0), (16, 0.0)):
        collapsed.batch_rows, collapsed.batch_spread = rows, spread
        assert RuleEngine().evaluate(collapsed, preflight=True) == []
