"""Report: JSON / Markdown / console output built from findings and the latest snapshot."""

from __future__ import annotations

import json

from snapshot_builders import make_site, make_snapshot, relu_stats

from act_diagnostics.outputs.report import Report
from act_diagnostics.rules import Finding


def sample_report() -> Report:
    snap = make_snapshot([(make_site("enc.act|0", "relu"), relu_stats([0.0] * 4 + [0.5] * 4, grad_rms=2e-5))], step=300)
    findings = [
        Finding("saturation", "x", "info", "later info", "fix b", 200),
        Finding("dead-units", "enc.act|0", "error", "50% dead", "lower LR", 300, {"dead_fraction": 0.5}),
    ]
    return Report(findings=findings, snapshot=snap)


def test_report_orders_errors_first_and_round_trips_json(tmp_path):
    rep = sample_report()
    assert [f.severity for f in rep.findings] == ["error", "info"]
    rep.write_json(tmp_path / "report.json")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["summary"] == {"info": 1, "warning": 0, "error": 1} and data["step"] == 300
    (row,) = data["layers"]
    assert row["site"] == "enc.act|0" and row["dead_fraction"] == 0.5 and row["grad_rms"] == 2e-5


def test_markdown_escapes_pipes_and_has_layer_table(tmp_path):
    rep = sample_report()
    md = rep.markdown_table()
    assert "| error | dead-units | enc.act\\|0 | 300 | open | 50% dead | dead_fraction=0.5 | lower LR |" in md
    assert "| site | kind | firing_rate | dead_fraction | saturation | grad_rms |" in md
    rep.write_markdown(tmp_path / "report.md")
    assert (tmp_path / "report.md").read_text().startswith("# act_diagnostics report")


def test_console_table_lists_findings_and_aligned_rows():
    text = sample_report().console_table()
    assert text.splitlines()[0] == "act_diagnostics: 1 error(s), 0 warning(s), 1 info"
    assert "fix: lower LR" in text and "enc.act|0" in text and "2.00e-05" in text


def test_empty_report():
    rep = Report()
    assert rep.to_dict() == {"step": None, "summary": {"info": 0, "warning": 0, "error": 0}, "findings": [], "layers": [], "stopped": None}
    assert "0 error(s)" in rep.console_table()


def test_tables_show_no_dead_fraction_for_sigmoid_tanh_softmax(tmp_path):
    """A sigmoid unit never above 0.5 is not dead: the tables show "-" there and report.json null;
    ReLU-family rows keep theirs."""
    pairs = [(make_site(name, kind, index=i), relu_stats([0.0] * 4 + [0.5] * 4)) for i, (name, kind) in enumerate(
        [("r", "relu"), ("s", "sigmoid"), ("t", "tanh"), ("p", "softmax")])]
    rep = Report(snapshot=make_snapshot(pairs))
    md_rows = {line.split(" | ")[0][2:]: line.split(" | ")[3] for line in rep.markdown_table().splitlines() if line.startswith("| ") and " | " in line[2:]}
    assert md_rows["r"] == "0.5" and md_rows["s"] == md_rows["t"] == md_rows["p"] == "-"
    console = {line.split()[0]: line.split()[3] for line in rep.layer_table().splitlines()[1:]}
    assert console == {"r": "0.5", "s": "-", "t": "-", "p": "-"}
    assert [row["dead_fraction"] for row in rep.layers()] == [0.5, None, None, None]


def test_sites_that_would_share_a_tag_keep_their_own_scalars():
    """F.relu in a submodule named `root` and F.relu in the root forward are both `root/relu`: the
    later site (forward order) is logged as `root/relu_2` rather than overwriting the first."""
    from act_diagnostics.outputs.scalars import site_tags, snapshot_scalars

    pairs = [(make_site("root:relu", "relu", index=0), relu_stats([0.5] * 8)), (make_site(":relu", "relu", index=1), relu_stats([0.0] * 8))]
    scalars = snapshot_scalars(make_snapshot(pairs))
    assert scalars["act/root/relu/firing_rate"] == 0.5 and scalars["act/root/relu_2/firing_rate"] == 0.0
    assert site_tags(["a:relu", "a.relu", "a/relu", "b#1"]) == {"a:relu": "a/relu", "a.relu": "a.relu", "a/relu": "a/relu_2", "b#1": "b_call1"}
