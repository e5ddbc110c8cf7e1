"""Command line: ``act-diagnostics demo`` and ``act-diagnostics report LOGDIR``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1 (Lightning reads -1 as "no limit", and 0 trains nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _demo(args: argparse.Namespace) -> int:
    from act_diagnostics.demo import run_demo

    # Checked before any training: an unusable directory would otherwise fail deep in a logger.
    try:
        Path(args.logdir).mkdir(parents=True, exist_ok=True)
        if not os.access(args.logdir, os.W_OK):
            raise PermissionError(f"{args.logdir}: not writable")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"act-diagnostics demo: cannot write logs to {args.logdir}: {reason}", file=sys.stderr)
        return 2
    run_demo(logdir=args.logdir, steps=args.steps, quiet=args.quiet)
    return 0


def _report(args: argparse.Namespace) -> int:
    from act_diagnostics.outputs.readback import ReadbackError, render_run

    try:
        print(render_run(args.logdir, fmt=args.format))
    except ReadbackError as exc:
        print(f"act-diagnostics report: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    from act_diagnostics import __version__

    parser = argparse.ArgumentParser(prog="act-diagnostics", description="Activation diagnostics for PyTorch Lightning.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train small flawed models on CPU and show the warnings")
    demo.add_argument("--logdir", default="act_logs", help="where TensorBoard logs go (default: act_logs)")
    demo.add_argument("--steps", type=_positive_int, default=300, help="optimizer steps per model, >= 1 (default: 300)")
    demo.add_argument("--quiet", action="store_true", help="print only the summary (no per-model tables or warnings)")
    demo.set_defaults(func=_demo)

    report = sub.add_parser("report", help="print the findings and per-layer table of a finished run")
    report.add_argument(
        "logdir", help="a run's log dir (holding act-diagnostics/report.json, or act_diagnostics/ of older runs, or event files)"
    )
    report.add_argument("--format", choices=("text", "json", "md"), default="text")
    report.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # The reader went away (`act-diagnostics report RUN | head`): stop quietly, and keep Python
        # from failing again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
