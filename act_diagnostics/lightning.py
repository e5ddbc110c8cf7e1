"""The ``lightning.pytorch`` flavour: ``from act_diagnostics.lightning import ActivationDiagnostics``."""

from act_diagnostics.callbacks.lightning_callback import ActivationDiagnostics

__all__ = ["ActivationDiagnostics"]
