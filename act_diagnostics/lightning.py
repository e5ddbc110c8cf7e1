"""The ``lightning.pytorch`` flavour: ``from act_diagnostics.lightning import ActivationDiagnostics``."""

from act_diagnostics.callbacks.lightning_callback import ActivationDiagnostics
from act_diagnostics.callbacks.options import MonitorOptions, OutputOptions, RuleOptions

__all__ = ["ActivationDiagnostics", "MonitorOptions", "OutputOptions", "RuleOptions"]
