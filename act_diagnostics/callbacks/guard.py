"""Training never breaks because of diagnostics: hooks guarded, set-ups they cannot serve declined.

An internal error in a hook disables the callback for the run with one :class:`MonitorFailure`
warning; a set-up the diagnostics cannot watch (a compiled model) switches them off with one
:class:`UnsupportedSetup` warning. Either way training goes on without them.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from act_diagnostics.callbacks import compat
from act_diagnostics.core.monitor import MonitorFailure

P = ParamSpec("P")
R = TypeVar("R")

COMPILED = (
    "the model (or a submodule) is torch.compile'd: dynamo would trace the diagnostics' hooks "
    "into the graph and recompile as their state changes, or ignore them "
    "(pytorch/pytorch#117758), so act_diagnostics is off for this run. Run a few hundred "
    "steps uncompiled with diagnostics to check the activations, then compile."
)


class UnsupportedSetup(RuntimeWarning):
    """Issued once when diagnostics switch themselves off for a set-up they cannot watch."""


def guarded(method: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[Any, P], R | None]:
    """Run a callback method unless the callback is disabled (then it returns None); an internal
    error disables it (``self._disable(exc)``) instead of reaching the training loop."""

    @functools.wraps(method)
    def wrapper(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R | None:
        if self._disabled:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - training must never break because of diagnostics
            self._disable(exc)
            return None

    return wrapper


def warn_disabled(exc: BaseException) -> None:
    warnings.warn(
        f"act_diagnostics disabled itself after an internal error ({type(exc).__name__}: {exc}); "
        "training continues without activation diagnostics.",
        MonitorFailure,
        stacklevel=5,  # the Lightning hook's caller: this, _disable, the guard, the hook
    )


def warn_unsupported(why: str) -> None:
    warnings.warn(f"act_diagnostics: {why}", UnsupportedSetup, stacklevel=4)


def how_it_stopped(
    trainer: Any, exception: BaseException, step: int | None, in_step: bool, scheduled: bool, measured: bool
) -> dict[str, Any]:
    """How a run that raised ended, for the report: ``step`` (None: before the first step), where,
    and whether the schedule measured the failing step (``scheduled``) and it ran (``measured``)."""
    text = f"{type(exception).__name__}: {exception}" if str(exception) else type(exception).__name__
    where = "training step" if in_step else str(compat.running_stage(trainer) or "fit")  # e.g. "validate"
    return {"step": step, "exception": text[:500], "where": where, "scheduled": bool(scheduled), "measured": bool(measured)}
