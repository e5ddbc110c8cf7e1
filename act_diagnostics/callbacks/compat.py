"""Every read of Lightning's objects that is private or changes between versions, in one place.

The callback reads the trainer, its loops, strategy, precision plugin and loggers only through
these functions, so a Lightning upgrade that renames something breaks this file alone (and
tests/ecosystem covers both flavours). Each function is duck-typed: it works for
``pytorch_lightning`` and ``lightning.pytorch`` alike, and falls back to a safe answer when an
attribute is missing (a trainer stub in a test, an older or newer Lightning).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import BatchSampler, DistributedSampler, RandomSampler

from act_diagnostics.core.monitor import compiled_modules
from act_diagnostics.outputs.tensorboard import is_tensorboard_logger

# Lightning's own default of Trainer(log_every_n_steps=...).
LIGHTNING_LOG_EVERY_N_STEPS = 50


def step_index(trainer: Any) -> int:
    """The current step as Lightning's loggers number it.

    Lightning logs with ``fit_loop.epoch_loop._batches_that_stepped`` (batches that ran an optimizer
    step; private), not ``global_step``, which counts optimizer steps and so moves by two per batch
    with two optimizers under manual optimisation.
    """
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    value = getattr(loop, "_batches_that_stepped", None)
    return value if isinstance(value, int) else global_step(trainer)


def global_step(trainer: Any) -> int:
    """Optimizer steps taken so far (moves when a batch ran an optimizer step)."""
    return int(getattr(trainer, "global_step", 0) or 0)


def skips_backward(trainer: Any) -> bool:
    """StochasticWeightAveraging's last epoch only recomputes BatchNorm statistics, with no backward
    (the private ``fit_loop._skip_backward``, the same on every rank): its batches are no step."""
    return bool(getattr(getattr(trainer, "fit_loop", None), "_skip_backward", False))


def grad_scale(trainer: Any) -> Callable[[], Any] | None:
    """A function returning the GradScaler's current scale (float16 AMP), or None without one.

    The scale is the private device tensor ``scaler._scale``, updated in place: reading it costs no
    host sync, where ``scaler.get_scale()`` would copy it to the host.
    """
    precision = getattr(getattr(trainer, "strategy", None), "precision_plugin", None)
    scaler = getattr(precision, "scaler", None)
    if scaler is None:
        return None
    return lambda: getattr(scaler, "_scale", None)


def fitting(trainer: Any) -> bool:
    """The trainer function running is ``fit`` (a validation inside fit is not a trainer.validate)."""
    return getattr(getattr(trainer, "state", None), "fn", None) == "fit"


def running_stage(trainer: Any) -> str | None:
    """The stage running, e.g. ``"train"``, ``"validate"`` (``trainer.state.stage.value``)."""
    stage = getattr(getattr(trainer, "state", None), "stage", None)
    return getattr(stage, "value", None)


def sanity_checking(trainer: Any) -> bool:
    """The validation batches run before fit (``num_sanity_val_steps``)."""
    return bool(getattr(trainer, "sanity_checking", False))


def fast_dev_run(trainer: Any) -> bool:
    """A smoke test: Lightning writes no logs for it."""
    return bool(getattr(trainer, "fast_dev_run", False))


def loggers(trainer: Any) -> list[Any]:
    return list(getattr(trainer, "loggers", []) or [])


def log_interval(trainer: Any) -> int:
    """``Trainer(log_every_n_steps=...)``; 0 or unset (``barebones=True``) reads as Lightning's default."""
    return max(1, int(getattr(trainer, "log_every_n_steps", LIGHTNING_LOG_EVERY_N_STEPS) or LIGHTNING_LOG_EVERY_N_STEPS))


def log_dir(trainer: Any) -> str:
    """Where the run's logs go: the TensorBoard logger's log_dir, else the first logger's log_dir
    (or save_dir), else the trainer's root dir.

    Not ``trainer.log_dir``: that property broadcasts from rank zero (a collective), and the report
    is written on rank zero alone, so calling it there would leave rank zero waiting for the others.
    The TensorBoard logger's directory comes first so the report lies beside the event files, where
    ``act-diagnostics report`` reads both (a CSVLogger listed first has its own version folder).
    """
    found = loggers(trainer)
    for logger in [lg for lg in found if is_tensorboard_logger(lg)] + found:
        value = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        if value:
            return str(value)
    return str(getattr(trainer, "default_root_dir", None) or ".")


def is_compiled(pl_module: Any) -> bool:
    """True for a LightningModule passed to fit as ``torch.compile(model)`` (Lightning unwraps it and
    keeps the private ``_compiler_ctx``) or one holding a compiled submodule."""
    if getattr(pl_module, "_compiler_ctx", None):
        return True
    return isinstance(pl_module, torch.nn.Module) and bool(compiled_modules(pl_module))


def automatic_optimization(pl_module: Any) -> bool:
    return bool(getattr(pl_module, "automatic_optimization", True))


def is_global_zero(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_global_zero", True))


def world_size(trainer: Any) -> int:
    return int(getattr(trainer, "world_size", 1) or 1)


def all_gather(trainer: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``t -> (world_size, N)`` through the trainer's strategy (a collective)."""
    world, strategy = world_size(trainer), trainer.strategy
    return lambda t: strategy.all_gather(t).reshape(world, -1)


def root_device(trainer: Any) -> torch.device:
    """The device the strategy's collectives run on."""
    return trainer.strategy.root_device


def epoch(trainer: Any) -> int | None:
    """The training epoch running (``trainer.current_epoch``), None on a stub."""
    value = getattr(trainer, "current_epoch", None)
    return value if isinstance(value, int) else None


def train_rows(trainer: Any) -> int | None:
    """Rows of the training data set when each epoch draws every row once in a random order (a
    sized map-style data set under ``shuffle=True``, or Lightning's DistributedSampler shuffling);
    None otherwise: an iterable data set, sampling with replacement, a custom or several loaders,
    and file order (``shuffle=False``), where consecutive rows are no sample of the whole set."""
    loader = getattr(trainer, "train_dataloader", None)
    dataset, sampler = getattr(loader, "dataset", None), getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        return None
    if isinstance(sampler, RandomSampler) and (sampler.replacement or getattr(sampler, "_num_samples", None) is not None):
        return None
    if not (type(sampler) is RandomSampler or (type(sampler) is DistributedSampler and sampler.shuffle)):
        return None
    try:
        rows = len(dataset)  # type: ignore[arg-type]
    except TypeError:  # no __len__
        return None
    return rows if rows > 0 else None
