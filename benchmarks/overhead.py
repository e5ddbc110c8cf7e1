"""Training-step overhead of act_diagnostics and of two peers, measured side by side.

    python benchmarks/overhead.py            # about 10 minutes on 2 cores (3 rounds)
    python benchmarks/overhead.py --rounds 5 --models mlp transformer --windows 4 --no-lightning
    python benchmarks/overhead.py --device cuda   # on a GPU: each timed block ends with a synchronize

Ratio = monitored / bare training time over the same steps, in the same round; variants run in a
rotated order each round; the figure is the median of the per-round ratios (min-max, rounds).
Variants (plain torch loop, SGD, batches made in advance, torch.set_num_threads(2)):

* ``act every``    ActivationMonitor driven as the callback drives it, statistics every step
                   (begin_step / stop_tracing / measure_param_grads / end_step / snapshot);
* ``act default``  the callback's defaults at Lightning's default interval (50 steps): after the
                   first window (measured on every step, untimed warm-up), the log step and every
                   10th step between (``measure_every_n_steps=None``, automatic);
* ``act default /1`` the same interval, measuring every step (``measure_every_n_steps=1``);
* ``fastai``       fastai ActivationStats re-implemented: a hook on every module with parameters,
                   mean, std and share near zero (<= 0.05) with three ``.item()`` per module per step;
* ``naive``        one hook per activation module: ``(out > 0).float().mean().item()``;
* ``PL every`` / ``PL default``: a Lightning Trainer with the ActivationDiagnostics callback
                   (rules on, no logger) against a bare Trainer (MLP only);
* ``PL+TB every`` / ``PL+TB default``: the same, both Trainers with a TensorBoardLogger (Lightning's
                   default logger): scalars, histograms and heatmap images are written too.

Each run first takes a few untimed warm-up steps (the monitor learns the structure in its first two
steps, and the pre-flight snapshot is taken at step 0; default-interval variants warm up through
their first, densely measured window), then times N steps; for the default interval
N is a multiple of 50, so each timed window holds exactly one log step.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from act_diagnostics.callbacks.schedule import StepSchedule
from act_diagnostics.core.monitor import ActivationMonitor

WARMUP = 3
# The default schedule measures every step of its first window (initialisation faults), then about
# 5 steps per window: the default-interval variants warm up through that first window, so their
# figure is the steady state. The first window costs what "act default /1" costs, once per run.
STEADY_WARMUP = 50
BLOCK = 10  # steps per interleaved block
DEFAULT_INTERVAL = 50  # Trainer(log_every_n_steps=50)


# ---------------------------------------------------------------------------------------- models
def mlp() -> tuple[nn.Module, Callable[[], tuple]]:
    layers: list[nn.Module] = []
    for _ in range(8):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(512, 10))
    return model, lambda: (torch.randn(256, 512), torch.randint(0, 10, (256,)))


def cnn() -> tuple[nn.Module, Callable[[], tuple]]:
    layers: list[nn.Module] = []
    ch = 3
    for _ in range(4):
        layers += [nn.Conv2d(ch, 64, 3, padding=1), nn.ReLU()]
        ch = 64
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    return model, lambda: (torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))


class Encoder(nn.Module):
    """A small Transformer encoder classifier: 2 layers, d_model 128, 4 heads, feed-forward 512,
    batch 16 x 32 tokens. Its activation is the functional F.gelu (no module for ``naive`` to hook)."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


def transformer() -> tuple[nn.Module, Callable[[], tuple]]:
    return Encoder(), lambda: (torch.randn(16, 32, 128), torch.randint(0, 10, (16,)))


MODELS = {"mlp": (mlp, 50), "cnn": (cnn, 10), "transformer": (transformer, 50)}  # name -> (builder, N every-step)


# ---------------------------------------------------------------------------------------- variants
class Bare:
    name = "bare"

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.step = 0  # steps run so far (the schedule continues across blocks)

    def attach(self) -> None: ...
    def detach(self) -> None: ...

    def before(self, step: int) -> None: ...
    def after_forward(self, step: int) -> None: ...
    def before_optimizer(self, step: int) -> None: ...
    def after(self, step: int) -> None: ...


