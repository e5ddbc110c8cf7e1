"""Golden files: what a person reads (console table, report.md, report.json, `act-diagnostics report`
as text and markdown) from one deterministic tiny run, compared line by line.

The run is seeded, on the CPU, with fixed data and steps. Paths are replaced by ``<RUN>``; in
report.json every float is rounded to 4 significant digits (the text outputs already print 3).
After an intended change, rewrite the files with ``pytest tests/golden --update-golden`` and review
the diff (docs/development.md).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pl = pytest.importorskip("pytorch_lightning")

GOLDEN = Path(__file__).resolve().parent
STEPS = 8


class TinyNet(pl.LightningModule):
    """Linear -> ReLU (a quarter of its units born dead: bias -20) -> Linear -> Sigmoid -> Linear -> Sigmoid -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 3)
        )
        with torch.no_grad():
            self.net[0].bias[:2] = -20.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Train once; return every output, normalised."""
    import contextlib
    import io

    from pytorch_lightning.loggers import TensorBoardLogger

    from act_diagnostics import ActivationDiagnostics
    from act_diagnostics.cli import main

    root = tmp_path_factory.mktemp("golden")
    torch.manual_seed(0)
    x = torch.randn(128, 4, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    logger = TensorBoardLogger(str(root), name="run", version=0)
    trainer = pl.Trainer(
        max_steps=STEPS, logger=logger, callbacks=[ActivationDiagnostics()], log_every_n_steps=2, accelerator="cpu", devices=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    console = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(console):
        warnings.simplefilter("ignore")
        trainer.fit(TinyNet(), loader)
    run_dir = Path(logger.log_dir)
    (callback,) = [c for c in trainer.callbacks if isinstance(c, ActivationDiagnostics)]
    report_dir = Path(callback.report_dir)
    outputs = {
        "console.txt": console.getvalue(),
        "report.md": (report_dir / "report.md").read_text(encoding="utf-8"),
        "report.json": _rounded_json((report_dir / "report.json").read_text(encoding="utf-8")),
    }
    for fmt, name in (("text", "readback.txt"), ("md", "readback.md")):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["report", str(run_dir), "--format", fmt]) == 0
        outputs[name] = out.getvalue()
    return {name: _normalised(text, run_dir) for name, text in outputs.items()}


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def _rounded_json(text: str) -> str:
    return json.dumps(_round(json.loads(text)), indent=2) + "\n"


def _normalised(text: str, run_dir: Path) -> str:
    text = text.replace(str(run_dir.resolve()), "<RUN>").replace(str(run_dir), "<RUN>")
    return re.sub(r"[ \t]+\n", "\n", text)


GOLDEN_FILES = ("console.txt", "report.md", "report.json", "readback.txt", "readback.md")


@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_output_matches_its_golden_file(golden_run: dict[str, str], name: str, update_golden: bool) -> None:
    path = GOLDEN / name
    if update_golden:
        path.write_text(golden_run[name], encoding="utf-8")
        return
    assert path.is_file(), f"{path} is missing: create it with `pytest tests/golden --update-golden`"
    expected = path.read_text(encoding="utf-8")
    assert golden_run[name] == expected, f"{name} differs from its golden file: if intended, run `pytest tests/golden --update-golden` and review the diff"


def test_golden_files_are_what_a_person_reads(golden_run: dict[str, str]) -> None:
    """Not only unchanged, but meaningful: the run raises findings and the same columns appear everywhere."""
    columns = "firing_rate  dead_fraction  saturation"
    assert "dead-units" in golden_run["console.txt"] and "saturating-hidden-activation" in golden_run["console.txt"]
    assert all(re.search(r"firing_rate\s+dead_fraction\s+saturation", golden_run[n]) for n in ("console.txt", "readback.txt")), columns
    assert all("| firing_rate | dead_fraction | saturation |" in golden_run[n] for n in ("report.md", "readback.md"))
    assert "<RUN>" in golden_run["readback.txt"] and "/tmp" not in golden_run["readback.txt"]
