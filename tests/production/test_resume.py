"""Checkpoint/resume: callback state travels in Lightning checkpoints and is restored with ckpt_path."""

from __future__ import annotations

import warnings

from act_diagnostics.rules import ActivationWarning
from prod_models import Classifier, diagnostics, hook_count, loader, mlp, trainer

THRESHOLDS = {"dead-units.min_samples": 4, "dead-units.preflight_min_samples": 4}


def _fit(tmp_path, max_steps, ckpt_path=None):
    model = Classifier(net=mlp(dead=True))
    cb = diagnostics(log_every_n_steps=2, thresholds=THRESHOLDS)
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
