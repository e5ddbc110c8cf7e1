"""What a log step costs the callback (snapshot, rules, loggers, TensorBoard), per version.

    python benchmarks/publish_cost.py HEAD~2                  # interval 50, TensorBoard logger
    python benchmarks/publish_cost.py HEAD~2 --interval 1 --steps 60

Times every call of the callback's log-step work (``_publish``) in Lightning runs of the
benchmark MLP with a TensorBoardLogger, for the package at a git ref (exported as ``act_ref``, see
compare.py) and for the working tree, in alternating runs; prints the median and mean milliseconds
per log step. At interval 50 each log step is also a detail step (histograms, heatmap images when
due). Divide by the interval for the cost per training step.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compare
import overhead


def timed_callback(package: str) -> tuple[type, list[float]]:
    """The package's Lightning callback class, its ``_publish`` timed into the returned list."""
    core = importlib.import_module(f"{package}.callbacks._core").DiagnosticsCallbackCore
    times: list[float] = []
    publish = core._publish

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return publish(self, *args, **kwargs)
        finally:
            times.append(time.perf_counter() - t0)

    core._publish = timed
    return importlib.import_module(f"{package}.callbacks.pl_callback").ActivationDiagnostics, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ref", help="git ref to compare the working tree with")
    parser.add_argument("--interval", type=int, default=overhead.DEFAULT_INTERVAL)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per version")
    args = parser.parse_args()
    torch.set_num_threads(2)
    overhead._quiet_lightning()
    with tempfile.TemporaryDirectory() as tmp:
        compare.export_ref(args.ref, Path(tmp))
        versions = {"ref": timed_callback(compare.REF_NAME), "new": timed_callback("act_diagnostics")}
        build, _ = overhead.MODELS["mlp"]
        torch.manual_seed(0)
        model, make_batch = build()
        batches = [make_batch() for _ in range(4)]
        for _ in range(args.runs):
            for cls, _times in versions.values():
                overhead.run_lightning(model, batches, args.interval, args.steps, overhead.WARMUP, tensorboard=True, callback_class=cls)
    print(f"ms per log step, mlp, TensorBoard logger, logged every {args.interval} ({args.runs} runs of {args.steps} steps):")
    for name, (_, times) in versions.items():
        print(f"  {name}: median {statistics.median(times) * 1e3:.2f}, mean {statistics.mean(times) * 1e3:.2f} ({len(times)} log steps)")


if __name__ == "__main__":
    main()
