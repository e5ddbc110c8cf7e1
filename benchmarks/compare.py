"""The monitor's cost at a git ref against the working tree's, measured in one process.

    python benchmarks/compare.py HEAD~3                        # MLP, every step measured, logged every 50
    python benchmarks/compare.py main --model transformer --rounds 12 --interval 1
    python benchmarks/compare.py HEAD~3 --fixed                # fixed cost per site: small model, one row
    python benchmarks/compare.py HEAD~3 --auto                 # the default schedule, steady state
    python benchmarks/compare.py HEAD~3 --lightning --tensorboard --interval 1   # the callbacks, with a logger

On a shared machine the load moves a run's figures by more than most changes to the code do. So
the package at REF (exported with ``git archive`` into a temporary folder and imported under the
name ``act_ref``) and the working tree's run in one process, in interleaved blocks of 10 steps
against one bare loop, in a rotated order each round. Each round gives monitored / bare for both
and new / ref; the figures are medians over rounds (min-max).

``--fixed`` measures what a site costs per measured step whatever its data: 8 x (Linear(64, 64)
+ activation), one row per batch, one thread; extra microseconds per site and step over the bare
loop, the minimum over rounds (the least disturbed round).
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

import overhead

from act_diagnostics.callbacks.schedule import StepSchedule
from act_diagnostics.core.monitor import ActivationMonitor

REF_NAME = "act_ref"


def export_ref(ref: str, into: Path) -> tuple[type, type]:
    """The package at ``ref`` as ``act_ref``: (its ActivationMonitor, its StepSchedule)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "act_diagnostics"], capture_output=True, check=False)
    if archive.returncode:
        raise SystemExit(f"git archive {ref}: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    package = into / REF_NAME
    (into / "act_diagnostics").rename(package)
    for source in package.rglob("*.py"):  # its absolute imports name the package
        source.write_text(re.sub(r"\bact_diagnostics\b", REF_NAME, source.read_text()))
    sys.path.insert(0, str(into))
    monitor = importlib.import_module(f"{REF_NAME}.core.monitor").ActivationMonitor
    schedule = importlib.import_module(f"{REF_NAME}.callbacks.schedule").StepSchedule
    return monitor, schedule


def ref_callback() -> type:
    """The exported ref's Lightning callback (after :func:`export_ref`)."""
    return importlib.import_module(f"{REF_NAME}.callbacks.pl_callback").ActivationDiagnostics


def compare_lightning(rounds: int, interval: int, tensorboard: bool) -> dict[str, list[float]]:
    """Lightning Trainers on the MLP: bare, the ref's callback, the working tree's; ``steps``
    timed steps after the first window (a multiple of the interval: whole windows)."""
    from act_diagnostics.callbacks.pl_callback import ActivationDiagnostics

    overhead._quiet_lightning()
    build, _ = overhead.MODELS["mlp"]
    torch.manual_seed(0)
    model, make_batch = build()
    batches = [make_batch() for _ in range(4)]
    steps = max(50, interval) // interval * interval
    warmup = max(overhead.WARMUP, interval)
    setups = [("bare", None, None), ("ref", interval, ref_callback()), ("new", interval, ActivationDiagnostics)]
    ratios: dict[str, list[float]] = {"ref": [], "new": [], "new/ref": []}
    for r in range(rounds):
        k = r % len(setups)
        times = {
            name: overhead.run_lightning(model, batches, iv, steps, warmup, tensorboard=tensorboard, callback_class=cls)
            for name, iv, cls in setups[k:] + setups[:k]
        }
        ratios["ref"].append(times["ref"] / times["bare"])
        ratios["new"].append(times["new"] / times["bare"])
        ratios["new/ref"].append(times["new"] / times["ref"])
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:.3f}" for n, v in ratios.items()), flush=True)
    return ratios


class Driven(overhead.Act):
    """overhead.Act with a given monitor class and schedule class (the ref's or the tree's)."""

    def __init__(self, model: nn.Module, name: str, monitor: type, schedule: type, interval: int, measure_every: int | None = 1) -> None:
        super().__init__(model, interval, measure_every)
        self.name = name
        self.mon = monitor(model)
        self.schedule = schedule(interval, measure_every)


