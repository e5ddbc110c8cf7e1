"""dead-units on small training sets (issue 20, class 5): a held layer asks for dense windows
(within a budget), and a finite, shuffled training set lets silent rows count as distinct rows."""

from __future__ import annotations

import dataclasses

import pytest
from snapshot_builders import make_site, make_snapshot, relu_stats

from act_diagnostics.rules import RULE_IDS, RuleEngine

UNITS, SILENT = 48, 30


def _engine(**thresholds: float) -> RuleEngine:
    return RuleEngine(
        disable=[r for r in RULE_IDS if r != "dead-units"],
        thresholds={f"dead-units.{k}": v for k, v in thresholds.items()},
    )


def _window(step: int, silent: int, rows: int | None, epoch: int | None, shape=(2, UNITS), calls_per_step: int = 1):
    """One window of 10 measured steps, 20 samples per unit; ``silent`` units silent in it."""
    rates = [0.0] * silent + [0.5] * (UNITS - silent)
    stats = relu_stats(rates, 20)
    stats.calls = 10 * calls_per_step
    site = make_site("hidden.act", "relu", n_units=UNITS, shape=shape, unit_dim=len(shape) - 1)
    snap = make_snapshot([(site, stats)], step=step)
    return dataclasses.replace(snap, dataset_rows=rows, epoch=epoch)


def _first_decision(rows, epochs=(0, 0, 0, 0), **window) -> int | None:
    """Window 1 all alive, then three windows with SILENT of the 48 units silent: the step of the
    dead-units finding, or None."""
    engine = _engine()
    for i, step in enumerate((9, 19, 29, 39)):
        if engine.evaluate(_window(step, 0 if i == 0 else SILENT, rows, epochs[i], **window)):
            return step
    return None


CASES = [
    # name, dataset rows, epoch of each window, window options, step decided
    # 30 of 48 silent on 40 distinct rows of 120: H = 80*79/(120*119) = 0.44 each, P(>= 30 of 48) ~ 0.04.
    ("120 shuffled rows, one epoch", 120, (0, 0, 0, 0), {}, 29),
    # Runs spanning 2-3 epochs: the worst split H(20)^2 = 0.48, H(20)^3 = 0.33: one window later.
    ("120 rows, a new epoch every window", 120, (0, 1, 2, 3), {}, 39),
    # Independent draws: 0.99^60 = 0.55 each, 26 of 48 expected silent: no verdict.
    ("rows unknown (file order, iterable)", None, (0, 0, 0, 0), {}, None),
    ("a large training set: as independent draws", 1_000_000, (0, 0, 0, 0), {}, None),
    ("a site called twice a step sees its rows twice", 120, (0, 0, 0, 0), {"calls_per_step": 2}, None),
    ("positions of a sequence are not distinct rows", 120, (0, 0, 0, 0), {"shape": (2, 5, UNITS)}, None),
]


@pytest.mark.parametrize("rows,epochs,window,decided", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_finite_training_sets(rows, epochs, window, decided):
    assert _first_decision(rows, epochs, **window) == decided


def test_the_finding_says_the_samples_are_rows_of_the_training_set():
    engine = _engine()
    for i, step in enumerate((9, 19, 29)):
        found = engine.evaluate(_window(step, 0 if i == 0 else SILENT, 120, 0))
    (f,) = found
    assert f.evidence["dead_units"] == SILENT and "rows of a 120-row training set" in f.message


def test_a_held_layer_asks_for_dense_windows_within_its_budget():
    # 2 silent units of 8 on 20 samples a window: undecided for many windows (0.99^20k).
    engine = _engine(dense_windows=2, dense_every=4)
    asked = []
    for window in range(1, 13):
        snap = make_snapshot([(make_site("fc.act", "relu"), relu_stats([0.0] * 2 + [0.5] * 6, 20))], step=10 * window)
        assert engine.evaluate(snap) == []  # 2 of 8 silent on 20k samples: no verdict in 12 windows
        if engine.requests.dense:
            assert engine.requests.dense == ["fc.act"]
            asked.append(window)
    # Two at first, then one per 4 windows judged (budget 2 + windows // 4).
    assert asked[:4] == [1, 2, 4, 8]


def test_a_clear_or_decided_layer_asks_for_nothing():
    engine = _engine()
    engine.evaluate(make_snapshot([(make_site("fc.act", "relu"), relu_stats([0.5] * 8, 20))]))
    assert engine.requests.dense == []
    engine.evaluate(make_snapshot([(make_site("fc.act", "relu"), relu_stats([0.0] * 4 + [0.5] * 4, 2000))], step=200))
    assert engine.requests.dense == []  # decided at once: no more samples needed


def test_the_budget_and_the_epoch_survive_a_checkpoint():
    engine = _engine(dense_windows=1, dense_every=100)
    snap = make_snapshot([(make_site("fc.act", "relu"), relu_stats([0.0] * 2 + [0.5] * 6, 20))])
    engine.evaluate(dataclasses.replace(snap, epoch=3))
    assert engine.requests.dense == ["fc.act"]
    resumed = _engine(dense_windows=1, dense_every=100)
    resumed.load_state_dict(engine.state_dict())
    resumed.evaluate(dataclasses.replace(snap, step=200, epoch=3))
    assert resumed.requests.dense == []  # the one dense window was spent before the checkpoint
    (rule,) = resumed.rules
    assert rule._window_epoch == 3


def test_the_preflight_check_spends_no_dense_window():
    engine = _engine(dense_windows=1, dense_every=100)
    snap = make_snapshot([(make_site("fc.act", "relu"), relu_stats([0.0] * 2 + [0.5] * 6, 2))], step=0)
    engine.evaluate(snap, preflight=True)
    assert engine.requests.dense == []  # the first window is dense already
    engine.evaluate(dataclasses.replace(snap, step=10))
    assert engine.requests.dense == ["fc.act"]