class Act(Bare):
    """ActivationMonitor driven exactly as the Lightning callback drives it."""

    def __init__(self, model: nn.Module, interval: int, measure_every: int | None = 1) -> None:
        super().__init__(model)
        self.interval = interval
        self.measure_every = measure_every  # ActivationDiagnostics(measure_every_n_steps=...); None: automatic
        self.name = "act every" if interval == 1 else "act default"
        if interval > 1 and measure_every is not None:
            self.name += f" /{measure_every}"
        self.mon = ActivationMonitor(model)
        self.schedule = StepSchedule(interval, measure_every)  # the callback's own schedule
        self.due = self.detail = False

    def attach(self) -> None:
        self.mon.attach()

    def detach(self) -> None:
        self.mon.detach()

    def before(self, step: int) -> None:
        plan = self.schedule.plan(step)
        self.due, self.detail = plan.log, plan.detail
        if plan.measure:
            self.mon.begin_step(detail=plan.detail)
        else:
            self.mon.pause()  # on_train_batch_start of a step the callback does not measure

    def after_forward(self, step: int) -> None:
        self.mon.stop_tracing()  # on_before_backward

    def before_optimizer(self, step: int) -> None:
        if self.detail:
            self.mon.measure_param_grads()  # on_before_optimizer_step

    def after(self, step: int) -> None:
        self.mon.end_step()
        if self.due:
            self.mon.snapshot(step=step)



class FastaiStats(Bare):
    """fastai's ActivationStats (callback/hook.py), default: every module with parameters."""

    name = "fastai"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.history: list[list[tuple[float, float, float]]] = []
        self.current: list[tuple[float, float, float]] = []
        self.mods = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
        self.handles: list = []

    def attach(self) -> None:
        self.handles = [m.register_forward_hook(self.hook) for m in self.mods]

    def detach(self) -> None:
        for h in self.handles:
            h.remove()

    def hook(self, module: nn.Module, args: Any, out: torch.Tensor) -> None:
        if not module.training:
            return
        o = (out[0] if isinstance(out, tuple) else out).detach().float()  # attention returns a tuple
        self.current.append((o.mean().item(), o.std().item(), (o <= 0.05).long().sum().item() / o.numel()))

    def after(self, step: int) -> None:
        self.history.append(self.current)
        self.current = []



class Naive(Bare):
    name = "naive"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.rates: list[float] = []
        self.acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.GELU))]
        self.handles: list = []

    def attach(self) -> None:
        hook = lambda m, a, o: self.rates.append((o > 0).float().mean().item())  # noqa: E731
        self.handles = [m.register_forward_hook(hook) for m in self.acts]

    def detach(self) -> None:
        for h in self.handles:
            h.remove()


def synchronize(model: nn.Module) -> None:
    """Wait for the model's device (a no-op on the CPU): a timed block must include its kernels."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_step(model: nn.Module, opt: torch.optim.Optimizer, batch: tuple, variant: Bare) -> None:
    """One training step with ``variant``'s calls around it (the same for every variant, bare included)."""
    step = variant.step
    x, y = batch
    variant.before(step)
    loss = F.cross_entropy(model(x), y)
    variant.after_forward(step)
    loss.backward()
    variant.before_optimizer(step)
    opt.step()
    opt.zero_grad(set_to_none=True)
    variant.after(step)
    variant.step += 1


def run_steps(model: nn.Module, opt: torch.optim.Optimizer, batches: list, variant: Bare, steps: int) -> float:
    """``steps`` training steps with ``variant``'s hooks attached; returns seconds."""
    variant.attach()
    synchronize(model)
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step(model, opt, batches[variant.step % len(batches)], variant)
    synchronize(model)
    elapsed = time.perf_counter() - t0
    variant.detach()
    return elapsed


