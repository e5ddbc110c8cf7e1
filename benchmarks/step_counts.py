"""Load-independent cost per training step: torch ops dispatched and Python calls made, by mode.

    python benchmarks/step_counts.py                  # MLP 8 x 512, batch 256, one thread
    python benchmarks/step_counts.py --steps 50 --model transformer
    python benchmarks/step_counts.py --heap                # page faults and malloc arena, 2 threads
    python benchmarks/step_counts.py --heap --defer-on-cpu # the same with results deferred on the CPU

Wall-clock ratios on a shared machine swing by more than the differences between these modes; the
number of aten ops dispatched (counted with a TorchDispatchMode) and of Python function calls (a
``sys.setprofile`` hook) per step does not. Each mode drives ``ActivationMonitor`` with the
callback's own ``StepSchedule``, as ``overhead.py`` does, on its own copy of the model:

* ``bare``         no monitor;
* ``every``        statistics and a snapshot on every step (``log_every_n_steps=1``), after 3 warm-up steps;
* ``every /50``    statistics every step, logged every 50 (``measure_every_n_steps=1``), after the
                   first window: whole windows, so one log step per 50 steps (``act default /1``);
* ``first window`` the default schedule's first 50 steps (``measure_every_n_steps=None``), which
                   are all measured: structure learning on steps 0-1, a pre-flight snapshot at 0.

``--heap`` runs each mode in a process of its own (2 threads, as ``overhead.py``) and gives the
minor page faults per step (``getrusage``) and glibc's heap (``mallinfo2``) after the counted steps:
what a mode's allocations cost the kernel, which neither count above sees.

Per mode: ops and Python calls per step (mean over the counted steps), and the same on the steps
that are neither log steps nor structure steps ("plain"), where the modes differ only in how each
call's results reach the totals.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import overhead


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched while it is on the stack (forward, backward, optimizer)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


class CallCounter:
    """Counts Python function calls (and calls into C functions) while installed."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, frame, event, arg):
        if event in ("call", "c_call"):
            self.calls += 1


def count_mode(base, batches, make_variant, warmup: int, steps: int) -> list[tuple[int, int, str]]:
    """(ops, Python calls, step kind) for each of ``steps`` steps after ``warmup`` untimed ones."""
    model = copy.deepcopy(base)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    variant = make_variant(model)
    variant.attach()
    for _ in range(warmup):
        overhead.one_step(model, opt, batches[variant.step % len(batches)], variant)
    rows = []
    for _ in range(steps):
        step = variant.step
        plan = variant.schedule.plan(step) if hasattr(variant, "schedule") else None
        mon = getattr(variant, "mon", None)
        structure = mon is not None and mon.steps < max(1, mon.config.structure_steps)
        kind = "bare" if plan is None else ("log" if plan.log else "structure" if structure else "plain")
        ops, calls = OpCounter(), CallCounter()
        with ops:
            sys.setprofile(calls)
            try:
                overhead.one_step(model, opt, batches[step % len(batches)], variant)
            finally:
                sys.setprofile(None)
        rows.append((ops.ops, calls.calls, kind))
    variant.detach()
    return rows


def heap_mode(name: str, model_name: str, steps: int, defer_on_cpu: bool) -> None:
    """One mode, in this process: faults per step and the heap after ``steps`` counted steps."""
    import ctypes
    import resource

    if defer_on_cpu:  # the behaviour before the tenth session: sites on the CPU defer too
        from act_diagnostics.core import lifecycle

        lifecycle.defers_on = lambda device, deferred: deferred
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model, make_batch = overhead.MODELS[model_name][0]()
    batches = [make_batch() for _ in range(4)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    make, warmup = _modes()[name]
    variant = make(model)
    variant.attach()
    for _ in range(warmup):
        overhead.one_step(model, opt, batches[variant.step % len(batches)], variant)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        overhead.one_step(model, opt, batches[variant.step % len(batches)], variant)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps
    arena = live = float("nan")
    try:  # glibc only
        class MallInfo2(ctypes.Structure):
            _fields_ = [
                (f, ctypes.c_size_t)
                for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
            ]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
        arena, live = info.arena / 2**20, info.uordblks / 2**20
    except (OSError, AttributeError):
        pass
    print(f"| {name} | {faults:.0f} | {arena:.0f} | {live:.0f} |", flush=True)


def _modes() -> dict:
    interval = overhead.DEFAULT_INTERVAL
    return {
        "bare": (overhead.Bare, 0),
        "every": (lambda m: overhead.Act(m, 1), overhead.WARMUP),
        "every /50": (lambda m: overhead.Act(m, interval, measure_every=1), overhead.STEADY_WARMUP),
        "first window": (lambda m: overhead.Act(m, interval, measure_every=None), 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mlp", choices=list(overhead.MODELS))
    parser.add_argument("--steps", type=int, default=50, help="counted steps per mode (a multiple of 50: whole windows)")
    parser.add_argument("--heap", action="store_true", help="page faults per step and the malloc arena, a process per mode")
    parser.add_argument("--defer-on-cpu", action="store_true", help="sites on the CPU defer their results (the old behaviour)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # --heap runs each mode through this
    args = parser.parse_args()
    if args.one:
        steps = min(args.steps, overhead.DEFAULT_INTERVAL) if args.one == "first window" else args.steps
        heap_mode(args.one, args.model, steps, args.defer_on_cpu)
        return
    if args.heap:
        import subprocess

        print(f"{args.model}, 2 threads, {args.steps} counted steps per mode{', deferred on the CPU' if args.defer_on_cpu else ''}")
        print("| mode | minor faults / step | arena MiB | in use MiB |\n|---|---|---|---|", flush=True)
        for name in _modes():
            extra = ["--defer-on-cpu"] if args.defer_on_cpu else []
            subprocess.run([sys.executable, __file__, "--one", name, "--model", args.model, "--steps", str(args.steps), *extra], check=True)
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base, make_batch = overhead.MODELS[args.model][0]()
    batches = [make_batch() for _ in range(4)]
    interval = overhead.DEFAULT_INTERVAL
    modes = _modes()
    print(f"{args.model}, torch {torch.__version__}, one thread, {args.steps} counted steps per mode")
    print("| mode | ops / step | Python calls / step | plain steps | ops / plain step | calls / plain step |")
    print("|---|---|---|---|---|---|")
    for name, (make, warmup) in modes.items():
        steps = min(args.steps, interval) if name == "first window" else args.steps
        rows = count_mode(base, batches, make, warmup, steps)
        plain = [r for r in rows if r[2] in ("plain", "bare")]

        def mean(xs: list[float]) -> float:
            return statistics.fmean(xs) if xs else float("nan")
        print(
            f"| {name} | {mean([r[0] for r in rows]):.1f} | {mean([r[1] for r in rows]):.0f} | {len(plain)} "
            f"| {mean([r[0] for r in plain]):.1f} | {mean([r[1] for r in plain]):.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
