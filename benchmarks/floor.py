"""How low a per-unit activation monitor built from eager torch ops can go: the floor under "every step".

    python benchmarks/floor.py                  # MLP, 8 rounds
    python benchmarks/floor.py --rounds 12 --model transformer

Runs, in interleaved blocks of 10 steps against one bare loop (medians of per-round ratios, as
overhead.py does), three monitors of the model's ReLU/GELU modules, all measured on every step:

* ``hooks``: a forward hook and a gradient hook per activation that keep nothing (the cost of
  being called at all);
* ``minimal``: the same hooks running the fewest eager ops that give act_diagnostics' statistics
  for a ReLU: sum, sum of squares (``dot``), max, per-unit firing counts (``sign`` then a column
  sum) and the gradient's sum of squares, kept on the device with no checks, no sampling, no
  folding and nothing else;
* ``act-minops``: ActivationMonitor with its per-call statistics replaced by the minimal ops (its
  hooks, schedule and snapshots with ``minimal``'s work);
* ``act``: ActivationMonitor as the callback drives it, every step measured, logged every 50;
* with ``--fused``, ``compiled`` and ``scripted``: the minimal ops through ``torch.compile``
  (inductor; needs a C++ compiler, and compiles for a while first) and ``torch.jit.script``.

``minimal`` is a lower bound for any monitor of these statistics made of eager ops: what ``act``
costs above it is its own bookkeeping (sampling, dtype handling, the schedule, log steps).
Only module activations are hooked, so the Transformer (functional F.gelu) gives ``hooks`` and
``minimal`` nothing to do; use the MLP.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import overhead


class HooksOnly(overhead.Naive):
    """The naive variant's activation modules and detach, with hooks that keep nothing."""

    name = "hooks"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.kept: list[torch.Tensor] = []

    def attach(self) -> None:
        self.handles = [m.register_forward_hook(self.forward_hook) for m in self.acts]

    def forward_hook(self, module: nn.Module, args: tuple, y: torch.Tensor) -> None:
        y.register_hook(self.grad_hook)

    def grad_hook(self, g: torch.Tensor) -> None:
        pass

    def after(self, step: int) -> None:
        self.kept = []  # what a monitor would reduce at a log step


def output_ops(y: torch.Tensor) -> list[torch.Tensor]:
    """A ReLU output's sum, sum of squares, max and per-unit firing counts, in the fewest eager ops."""
    d = y.detach()
    flat = d.reshape(-1)
    return [flat.sum(), torch.dot(flat, flat), flat.max(), d.sign().sum(0, dtype=torch.float32)]


def grad_ops(g: torch.Tensor) -> torch.Tensor:
    """The gradient's sum of squares."""
    flat = g.reshape(-1)
    return torch.dot(flat, flat)


class Minimal(HooksOnly):
    name = "minimal"

    def forward_hook(self, module: nn.Module, args: tuple, y: torch.Tensor) -> None:
        self.kept += output_ops(y)
        y.register_hook(self.grad_hook)

    def grad_hook(self, g: torch.Tensor) -> None:
        self.kept.append(grad_ops(g))


class Fused(Minimal):
    """The minimal ops through a compiler: ``torch.compile`` (inductor: one generated C++ kernel per
    shape) or ``torch.jit.script`` (TorchScript's interpreter: no Python between the ops)."""

    def __init__(self, model: nn.Module, how: str) -> None:
        super().__init__(model)
        self.name = how
        compile_ = torch.compile if how == "compiled" else torch.jit.script
        self.output_fn, self.grad_fn = compile_(output_ops), compile_(grad_ops)

    def forward_hook(self, module: nn.Module, args: tuple, y: torch.Tensor) -> None:
        self.kept += self.output_fn(y.detach())
        y.register_hook(self.grad_hook)

    def grad_hook(self, g: torch.Tensor) -> None:
        self.kept.append(self.grad_fn(g))


class ActMinimalOps(overhead.Act):
    """ActivationMonitor, every step measured and logged every 50, with each site's per-call
    statistics (``SiteState.observe`` / ``observe_grad``) replaced by the minimal ops once the site
    exists. Above ``minimal`` it costs the monitor's plumbing (its hooks, the schedule, snapshots);
    ``act`` above it costs SiteState's per-call bookkeeping (sampling plan, dtype checks, folding)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, overhead.DEFAULT_INTERVAL, 1)
        self.name = "act-minops"
        self.kept: list[torch.Tensor] = []

    def before(self, step: int) -> None:
        super().before(step)
        for state in self.mon.states.values():
            if "observe" not in vars(state):
                state.observe = lambda x, y, detail: self.kept.extend(output_ops(y))
                state.observe_grad = lambda g, detail, scale=None: self.kept.append(grad_ops(g))

    def after(self, step: int) -> None:
        super().after(step)
        self.kept = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fused", action="store_true", help="add the minimal ops through torch.compile and torch.jit.script")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    build, _ = overhead.MODELS[args.model]
    model, make_batch = build()
    batches = [make_batch() for _ in range(4)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    act = overhead.Act(model, overhead.DEFAULT_INTERVAL, 1)
    act.name = "act"
    variants = [overhead.Bare(model), HooksOnly(model), Minimal(model), ActMinimalOps(model), act]
    if args.fused:
        variants += [Fused(model, "compiled"), Fused(model, "scripted")]
    for v in variants:
        overhead.run_steps(model, opt, batches, v, overhead.WARMUP)
    ratios: dict[str, list[float]] = {v.name: [] for v in variants[1:]}
    print(f"torch {torch.__version__}, {args.threads} threads, {args.model}, {args.rounds} rounds", flush=True)
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        times = dict.fromkeys((v.name for v in variants), 0.0)
        for _ in range(3):
            for v in order:
                times[v.name] += overhead.run_steps(model, opt, batches, v, overhead.BLOCK)
        for name in ratios:
            ratios[name].append(times[name] / times["bare"])
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1]:.3f}" for n, v in ratios.items()), flush=True)
    for name, values in ratios.items():
        print(f"{name:10s} {statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")


if __name__ == "__main__":
    main()
