"""Checkpoint/resume: callback state travels in Lightning checkpoints and is restored with ckpt_path."""

from __future__ import annotations

import warnings

import pytorch_lightning as pl
import torch
from prod_models import Classifier, MonitorOptions, RuleOptions, diagnostics, hook_count, loader, mlp, trainer

from act_diagnostics.rules import ActivationWarning

THRESHOLDS = {"dead-units.preflight_unit_rate": 0.5, "dead-units.evidence": 0.1}  # 4 silent samples decide (0.5^4 < 0.1)


def _fit(tmp_path, max_steps, ckpt_path=None):
    model = Classifier(net=mlp(dead=True))
    cb = diagnostics(log_every_n_steps=2, rules=RuleOptions(thresholds=THRESHOLDS))
    t = trainer(tmp_path, [cb], max_steps=max_steps)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        t.fit(model, loader(n=128), ckpt_path=ckpt_path)
    warned = [str(r.message) for r in records if issubclass(r.category, ActivationWarning)]
    return t, cb, model, warned


def test_resume_restores_state_and_repeats_no_warning(tmp_path):
    t1, cb1, _, warned1 = _fit(tmp_path / "a", max_steps=4)
    assert warned1 and any("dead-units" in w for w in warned1)
    ckpt = tmp_path / "mid.ckpt"
    t1.save_checkpoint(ckpt)
    state = cb1.state_dict()
    assert state["steps"] == 4 and state["engine"]["findings"]

    t2, cb2, model2, warned2 = _fit(tmp_path / "b", max_steps=8, ckpt_path=str(ckpt))
    assert t2.global_step == 8
    assert cb2.steps == 8  # 4 restored + 4 measured
    assert warned2 == []  # every finding was already raised before the checkpoint
    assert [f.to_dict() for f in cb2.engine.findings[: len(cb1.engine.findings)]] == [f.to_dict() for f in cb1.engine.findings]
    # hooks re-attached: the resumed run measured, and learned the structure again
    snap = cb2.last_snapshot
    assert snap.step == 7 and snap.stats["net.1"].calls == 2
    assert cb2.monitor.sites["net.1"].feeding_layer == "net.0"
    assert hook_count(model2) == 0  # removed at teardown


class SaveAt(pl.Callback):
    def __init__(self, step: int, path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


class EvaluatedClassifier(Classifier):
    def test_step(self, batch, batch_idx):
        return self.training_step(batch, batch_idx)


def test_testing_from_a_checkpoint_after_fit_keeps_the_fits_findings(tmp_path):
    """trainer.test(ckpt_path=...) restores every callback from the checkpoint: the fit's own,
    newer state must survive it; a callback with no run of its own takes the checkpoint's."""
    ckpt = tmp_path / "early.ckpt"
    model = EvaluatedClassifier(net=mlp(dead=True))
    cb = diagnostics(log_every_n_steps=2, rules=RuleOptions(thresholds=THRESHOLDS))
    t = trainer(tmp_path / "a", [cb, SaveAt(2, ckpt)], max_steps=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(model, loader(n=128))
        findings, steps = [f.to_dict() for f in cb.engine.findings], cb.steps
        assert steps == 6 and findings and ckpt.is_file()
        t.test(model, loader(n=32), ckpt_path=str(ckpt))
        assert cb.steps == steps and [f.to_dict() for f in cb.engine.findings] == findings

        fresh = diagnostics(log_every_n_steps=2, rules=RuleOptions(thresholds=THRESHOLDS))
        trainer(tmp_path / "b", [fresh]).test(EvaluatedClassifier(net=mlp(dead=True)), loader(n=32), ckpt_path=str(ckpt))
        assert fresh.steps == 2 and fresh.engine.findings  # the checkpoint's training state
        t.save_checkpoint(tmp_path / "late.ckpt")
        trainer(tmp_path / "b", [fresh]).test(EvaluatedClassifier(net=mlp(dead=True)), loader(n=32), ckpt_path=str(tmp_path / "late.ckpt"))
    assert fresh.steps == 6  # testing checkpoint after checkpoint: each one's state


def test_two_callbacks_watching_different_parts_keep_their_own_state(tmp_path):
    """One callback per sub-network: Lightning takes them side by side (a state key each), each
    measures its own sites, and a checkpoint holds both states."""
    model = Classifier(net=mlp(depth=2))
    first = diagnostics(log_every_n_steps=2, monitor=MonitorOptions(include=["net.1"]))
    second = diagnostics(log_every_n_steps=2, monitor=MonitorOptions(include=["net.3"]))
    assert first.state_key != second.state_key and diagnostics().state_key == "ActivationDiagnostics"
    t = trainer(tmp_path, [first, second], max_steps=4)
    t.fit(model, loader())
    assert set(first.last_snapshot.stats) == {"net.1"} and set(second.last_snapshot.stats) == {"net.3"}
    assert first.steps == second.steps == 4
    t.save_checkpoint(tmp_path / "both.ckpt")
    states = torch.load(tmp_path / "both.ckpt", weights_only=False)["callbacks"]
    assert states[first.state_key]["steps"] == 4 and states[second.state_key]["steps"] == 4
    assert states[first.state_key]["selection"] == {"include": ["net.1"]}
    # A selection the checkpoint has no state of starts afresh: Lightning's fallback key (the class
    # name) would hand it a default callback's state, which names what it was.
    states["ActivationDiagnostics"] = dict(states[first.state_key], selection={}, steps=40)
    third = diagnostics(log_every_n_steps=2, monitor=MonitorOptions(kinds=["relu"]))
    third.load_state_dict(states["ActivationDiagnostics"])
    assert third.steps == 0
    legacy = {k: v for k, v in states[first.state_key].items() if k != "selection"}  # before selections
    third.load_state_dict(legacy)
    assert third.steps == 4


def test_a_checkpoint_under_the_class_name_resumes_a_callback_with_a_selection(tmp_path):
    """Checkpoints made before selections had a key of their own keep the state under the class
    name: a callback with include= still resumes from them (Lightning's fallback key)."""
    t1, cb1, _, _ = _fit(tmp_path / "a", max_steps=4)
    ckpt = tmp_path / "old.ckpt"
    t1.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)
    assert list(saved["callbacks"]) == ["ActivationDiagnostics"]
    del saved["callbacks"]["ActivationDiagnostics"]["selection"]  # as the versions before it wrote it
    torch.save(saved, ckpt)
    cb = diagnostics(log_every_n_steps=2, rules=RuleOptions(thresholds=THRESHOLDS), monitor=MonitorOptions(include=["net.*"]))
    assert cb.state_key != "ActivationDiagnostics"
    assert diagnostics(monitor=MonitorOptions(include=["b*", "a*"])).state_key == diagnostics(monitor=MonitorOptions(include=["a*", "b*"])).state_key  # order-free
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer(tmp_path / "b", [cb], max_steps=8).fit(Classifier(net=mlp(dead=True)), loader(n=128), ckpt_path=str(ckpt))
    assert cb.steps == 8 and len(cb.engine.findings) == len(cb1.engine.findings)
