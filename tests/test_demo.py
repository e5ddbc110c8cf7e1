"""The README demo runs end to end: flawed models are flagged, the fix is not, logs are written."""

from __future__ import annotations

import glob

import pytest

pytest.importorskip("pytorch_lightning")

from act_diagnostics.cli import main  # noqa: E402


def test_demo_flags_flaws_and_writes_logs(tmp_path, capsys):
    with pytest.warns(Warning):  # ActivationWarnings (and possibly Lightning's own) are issued
        assert main(["demo", "--logdir", str(tmp_path), "--steps", "30", "--quiet"]) == 0
    out = capsys.readouterr().out
    summary = out[out.index("=== Summary") :]
    lines = {line.split()[0]: line for line in summary.splitlines()[1:] if "final loss" in line}
    assert "saturating-hidden-activation" in lines["deep_sigmoid_mlp"]
    assert "activation-loss-mismatch" in lines["softmax_into_cross_entropy"]
    assert "attention-collapse" in lines["collapsed_attention"]
    assert lines["deep_sigmoid_mlp_fixed"].endswith("warnings: none")
    assert f"tensorboard --logdir {tmp_path}" in out
    for name in ("deep_sigmoid_mlp", "dying_relu_mlp", "softmax_into_cross_entropy", "collapsed_attention", "deep_sigmoid_mlp_fixed"):
        assert glob.glob(str(tmp_path / name / "events.out.tfevents.*")), name
        assert glob.glob(str(tmp_path / name / "act_diagnostics" / "report.json")), name
