"""What the monitor says when it cannot measure: the warnings it issues and the error a bad
setting raises inside a hook. Warnings come from rank zero only under torch.distributed."""

from __future__ import annotations

import torch


class MonitorFailure(RuntimeWarning):
    """Issued once when an internal error disables the monitor; training goes on."""


class SettingError(ValueError):
    """A setting that proves wrong only on the model's outputs (``unit_dim`` out of range for a
    site): raised inside a hook, it disables the monitor with a warning that names the setting."""


class UnmeasuredModules(UserWarning):
    """Issued once at attach for submodules that cannot be measured (TorchScript: no Python hooks)."""


def rank_zero() -> bool:
    """Whether this process should warn: warnings come from rank zero only under torch.distributed."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def failure_message(exc: BaseException) -> str:
    """The one warning a disabled monitor issues: what to change for a bad setting, else a bug report."""
    if isinstance(exc, SettingError):  # the user's setting, not our bug: say what to change
        return f"act_diagnostics is off for this run: {exc}. Training continues without activation diagnostics."
    return (
        f"act_diagnostics disabled itself after an internal error ({type(exc).__name__}: {exc}); "
        "training continues without activation diagnostics. Please report this with the model "
        "that triggered it."
    )