# ---------------------------------------------------------------------------------------- Lightning
def run_lightning(
    model: nn.Module, batches: list, interval: int | None, steps: int, warmup: int = WARMUP,
    tensorboard: bool = False, callback_class: type | None = None,
) -> float:
    """Seconds for ``steps`` Lightning steps after ``warmup``; ``interval`` None: no callback.
    ``tensorboard``: a TensorBoardLogger in a temporary folder (else no logger)."""
    import tempfile

    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    from act_diagnostics.callbacks.pl_callback import ActivationDiagnostics

    callback = callback_class or ActivationDiagnostics  # compare.py passes another version's

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.model(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Clock(pl.Callback):
        start = end = 0.0

        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            if trainer.global_step == warmup:
                synchronize(model)
                self.start = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            synchronize(model)
            self.end = time.perf_counter()

    clock = Clock()
    callbacks: list = [clock]
    if interval is not None:
        # warn=False: the benchmark's default-initialised MLP has born-dead units (a true finding)
        # and the warnings would only clutter the output; the rules still run.
        callbacks.insert(0, quiet_callback(callback, interval))
    accelerator = "gpu" if next(model.parameters()).is_cuda else "cpu"
    with tempfile.TemporaryDirectory() as log_dir:
        logger = TensorBoardLogger(log_dir, name="bench") if tensorboard else False
        trainer = pl.Trainer(accelerator=accelerator, devices=1, max_steps=warmup + steps, logger=logger, callbacks=callbacks,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
        trainer.fit(Module(), loader)
    return clock.end - clock.start


def quiet_callback(callback_class: type, interval: int) -> Any:
    """``callback_class`` logging every ``interval`` steps, without report, table or warnings. The
    class may be an earlier version's (compare.py), whose constructor took flat keywords."""
    package = next(c.__module__ for c in callback_class.__mro__ if ".callbacks." in c.__module__).split(".callbacks.")[0]
    try:
        options = importlib.import_module(f"{package}.callbacks.options")
    except ImportError:  # a version before the option groups
        return callback_class(log_every_n_steps=interval, report=False, verbose=False, warn=False)
    return callback_class(log_every_n_steps=interval, verbose=False, outputs=options.OutputOptions(report=False),
                          rules=options.RuleOptions(warn=False))


# ---------------------------------------------------------------------------------------- driver
def measure(
    model_name: str, rounds: int, with_lightning: bool, windows: int = 1, device: str = "cpu"
) -> dict[str, list[float]]:
    build, n_every = MODELS[model_name]
    torch.manual_seed(0)
    model, make_batch = build()
    model.to(device)
    batches = [tuple(t.to(device) for t in make_batch()) for _ in range(4)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    # (timed steps, variants): the default interval needs a window holding exactly one log step.
    every: list[Callable[[], Bare]] = [lambda: Act(model, 1), lambda: FastaiStats(model)]
    if any(isinstance(m, (nn.ReLU, nn.GELU)) for m in model.modules()):
        every.append(lambda: Naive(model))
    groups: list[tuple[int, int, list[Callable[[], Bare]]]] = [
        (n_every, WARMUP, every),
        (
            windows * DEFAULT_INTERVAL,
            STEADY_WARMUP,
            [
                lambda: Act(model, DEFAULT_INTERVAL, measure_every=None),
                lambda: Act(model, DEFAULT_INTERVAL, measure_every=1),
            ],
        ),
    ]
    ratios: dict[str, list[float]] = {}
    for r in range(rounds):
        for steps, warmup, makers in groups:
            variants = [Bare(model)] + [make() for make in makers]
            k = r % len(variants)
            variants = variants[k:] + variants[:k]  # rotate: no variant always runs first
            for v in variants:  # untimed: structure learning and the pre-flight snapshot
                run_steps(model, opt, batches, v, warmup)
            # Blocks of ``BLOCK`` steps, variants interleaved, so load from other users of a shared
            # machine falls on all of them alike; each variant's step count (and so its schedule
            # of log steps) continues across blocks.
            times = dict.fromkeys((v.name for v in variants), 0.0)
            for _ in range(steps // BLOCK):
                for v in variants:
                    times[v.name] += run_steps(model, opt, batches, v, BLOCK)
            for name, t in times.items():
                if name != "bare":
                    ratios.setdefault(name, []).append(t / times["bare"])
        if with_lightning:
            for tb in (False, True):
                pl_runs = (("every", 1, n_every, WARMUP), ("default", DEFAULT_INTERVAL, windows * DEFAULT_INTERVAL, STEADY_WARMUP))
                for kind, interval, steps, warmup in pl_runs:
                    label = f"PL{'+TB' if tb else ''} {kind}"
                    pair = [("bare", None), (label, interval)]
                    if r % 2:
                        pair.reverse()
                    t = {name: run_lightning(model, batches, iv, steps, warmup, tensorboard=tb) for name, iv in pair}
                    ratios.setdefault(label, []).append(t[label] / t["bare"])
        print(f"  {model_name} round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in ratios.items()), flush=True)
    return ratios


def _quiet_lightning() -> None:
    """Lightning's start-up banners and tips would bury the figures."""
    import logging

    import pytorch_lightning  # noqa: F401 - it sets its loggers to INFO on import: import first

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-lightning", action="store_true", help="skip the Lightning-trainer variant")
    parser.add_argument("--windows", type=int, default=1, help="timed windows of 50 steps per round at the default interval")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    _quiet_lightning()
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"{args.threads} threads"
    print(f"torch {torch.__version__}, {args.device} ({where}), {args.rounds} rounds, warm-up {WARMUP} steps", flush=True)
    results = {
        m: measure(m, args.rounds, with_lightning=(m == "mlp" and not args.no_lightning), windows=args.windows, device=args.device)
        for m in args.models
    }
    names = ["act every", "act default", "act default /1", "PL every", "PL default", "PL+TB every", "PL+TB default", "fastai", "naive"]
    print("\n| variant | " + " | ".join(args.models) + " |")
    print("|---|" + "---|" * len(args.models))
    for name in names:
        cells = []
        for m in args.models:
            v = results[m].get(name)
            cells.append(f"{statistics.median(v):.3f} ({min(v):.2f}-{max(v):.2f}, {len(v)})" if v else "n/a")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
