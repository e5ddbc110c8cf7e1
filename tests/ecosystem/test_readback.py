"""`act-diagnostics report LOGDIR`: read a finished (or failed) run back as text, JSON or markdown."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from act_diagnostics.cli import main
from act_diagnostics.outputs.readback import ReadbackError, find_run, load_run, parse_findings_markdown, render_run, split_tag
from act_diagnostics.outputs.report import REPORT_DIRNAME
from tests.ecosystem.conftest import callback_class, deep_sigmoid_net, fit, make_trainer, seq_module_class

FLAVOUR = "pytorch_lightning"


def train_run(root: Path, fail_at: int | None = None, steps: int = 16) -> Path:
    """One run of a deep sigmoid net under ``root/tb/version_0``; returns the version dir."""
    torch.manual_seed(0)
    callback = callback_class(FLAVOUR)(log_every_n_steps=4, verbose=False)
    trainer = make_trainer(FLAVOUR, root, callbacks=[callback], max_steps=steps)
    module = seq_module_class(FLAVOUR, fail_at=fail_at)(deep_sigmoid_net())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fail_at is None:
            fit(trainer, module)
        else:
            with pytest.raises(RuntimeError, match="boom"):
                fit(trainer, module)
    return Path(trainer.logger.log_dir)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tmp_path_factory.mktemp("finished"))


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tmp_path_factory.mktemp("failed"), fail_at=9)


def test_text_report(finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(finished_run)]) == 0
    out = capsys.readouterr().out
    assert f"act_diagnostics report: {finished_run}" in out
    assert "Findings (" in out and "saturating-hidden-activation" in out
    assert "fix: " in out
    assert "Per-layer statistics" in out
    for site in ("net.1", "net.9"):
        assert site in out
    assert "last logged step: 15" in out
    header = next(line.split() for line in out.splitlines() if line.split()[:2] == ["site", "kind"])
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["net.1"])
    assert row[header.index("dead_fraction")] == "-"  # a sigmoid never above 0.5 is not dead


def test_json_report(finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(finished_run), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["run_dir"] == str(finished_run)
    assert data["report_json"].endswith("act-diagnostics/report.json") and data["findings_source"] == "act-diagnostics/report.json"
    assert {f["rule"] for f in data["findings"]} >= {"saturating-hidden-activation"}
    sites = [row["site"] for row in data["layers"]]
    assert sites == ["net.1", "net.3", "net.5", "net.7", "net.9"]  # forward order
    row = data["layers"][0]
    assert row["step"] == 15 and 0.0 <= row["saturation"] <= 1.0 and row["nonfinite"] == 0.0


def test_markdown_report(finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(finished_run), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# act_diagnostics report")
    assert "| severity | rule | site | step | status | finding | evidence | fix |" in out
    assert "| `net.1` |" in out


def test_parent_dir_with_one_run(finished_run: Path) -> None:
    assert find_run(finished_run.parent.parent) == finished_run  # <root> -> tb/version_0
    assert find_run(finished_run / REPORT_DIRNAME) == finished_run


def test_parent_with_two_runs_is_an_error(finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b"):
        shutil.copytree(finished_run, tmp_path / name)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds 2 runs; pass one of them" in err and str(tmp_path / "a") in err


def test_missing_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_dir_without_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("act-diagnostics report: ") and "no act_diagnostics output here" in err


def test_report_dot_inside_the_report_folder(finished_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(finished_run / REPORT_DIRNAME)
    assert find_run(".") == finished_run.resolve()
    assert main(["report", "."]) == 0
    assert "Per-layer statistics" in capsys.readouterr().out


def test_events_of_another_tool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar("loss", 1.0, 0)
    assert main(["report", str(tmp_path)]) == 2
    assert "hold no act_diagnostics scalars" in capsys.readouterr().err


def test_failed_run_reads_back(failed_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # on_exception wrote the report: what was measured up to the failure is there.
    assert (failed_run / REPORT_DIRNAME / "report.json").is_file()
    run = load_run(failed_run)
    # The window after the last log step, up to the failing step 9, was published too.
    assert run.layers and run.last_step == 9
    assert main(["report", str(failed_run)]) == 0
    out = capsys.readouterr().out
    assert "Per-layer statistics" in out
    # How the run ended, from report.json's "stopped": step 9 was scheduled (logging every 4, every
    # step is), but the module raises in training_step before its forward.
    assert "Training stopped at step 9 with RuntimeError: boom: simulated failure, raised before the model's forward ran" in out
    assert json.loads(render_run(failed_run, "json"))["stopped"]["step"] == 9


def test_a_run_without_report_json_reads_the_findings_text(finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Still training, or report=False: the findings come from the TensorBoard text the callback
    writes (the final report's, here), with their source named."""
    run_dir = tmp_path / "running"
    shutil.copytree(finished_run, run_dir)
    expected = json.loads((run_dir / REPORT_DIRNAME / "report.json").read_text())["findings"]
    shutil.rmtree(run_dir / REPORT_DIRNAME)
    run = load_run(run_dir)
    assert run.report_path is None and run.findings_source == "TensorBoard text act_diagnostics/report (step 15)"
    got = [(f["severity"], f["rule"], f["site"], f["step"], f["message"], f["recommendation"]) for f in run.findings]
    assert got == [(f["severity"], f["rule"], f["site"], f["step"], f["message"], f["recommendation"]) for f in expected]
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"Findings ({len(expected)}, from TensorBoard text act_diagnostics/report (step 15)):" in out


