"""Zero-code enable: entry points in both flavours' groups, off unless ACT_DIAGNOSTICS=1, one instance."""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from act_diagnostics import factory
from act_diagnostics.callbacks._core import DiagnosticsCallbackCore
from tests.ecosystem.conftest import callback_class, fit, make_trainer, tiny_module_class

GROUPS = {
    "pytorch_lightning": ("pytorch_lightning.callbacks_factory", "act_diagnostics.factory:pytorch_lightning_callbacks"),
    "lightning.pytorch": ("lightning.pytorch.callbacks_factory", "act_diagnostics.factory:lightning_callbacks"),
}


def ours(trainer) -> list[DiagnosticsCallbackCore]:
    return [c for c in trainer.callbacks if isinstance(c, DiagnosticsCallbackCore)]


@pytest.mark.parametrize("flavour_name", list(GROUPS))
def test_entry_points_are_installed(flavour_name: str) -> None:
    group, value = GROUPS[flavour_name]
    eps = [ep for ep in entry_points(group=group) if ep.value == value]
    assert eps, f"no {value} in group {group}: reinstall with `pip install -e . --no-deps`"
    assert eps[0].load() in (factory.pytorch_lightning_callbacks, factory.lightning_callbacks)


@pytest.mark.parametrize("value", ["", "0", "false", "OFF", "no"])
def test_off_values(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACT_DIAGNOSTICS", value)
    assert factory.pytorch_lightning_callbacks() == [] and factory.lightning_callbacks() == []


def test_off_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACT_DIAGNOSTICS", raising=False)
    assert not factory.enabled()


@pytest.mark.parametrize("value", ["1", "true", "Yes", " on "])
def test_on_values(value: str) -> None:
    assert factory.enabled({"ACT_DIAGNOSTICS": value})


def test_unknown_value_warns_and_stays_off() -> None:
    with pytest.warns(UserWarning, match=r"`ACT_DIAGNOSTICS` must be one of .* got 'verbose'"):
        assert not factory.enabled({"ACT_DIAGNOSTICS": "verbose"})


def test_trainer_without_env_has_no_callback(flavour: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACT_DIAGNOSTICS", raising=False)
    assert ours(make_trainer(flavour, tmp_path, logger=False)) == []


def test_env_adds_one_instance(flavour: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACT_DIAGNOSTICS", "1")
    trainer = make_trainer(flavour, tmp_path, max_steps=6)
    (auto,) = ours(trainer)
    assert isinstance(auto, callback_class(flavour))
    assert auto.state_key.endswith(factory.AUTO_STATE_KEY_SUFFIX)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(trainer, tiny_module_class(flavour)())
    assert ours(trainer) == [auto]
    assert auto.monitor is not None and auto.monitor.steps == 6
    assert auto.state_key == "ActivationDiagnostics"  # checkpoints interchangeable with a hand-added one


def test_hand_added_callback_wins(flavour: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACT_DIAGNOSTICS", "1")
    mine = callback_class(flavour)(log_every_n_steps=2, verbose=False)
    trainer = make_trainer(flavour, tmp_path, callbacks=[mine], max_steps=6)  # no duplicate state_key error
    auto = [c for c in ours(trainer) if c is not mine]
    assert len(auto) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(trainer, tiny_module_class(flavour)())
    assert ours(trainer) == [mine]  # exactly one instance ran
    assert auto[0].monitor is None
    assert mine.monitor is not None and mine.monitor.steps == 6


def test_auto_class_pickles_by_name() -> None:
    import pickle

    pytest.importorskip("pytorch_lightning")
    cls = factory._auto_class("pytorch_lightning")
    assert pickle.loads(pickle.dumps(cls)) is cls
