"""The README demo runs end to end: flawed models are flagged, the fix is not, logs are written."""

from __future__ import annotations

import glob

import pytest

pytest.importorskip("pytorch_lightning")

from act_diagnostics.cli import main


def test_demo_flags_flaws_and_writes_logs(tmp_path, capsys):
    import warnings

    from act_diagnostics.rules import ActivationWarning

    logdir = tmp_path / "demo logs"  # a space: the printed commands must still work when pasted
    for _ in range(2):  # a rerun replaces each scenario's run instead of adding a second one
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            assert main(["demo", "--logdir", str(logdir), "--steps", "30", "--quiet"]) == 0
        assert not [r for r in records if issubclass(r.category, ActivationWarning)]  # --quiet: the summary only
        out = capsys.readouterr().out
        assert out.lstrip().startswith("=== Summary") and "GPU available" not in out
    summary = out[out.index("=== Summary") :]
    lines = {line.split()[0]: line for line in summary.splitlines()[1:] if "final loss" in line}
    assert "saturating-hidden-activation" in lines["deep_sigmoid_mlp"]
    assert "activation-loss-mismatch" in lines["softmax_into_cross_entropy"]
    assert "attention-collapse" in lines["collapsed_attention"]
    assert lines["deep_sigmoid_mlp_fixed"].endswith("warnings: none")
    assert lines["attention_logit_growth_fixed"].endswith("warnings: none")  # QK-LayerNorm
    assert f"tensorboard --logdir '{logdir}'" in out
    assert f"act-diagnostics report '{logdir / 'deep_sigmoid_mlp'}'" in out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from act_diagnostics.demo import LOSS_TAG

    for name in ("deep_sigmoid_mlp", "dying_relu_mlp", "softmax_into_cross_entropy", "collapsed_attention", "deep_sigmoid_mlp_fixed"):
        assert len(glob.glob(str(logdir / name / "events.out.tfevents.*"))) == 1, name
        assert glob.glob(str(logdir / name / "act-diagnostics" / "report.json")), name
        # The training loss, under one tag in every run: before and after side by side in TensorBoard.
        losses = EventAccumulator(str(logdir / name), size_guidance={"scalars": 0}).Reload().Scalars(LOSS_TAG)
        assert [e.step for e in losses] == [24] and losses[0].value > 0, name


def test_version_flag(capsys):
    from act_diagnostics import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"act-diagnostics {__version__}"


@pytest.mark.parametrize("steps", ["0", "-1", "-3", "abc"])
def test_demo_rejects_steps_below_one(steps, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--steps", steps])
    assert exit_info.value.code == 2 and "--steps" in capsys.readouterr().err


def test_demo_with_an_unusable_logdir_says_so_before_training(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    assert main(["demo", "--logdir", str(blocker / "logs"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("act-diagnostics demo: cannot write logs to ") and str(blocker / "logs") in err
    assert "Traceback" not in err