def test_without_report_json_or_findings_text_says_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar("act/fc.act/firing_rate", 0.5, 3)
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (
        "Findings: not known: there is no act-diagnostics/report.json (written at the end of fit; the run may still be "
        "running, or report=False) and the event files hold no findings text (act_diagnostics/findings, written to "
        "TensorBoard when a finding is raised): either none was raised up to step 3, or the rules were off"
    ) in out
    assert main(["report", str(tmp_path), "--format", "md"]) == 0
    assert "No findings." not in capsys.readouterr().out
    assert json.loads(render_run(tmp_path, "json"))["findings"] is None


def test_findings_text_of_older_runs_reads_back() -> None:
    old = "**Findings**: 1 error(s)\n\n| severity | rule | site | step | finding | fix |\n|---|---|---|---|---|---|\n| error | dead-units | a\\|b | 7 | 60% dead | lower LR |\n"
    assert parse_findings_markdown(old) == [
        {"severity": "error", "rule": "dead-units", "site": "a|b", "step": 7, "message": "60% dead", "recommendation": "lower LR"}
    ]
    new = "| severity | rule | site | step | status | finding | evidence | fix |\n|---|\n| info | x | (model) | 2 | resolved at step 9 | m | k=1 | f |"
    (f,) = parse_findings_markdown(new)
    assert f["site"] == "" and f["resolved_step"] == 9 and f["evidence"] == "k=1"