def compare_steps(model_name: str, rounds: int, interval: int, ref: tuple[type, type], auto: bool = False) -> dict[str, list[float]]:
    """``auto``: the default schedule (measure_every_n_steps=None) past its dense first window."""
    measure_every = None if auto else 1
    warmup = overhead.STEADY_WARMUP if auto else overhead.WARMUP
    build, _ = overhead.MODELS[model_name]
    torch.manual_seed(0)
    model, make_batch = build()
    batches = [make_batch() for _ in range(4)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ratios: dict[str, list[float]] = {"ref": [], "new": [], "new/ref": []}
    for r in range(rounds):
        variants = [
            overhead.Bare(model),
            Driven(model, "ref", *ref, interval, measure_every),
            Driven(model, "new", ActivationMonitor, StepSchedule, interval, measure_every),
        ]
        k = r % len(variants)
        variants = variants[k:] + variants[:k]
        for v in variants:
            overhead.run_steps(model, opt, batches, v, warmup)
        times = dict.fromkeys((v.name for v in variants), 0.0)
        for _ in range(5):
            for v in variants:
                times[v.name] += overhead.run_steps(model, opt, batches, v, overhead.BLOCK)
        ratios["ref"].append(times["ref"] / times["bare"])
        ratios["new"].append(times["new"] / times["bare"])
        ratios["new/ref"].append(times["new"] / times["ref"])
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:.3f}" for n, v in ratios.items()), flush=True)
    return ratios


def compare_fixed(rounds: int, ref: tuple[type, type], act: type[nn.Module]) -> dict[str, float]:
    torch.set_num_threads(1)
    x = torch.randn(1, 64)

    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(64, 64), act())])

    def run(model: nn.Module, mon: Any, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            if mon is not None:
                mon.begin_step()
            model(x).sum().backward()
            if mon is not None:
                mon.end_step()
        return time.perf_counter() - t0

    setups: dict[str, tuple[nn.Module, Any]] = {}
    for name, cls in (("bare", None), ("ref", ref[0]), ("new", ActivationMonitor)):
        model = make()
        setups[name] = (model, cls(model).attach() if cls is not None else None)
        run(*setups[name], 20)
    best = dict.fromkeys(setups, float("inf"))
    for _ in range(rounds):
        for name, (model, mon) in setups.items():
            best[name] = min(best[name], run(model, mon, 20) / 20)
    return {name: (best[name] - best["bare"]) / 8 * 1e6 for name in ("ref", "new")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ref", help="git ref to compare the working tree with (HEAD~3, main, a commit)")
    parser.add_argument("--model", default="mlp", choices=list(overhead.MODELS))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--interval", type=int, default=overhead.DEFAULT_INTERVAL, help="log interval (1: every step)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--auto", action="store_true", help="the default schedule (measure every ~10th step), steady state")
    parser.add_argument("--fixed", action="store_true", help="fixed cost per site and measured step instead")
    parser.add_argument("--activation", default="ReLU", help="--fixed: an activation module of torch.nn")
    parser.add_argument("--lightning", action="store_true", help="MLP in Lightning Trainers: the callbacks instead of the monitors")
    parser.add_argument("--tensorboard", action="store_true", help="--lightning: with a TensorBoardLogger")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ref = export_ref(args.ref, Path(tmp))
        threads = 1 if args.fixed else args.threads
        print(f"torch {torch.__version__}, {threads} thread(s); {args.ref} (ref) against the working tree (new)", flush=True)
        if args.fixed:
            act = getattr(nn, args.activation)
            rounds = max(args.rounds, 30)
            us = compare_fixed(rounds, ref, act)
            print(f"{args.activation}: extra us per site and measured step, minimum of {rounds} rounds: "
                  f"ref {us['ref']:.1f}, new {us['new']:.1f}, new/ref {us['new'] / us['ref']:.3f}")
            return
        if args.lightning:
            ratios = compare_lightning(args.rounds, args.interval, args.tensorboard)
            what = f"mlp, Lightning{' + TensorBoard' if args.tensorboard else ''}, callback defaults"
        else:
            ratios = compare_steps(args.model, args.rounds, args.interval, ref, auto=args.auto)
            what = f"{args.model}, {'default schedule' if args.auto else 'every step measured'}"
    print(f"\n{what}, logged every {args.interval}, {args.rounds} rounds (median, min-max):")
    for name, values in ratios.items():
        print(f"  {name:8s} {statistics.median(values):.3f} ({min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    main()
