"""report.md: each finding's evidence, status and chart (the run's history, drawn with Pillow)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from act_diagnostics.outputs import chart
from act_diagnostics.outputs.history import StatHistory, record_history
from act_diagnostics.outputs.report import Report
from act_diagnostics.rules import Finding


class _Snap:
    """The part of a Snapshot that StatHistory reads: step and (site, stats) pairs."""

    def __init__(self, step: int, dead: dict[str, float], families: dict[str, str] | None = None) -> None:
        self.step = step
        families = families or {}
        self._pairs = [
            (SimpleNamespace(name=n, family=families.get(n, "relu")), SimpleNamespace(dead_fraction=v, grad_rms=None))
            for n, v in dead.items()
        ]

    def ordered(self) -> list:
        return self._pairs


def test_history_is_bounded_honest_and_restarts_with_a_new_fit() -> None:
    h = StatHistory(stats=("dead_fraction",), max_points=8)
    for step in range(0, 100, 5):
        h.record(_Snap(step, {"a": step / 100, "s": 0.9}, {"s": "sigmoid"}))
    assert len(h.steps) <= 8 and h.steps[0] == 0 and h.steps[-1] == 95  # the whole run, coarser
    assert h.series("a", "dead_fraction")[-1] == (95, pytest.approx(0.95))
    assert h.series("s", "dead_fraction") == []  # a sigmoid's dead fraction does not apply
    h.record(_Snap(95, {"a": 0.5}))  # the same window again replaces its point
    assert h.series("a", "dead_fraction")[-1] == (95, 0.5) and h.steps.count(95) == 1
    h.record(_Snap(0, {"b": 0.1}))  # a new fit starts at step 0
    assert h.steps == [0] and h.series("a", "dead_fraction") == [] and h.series("b", "dead_fraction") == [(0, 0.1)]
    late = record_history(None, _Snap(0, {"a": 0.1}))
    late.record(_Snap(5, {"a": 0.2, "b": 0.3}))  # a site first seen at the second window
    assert late.series("b", "dead_fraction") == [(5, 0.3)] and len(late.values["b"]["dead_fraction"]) == 2
    with pytest.raises(ValueError, match="`max_points` must be an int >= 4, got 2"):
        StatHistory(max_points=2)


def test_chart_draws_the_threshold_where_it_lies(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "c.png"
    chart.draw_chart([(0, 0.1), (10, 0.6)], path, "dead_fraction of a", threshold=("dead-units.warn_fraction", 0.25), share=True)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (chart.HEIGHT, chart.WIDTH, 3)
    red_rows = np.nonzero(np.all(img == chart.THRESHOLD_RGB, axis=-1).sum(axis=1) > chart.WIDTH // 4)[0]
    plot_top, plot_bottom = chart.TOP, chart.HEIGHT - chart.BOTTOM
    expected = plot_bottom - 0.25 * (plot_bottom - plot_top)
    assert red_rows.size and abs(red_rows.mean() - expected) <= 2  # a quarter of the way up the 0..1 axis
    assert np.count_nonzero(np.all(img == chart.LINE_RGB, axis=-1)) > 50  # the series itself


def test_threshold_follows_the_severity_and_the_runs_overrides() -> None:
    warn = Finding("dead-units", "a", "warning", "m", "f", 5)
    error = Finding("dead-units", "a", "error", "m", "f", 5)
    assert chart.chart_spec(warn) == ("dead_fraction", "warn_fraction", 0.25)
    assert chart.chart_spec(error) == ("dead_fraction", "error_fraction", 0.5)
    assert chart.chart_spec(warn, {"dead-units.warn_fraction": 0.3}) == ("dead_fraction", "warn_fraction", 0.3)
    assert chart.chart_spec(Finding("vanishing-gradient", "a", "warning", "m", "f", 5)) == ("grad_rms", None, None)
    assert chart.chart_spec(Finding("output-activation-mismatch", "a", "error", "m", "f", 5)) is None
    from act_diagnostics.rules import RuleEngine

    assert chart.engine_thresholds(RuleEngine(thresholds={"dead-units.warn_fraction": 0.3}))["dead-units.warn_fraction"] == 0.3


def test_report_md_shows_evidence_status_and_a_linked_chart(tmp_path: Path) -> None:
    history = StatHistory(stats=("dead_fraction",))
    for step in range(0, 50, 10):
        history.record(_Snap(step, {"enc.act": step / 50}))
    findings = [
        Finding("dead-units", "enc.act", "warning", "30% of 8 units never fire", "lower the LR", 20, {"dead_fraction": 0.3, "units": 8}),
        Finding("dead-units", "dec.act", "error", "60% of 8 units never fire", "init", 10, {"dead_fraction": 0.6}, resolved_step=40),
    ]
    report = Report(findings=findings, history=history)
    report.write_markdown(tmp_path / "report.md")
    md = (tmp_path / "report.md").read_text()
    assert "## 1. error: dead-units at `dec.act`, step 10 (resolved at step 40)" in md
    assert "- **Status**: resolved: the condition stopped holding at step 40" in md
    assert "## 2. warning: dead-units at `enc.act`, step 20 (open)" in md
    assert "- **Evidence**: dead_fraction=0.3, units=8" in md
    links = re.findall(r"\]\(([^)]+\.png)\)", md)
    assert links == ["finding-2-dead-units.png"]  # dec.act has no recorded series: no chart
    assert (tmp_path / links[0]).read_bytes().startswith(b"\x89PNG")
    assert "(open): 30% of 8 units never fire" in report.console_table()
    assert "      evidence: dead_fraction=0.3, units=8" in report.console_table()
    assert report.to_dict()["findings"][0]["status"] == "resolved"


# A second run in the same working directory, as an editable install imports the package: Python's
# PathFinder looks at the working directory before the editable install's finder, so a folder there
# named like the package (even without __init__.py) would shadow it.
_SECOND_RUN = """
import importlib.abc, importlib.machinery, importlib.util, os, sys, warnings
ROOT = {root!r}

