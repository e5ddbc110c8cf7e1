"""ActivationDiagnostics for the ``lightning`` package (``lightning.pytorch``)."""

from __future__ import annotations

from lightning.pytorch import Callback

from act_diagnostics.callbacks._core import DiagnosticsCallbackCore
from act_diagnostics.callbacks._docstring import CALLBACK_DOC


class ActivationDiagnostics(DiagnosticsCallbackCore, Callback):
    __doc__ = CALLBACK_DOC
