"""The README demo: deliberately flawed models train under Lightning, and act_diagnostics says why.

Seven short runs on the CPU (models and data from :mod:`act_diagnostics.scenarios`, built in code,
nothing downloaded), each with its own TensorBoard log under ``--logdir``:

1. ``deep_sigmoid_mlp``: nine Sigmoid hidden layers in a ten-layer MLP; saturating hidden activations, vanishing gradient.
2. ``dying_relu_mlp``: healthy Kaiming ReLU units killed during training by a learning rate far
   too high (told apart from units born dead).
3. ``softmax_into_cross_entropy``: a Softmax head fed to ``F.cross_entropy``, which expects logits.
4. ``collapsed_attention``: a small transformer whose ``F.scaled_dot_product_attention`` scores are
   scaled by 16 instead of 1/sqrt(head_dim): nearly one-hot attention rows.
5. ``deep_sigmoid_mlp_fixed``: run 1 after following the advice (GELU, Kaiming init), same data and
   steps: no warnings, and a lower loss.
6. ``attention_logit_growth``: the transformer of run 4 with the usual scale, trained by Adam at 0.03
   without QK-norm: its largest attention logit grows past 30 before attention collapses.
7. ``attention_logit_growth_fixed``: run 6 after following the advice (QK-LayerNorm): no warnings.

Each run logs its training loss as ``train_loss``, so TensorBoard's Scalars tab shows run 1 and
run 5 (and runs 6 and 7) on one chart.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shlex
import shutil
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from act_diagnostics.outputs.report import LEGACY_REPORT_DIRNAMES, REPORT_DIRNAME
from act_diagnostics.scenarios import SCENARIOS, Setup

DEMO_SCENARIOS = (
    "deep_sigmoid_mlp", "dying_relu_mlp", "softmax_into_cross_entropy", "collapsed_attention", "deep_sigmoid_mlp_fixed",
    "attention_logit_growth", "attention_logit_growth_fixed",
)
BEFORE_AFTER = ("deep_sigmoid_mlp", "deep_sigmoid_mlp_fixed")
LOSS_TAG = "train_loss"


@dataclass
class DemoRun:
    name: str
    description: str
    final_loss: float = float("nan")
    findings: list[Any] = field(default_factory=list)
    log_dir: str = ""


def lightning_module(setup: Setup) -> Any:
    """Wrap a scenario's model, loss and optimiser settings in a LightningModule."""
    import pytorch_lightning as pl

    class ScenarioModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = setup.model
            self.losses: list[float] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = setup.loss_fn(self(x), y)
            self.losses.append(float(loss.detach()))
            # Logged under the same tag in every run, so TensorBoard draws the runs side by side
            # (deep_sigmoid_mlp against deep_sigmoid_mlp_fixed: the effect of following the advice).
            self.log(LOSS_TAG, loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            if setup.optimizer == "adam":
                return torch.optim.Adam(self.parameters(), lr=setup.lr)
            return torch.optim.SGD(self.parameters(), lr=setup.lr, momentum=0.9)

    return ScenarioModule()


def run_demo(logdir: str = "act_logs", steps: int = 300, quiet: bool = False, names: tuple[str, ...] = DEMO_SCENARIOS) -> list[DemoRun]:
    """Train each demo scenario for ``steps`` optimizer steps; return findings and final losses.
    A scenario's folder under ``logdir`` holds its latest run only (a rerun replaces it)."""
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}")
    # Tiny models: one thread is fastest, and stays fast on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    runs: list[DemoRun] = []
    try:
        with _lightning_quiet():
            for name in names:
                runs.append(_run_scenario(name, logdir, steps, quiet))
    finally:
        torch.set_num_threads(threads)
    _print_summary(runs, logdir, steps, time.perf_counter() - start)
    return runs


@contextlib.contextmanager
def _lightning_quiet() -> Any:
    """Lightning's banners ("GPU available", tips, "max_steps reached") would bury the demo's output."""
    import pytorch_lightning  # noqa: F401 - it sets its loggers to INFO when first imported: import first

    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _clear_previous_run(run_dir: str) -> None:
    """A scenario's folder holds one run: a rerun replaces the demo's own files (event files, report)
    instead of adding a second run that TensorBoard would draw over the first."""
    for path in glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        os.remove(path)
    for folder in (REPORT_DIRNAME, *LEGACY_REPORT_DIRNAMES):
        shutil.rmtree(os.path.join(run_dir, folder), ignore_errors=True)


def _run_scenario(name: str, logdir: str, steps: int, quiet: bool) -> DemoRun:
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    from act_diagnostics.callbacks.options import RuleOptions
    from act_diagnostics.callbacks.pl_callback import ActivationDiagnostics

    scenario = SCENARIOS[name]
    torch.manual_seed(0)
    setup = scenario.build(torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(setup.inputs, setup.targets)
    loader = torch.utils.data.DataLoader(data, batch_size=setup.batch_size, shuffle=True, generator=torch.Generator().manual_seed(1))
    module = lightning_module(setup)
    callback = ActivationDiagnostics(log_every_n_steps=25, verbose=False, rules=RuleOptions(warn=not quiet))
    _clear_previous_run(os.path.join(logdir, name))
    logger = TensorBoardLogger(logdir, name=name, version="")
    trainer = pl.Trainer(
        max_steps=steps,
        logger=logger,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=25,
    )
    if not quiet:
        print(f"\n=== {name}: {scenario.description}", flush=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="pytorch_lightning")
        warnings.filterwarnings("ignore", module="lightning_fabric")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, loader)
    tail = module.losses[-25:]
    run = DemoRun(name, scenario.description, sum(tail) / max(1, len(tail)), list(callback.report.findings), logger.log_dir)
    if not quiet:
        print(callback.report.console_table(), flush=True)
    return run


def _print_summary(runs: list[DemoRun], logdir: str, steps: int, seconds: float) -> None:
    print("\n=== Summary")
    for run in runs:
        flagged = sorted({f.rule for f in run.findings if f.severity in ("warning", "error")})
        print(f"  {run.name:28s} final loss {run.final_loss:6.3f}   warnings: {', '.join(flagged) or 'none'}")
    by_name = {r.name: r for r in runs}
    if all(n in by_name for n in BEFORE_AFTER):
        before, after = (by_name[n] for n in BEFORE_AFTER)
        if after.final_loss < before.final_loss:
            print(
                f"\nFollowing the advice (hidden Sigmoid -> GELU with Kaiming init) took the loss from "
                f"{before.final_loss:.3f} to {after.final_loss:.3f} in the same {steps} steps."
            )
        else:  # too few steps for the difference to show
            print(f"\nIn {steps} steps the advice did not lower the loss yet ({before.final_loss:.3f} -> "
                  f"{after.final_loss:.3f}); the default 300 steps show the difference.")
    print(f"Done in {seconds:.0f} s. TensorBoard logs: {os.path.abspath(logdir)}")
    print(f"Read a run back: act-diagnostics report {shlex.quote(os.path.join(logdir, runs[0].name) if runs else logdir)}")
    print(f"View them with:  tensorboard --logdir {shlex.quote(logdir)}   ({LOSS_TAG}: every run on one chart)")
