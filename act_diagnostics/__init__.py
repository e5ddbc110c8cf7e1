"""act_diagnostics: activation diagnostics for PyTorch Lightning (and plain torch).

``ActivationDiagnostics`` is the ``pytorch_lightning`` callback (or the ``lightning.pytorch`` one
when only the ``lightning`` package is installed); ``act_diagnostics.lightning.ActivationDiagnostics``
is always the ``lightning.pytorch`` flavour. ``ActivationMonitor`` is the torch-only API.
"""

from __future__ import annotations

from typing import Any

from act_diagnostics.core import ActivationMonitor, MonitorConfig, MonitorFailure, Site, SiteStats, Snapshot, UnmeasuredModules

__version__ = "0.1.0"
__all__ = [
    "ActivationDiagnostics",
    "ActivationMonitor",
    "ActivationWarning",
    "Finding",
    "MonitorConfig",
    "MonitorFailure",
    "MonitorOptions",
    "OutputOptions",
    "RuleOptions",
    "Site",
    "SiteStats",
    "Snapshot",
    "UnmeasuredModules",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # Lazy: importing act_diagnostics must not import Lightning (or need both flavours).
    if name == "ActivationDiagnostics":
        # The pytorch_lightning class, or the lightning one where that package is missing.
        ActivationDiagnostics: type  # noqa: N806 - the class, as the flavour modules name it
        try:
            from act_diagnostics.callbacks.pl_callback import ActivationDiagnostics
        except ImportError:
            from act_diagnostics.callbacks.lightning_callback import ActivationDiagnostics
        return ActivationDiagnostics
    if name in ("MonitorOptions", "OutputOptions", "RuleOptions"):
        from act_diagnostics.callbacks import options

        return getattr(options, name)
    if name in ("ActivationWarning", "Finding"):
        from act_diagnostics import rules

        return getattr(rules, name)
    raise AttributeError(f"module 'act_diagnostics' has no attribute {name!r}")