def test_an_older_runs_report_folder_reads_back(finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Runs before the folder was renamed wrote act_diagnostics/report.json."""
    (tmp_path / "act_diagnostics").mkdir()
    shutil.copy(finished_run / REPORT_DIRNAME / "report.json", tmp_path / "act_diagnostics")
    run = load_run(tmp_path)
    assert run.report_path == tmp_path / "act_diagnostics" / "report.json" and run.findings
    assert find_run(tmp_path / "act_diagnostics") == tmp_path.resolve()


def test_report_json_only(finished_run: Path, tmp_path: Path) -> None:
    # A CSVLogger run has report.json but no event files: findings still read back.
    (tmp_path / REPORT_DIRNAME).mkdir()
    shutil.copy(finished_run / REPORT_DIRNAME / "report.json", tmp_path / REPORT_DIRNAME)
    run = load_run(tmp_path)
    assert run.event_files == [] and run.findings


def test_bad_format_and_tag_parsing(finished_run: Path) -> None:
    with pytest.raises(ValueError, match="`fmt` must be one of text, json, md, got 'html'"):
        render_run(finished_run, fmt="html")
    assert split_tag("act/encoder.layers.0/relu/firing_rate") == ("encoder.layers.0/relu", "firing_rate")
    assert split_tag("act/net.1/output") is None and split_tag("train_loss") is None
    assert issubclass(ReadbackError, Exception)


def test_a_row_holds_one_window_and_prefixed_tags_read_back(tmp_path: Path) -> None:
    """Each row's values come from its last log step: a statistic logged only on an earlier
    (detail) step is left out, not shown under the later step. A logger prefix is skipped."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        for step in (0, 4):
            writer.add_scalar("run-act/fc.act/firing_rate", 0.5 + step / 10, step)
            writer.add_scalar("run-act/fc.act/nonfinite", 1.0 if step == 0 else 0.0, step)
        writer.add_scalar("run-act/fc.act/param_grad_norm", 3.0, 0)  # detail steps only
        writer.add_scalar("train_loss", 1.0, 4)
    run = load_run(tmp_path)
    (row,) = run.layers
    assert (row.site, row.step, run.last_step) == ("fc.act", 4, 4)
    assert row.values == {"firing_rate": pytest.approx(0.9), "nonfinite": 1.0}  # NaN/Inf at any step
    assert split_tag("run-act/fc.act/firing_rate") == ("fc.act", "firing_rate")
    assert split_tag("run-x/fc.act/firing_rate") is None
    # A site path holding "-act/" in an evaluation stage's tags (act_<stage>/...) is no prefix.
    assert split_tag("act_validate/blocks.pre-act/relu/std") is None
    assert split_tag("p-act_validate/blocks.pre-act/relu/std") is None
    assert split_tag("act/blocks.pre-act/relu/std") == ("blocks.pre-act/relu", "std")
    assert split_tag("p-act/blocks.pre-act/relu/std") == ("blocks.pre-act/relu", "std")


def test_console_script(finished_run: Path) -> None:
    exe = shutil.which("act-diagnostics", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("act-diagnostics console script not installed (pip install -e .)")
    proc = subprocess.run([exe, "report", str(finished_run.parent / "missing")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no such directory" in proc.stderr


def test_a_reader_closing_the_pipe_early_gets_no_traceback(finished_run: Path) -> None:
    # `act-diagnostics report RUN | head -1`: the reader leaves before the table is written.
    code = "import sys; from act_diagnostics.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "report", str(finished_run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # type: ignore[union-attr]
    err = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_functional_site_names_come_back(tmp_path: Path) -> None:
    # Event tags write ":tanh" as "root/tanh"; report.json restores the real name and its kind.
    from tests.ecosystem.conftest import tiny_module_class

    callback = callback_class(FLAVOUR)(log_every_n_steps=4, verbose=False)
    trainer = make_trainer(FLAVOUR, tmp_path, callbacks=[callback], max_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(trainer, tiny_module_class(FLAVOUR)())
    rows = {row.site: row for row in load_run(trainer.logger.log_dir).layers}
    assert set(rows) == {"act", ":tanh"}
    assert rows[":tanh"].kind == "tanh" and rows["act"].kind == "relu"


def test_not_applicable_statistics_are_neither_logged_nor_in_report_json(finished_run: Path) -> None:
    """Sigmoid layers: never above 0.5 is a position, not a dead unit. Their dead_fraction is not a
    TensorBoard scalar and is null in report.json; what applies (firing_rate, saturation) is there."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set(EventAccumulator(str(finished_run), size_guidance={"scalars": 0}).Reload().Tags()["scalars"])
    assert {"act/net.1/firing_rate", "act/net.1/saturation"} <= tags
    assert not any(tag.endswith("/dead_fraction") for tag in tags)
    layers = json.loads((finished_run / REPORT_DIRNAME / "report.json").read_text())["layers"]
    assert [(row["family"], row["dead_fraction"]) for row in layers] == [("sigmoid", None)] * 5
    assert all(row["saturation"] is not None for row in layers)


def test_the_report_folder_is_self_contained(finished_run: Path) -> None:
    """report.md links each finding's chart, written beside it in the same folder."""
    import re

    folder = finished_run / REPORT_DIRNAME
    links = re.findall(r"\]\(([^)]+)\)", (folder / "report.md").read_text())
    assert links and all((folder / link).is_file() and "/" not in link for link in links)