class Editable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "act_diagnostics":
            return None
        pkg = os.path.join(ROOT, "act_diagnostics")
        return importlib.util.spec_from_file_location(name, os.path.join(pkg, "__init__.py"), submodule_search_locations=[pkg])

sys.meta_path.insert(sys.meta_path.index(importlib.machinery.PathFinder) + 1, Editable())
from act_diagnostics import ActivationDiagnostics
import torch
from torch import nn
torch.set_num_threads(1)
torch.manual_seed(0)
{fit}
trainer_fit(ActivationDiagnostics)
print("second run ok")
"""

_FIT = """
def trainer_fit(cls):
    import pytorch_lightning as pl

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        def training_step(self, batch, i):
            return self.net(batch[0]).pow(2).mean()
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(32, 4)), batch_size=8)
    trainer = pl.Trainer(logger=False, max_steps=3, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[cls()], accelerator="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(M(), data)
"""


def _second_run(cwd: Path) -> subprocess.CompletedProcess[str]:
    import os
    import sys

    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = _SECOND_RUN.format(root=root, fit=_FIT)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_second_run_in_the_same_folder_imports_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from act_diagnostics import ActivationDiagnostics
    from act_diagnostics.outputs.report import REPORT_DIRNAME

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"torch": __import__("torch"), "nn": __import__("torch").nn, "warnings": warnings}
    exec(_FIT, namespace)
    namespace["trainer_fit"](ActivationDiagnostics)
    assert (tmp_path / REPORT_DIRNAME / "report.json").is_file() and not (tmp_path / "act_diagnostics").exists()
    proc = _second_run(tmp_path)
    assert proc.returncode == 0 and "second run ok" in proc.stdout, proc.stderr[-3000:]


def test_a_folder_named_like_the_package_would_shadow_it(tmp_path: Path) -> None:
    """The control: the set-up above reproduces the failure a folder named act_diagnostics caused."""
    (tmp_path / "act_diagnostics").mkdir()
    proc = _second_run(tmp_path)
    assert proc.returncode != 0 and "cannot import name 'ActivationDiagnostics' from 'act_diagnostics' (unknown location)" in proc.stderr
