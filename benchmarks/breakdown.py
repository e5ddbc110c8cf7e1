"""Where a monitored training step spends its extra time: wall time inside each monitor hook.

    python benchmarks/breakdown.py                 # MLP, statistics every step
    python benchmarks/breakdown.py --model transformer --steps 200

    python benchmarks/breakdown.py --ops           # the torch ops inside each hook, in the loop

Runs the benchmark's bare loop and its "act every" variant (ActivationMonitor driven as the
callback drives it, log_every_n_steps=1) in alternating blocks of 10 steps, and times every call
of the monitor's hooks with ``time.perf_counter``. Prints ms per step: the bare step, the
monitored step, and each hook's share of the difference. What the hooks do not account for is
the slowdown of the model's own ops (caches, the intra-op thread pool).

``--ops`` then profiles a further 50 monitored steps with ``torch.profiler`` and lists every torch
op called directly inside a hook: its time per call inside the training step (where the model has
just evicted the caches: often several times its cost in isolation) and calls per step. A hook's
time not covered by its ops is Python plus the profiler's own cost, which is large: read the
hook totals from the timed run above, and the ops' relative costs from this one.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import overhead

from act_diagnostics.core.monitor import ActivationMonitor

HOOKS = (
    "_activation_hook",
    "_activation_pre_hook",
    "_grad_hook",
    "_model_pre_hook",
    "_module_pre_hook",
    "_module_hook",
    "call_functional",
    "_consumer_pre_hook",
    "measure_param_grads",
    "snapshot",
    "begin_step",
    "end_step",
)


def timed(totals: dict[str, float], name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - t0

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mlp", choices=list(overhead.MODELS))
    parser.add_argument("--steps", type=int, default=100, help="timed steps per variant (multiple of 10)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sample-elements", type=int, default=None, help="override the monitor's sample_elements")
    parser.add_argument("--ops", action="store_true", help="also list the torch ops inside each hook (torch.profiler)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    totals: dict[str, float] = {}
    for name in HOOKS:  # class attributes: the monitor's hooks are bound when they are registered
        if hasattr(ActivationMonitor, name):
            setattr(ActivationMonitor, name, timed(totals, name, getattr(ActivationMonitor, name)))

    torch.manual_seed(0)
    build, _ = overhead.MODELS[args.model]
    model, make_batch = build()
    batches = [make_batch() for _ in range(4)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    bare, act = overhead.Bare(model), overhead.Act(model, 1)
    if args.sample_elements is not None:
        act.mon = ActivationMonitor(model, sample_elements=args.sample_elements)
    for variant in (bare, act):
        overhead.run_steps(model, opt, batches, variant, overhead.WARMUP)
    totals.clear()
    t_bare = t_act = 0.0
    for _ in range(max(1, args.steps // overhead.BLOCK)):
        t_bare += overhead.run_steps(model, opt, batches, bare, overhead.BLOCK)
        t_act += overhead.run_steps(model, opt, batches, act, overhead.BLOCK)
    n = max(1, args.steps // overhead.BLOCK) * overhead.BLOCK
    print(f"torch {torch.__version__}, {args.threads} threads, {args.model}, {n} steps per variant")
    print(f"bare step {t_bare / n * 1e3:.2f} ms, monitored {t_act / n * 1e3:.2f} ms "
          f"(ratio {t_act / t_bare:.3f}, +{(t_act - t_bare) / n * 1e3:.2f} ms)")
    sites = max(1, len(act.mon.sites))
    for name, total in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {name:22s} {total / n * 1e3:7.3f} ms/step  ({total / n / sites * 1e6:6.1f} us per site)")
    if args.ops:
        ops_inside_hooks(model, opt, batches, act)


def ops_inside_hooks(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list, act: overhead.Act) -> None:
    """Profile 50 monitored steps; attribute each torch op to the hook that called it directly."""
    from torch.profiler import ProfilerActivity, profile, record_function

    def labelled(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with record_function(f"hook:{name}"):
                return method(*args, **kwargs)

        return wrapper

    for name in HOOKS:
        if hasattr(ActivationMonitor, name):
            setattr(ActivationMonitor, name, labelled(name, getattr(ActivationMonitor, name)))
    act.mon.pause()  # hooks are bound at registration: register the labelled ones
    steps = 50
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        overhead.run_steps(model, opt, batches, act, steps)
    hooks: dict[str, float] = {}
    ops: dict[tuple[str, str], list[float]] = {}
    for event in prof.events():
        if event.name.startswith("hook:"):
            hooks[event.name[5:]] = hooks.get(event.name[5:], 0.0) + event.cpu_time_total
            continue
        parent = event.cpu_parent
        if parent is not None and parent.name.startswith("hook:"):
            entry = ops.setdefault((parent.name[5:], event.name), [0.0, 0])
            entry[0] += event.cpu_time_total
            entry[1] += 1
    print(f"\ntorch ops called inside the hooks, {steps} profiled steps (us per call inside the step):")
    for hook, total in sorted(hooks.items(), key=lambda kv: -kv[1]):
        inside = [(op, t, c) for (h, op), (t, c) in ops.items() if h == hook]
        covered = sum(t for _, t, _ in inside)
        other = (total - covered) / steps
        print(f"  {hook:22s} {total / steps:8.1f} us/step, ops {covered / steps:8.1f}, other (Python, profiler) {other:8.1f}")
        for op, t, c in sorted(inside, key=lambda x: -x[1]):
            if t / steps >= 1.0:
                print(f"      {op:26s} {t / c:7.1f} us/call  {c / steps:5.1f} calls/step")


if __name__ == "__main__":
    main()
