"""Shared helpers of the examples: command-line flags and a quiet CPU Trainer.

Every example takes ``--fast`` (a few steps, for the test suite), ``--max-steps`` and ``--logdir``,
and runs on a laptop CPU in under a minute without ``--fast``.
"""

from __future__ import annotations

import argparse
import importlib
import warnings
from collections.abc import Sequence
from typing import Any

import torch


def parse_args(
    description: str, argv: Sequence[str] | None, default_steps: int, fast_steps: int = 8, extra: Any = None
) -> argparse.Namespace:
    """The examples' common flags; ``extra(parser)`` adds an example's own."""
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    parser.add_argument("--logdir", default="act_logs", help="TensorBoard log root (default: act_logs)")
    parser.add_argument("--max-steps", type=int, default=None, help=f"optimizer steps (default: {default_steps})")
    parser.add_argument("--fast", action="store_true", help=f"a quick smoke run: {fast_steps} steps")
    args = parser.parse_args(argv)
    if args.max_steps is None:
        args.max_steps = fast_steps if args.fast else default_steps
    if args.max_steps < 1:
        parser.error(f"--max-steps must be >= 1, got {args.max_steps}")
    return args


def trainer(flavour: str, logdir: str, name: str, max_steps: int, callbacks: list[Any], log_every_n_steps: int = 10) -> Any:
    """A quiet single-device CPU Trainer of ``flavour`` ("pytorch_lightning" or "lightning.pytorch")."""
    L = importlib.import_module(flavour)
    loggers = importlib.import_module(f"{flavour}.loggers")
    return L.Trainer(
        max_steps=max_steps,
        logger=loggers.TensorBoardLogger(logdir, name=name),
        callbacks=callbacks,
        log_every_n_steps=log_every_n_steps,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
    )


def fit(trainer: Any, module: Any, loader: Any) -> None:
    # These models are tiny: one thread is fastest, and avoids oversubscription on a busy machine.
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        trainer.fit(module, loader)


def tail_mean(values: Sequence[float], last: int = 20) -> tuple[float, int]:
    """The mean of the last ``last`` values (fewer in a short run) and how many it took."""
    tail = list(values)[-last:]
    return (sum(tail) / len(tail) if tail else float("nan")), len(tail)


def print_findings(title: str, callback: Any) -> None:
    findings = callback.report.findings
    print(f"\n== {title}: {len(findings)} finding(s)")
    for f in findings:
        print(f"  [{f.severity}] {f.rule} @ {f.site or '(model)'}: {f.recommendation}")
    if callback.report_dir:
        print(f"  report: {callback.report_dir}   (act-diagnostics report {callback.report_dir.rsplit('/', 1)[0]})")
