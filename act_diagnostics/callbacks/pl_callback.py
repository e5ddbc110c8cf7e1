"""ActivationDiagnostics for the ``pytorch_lightning`` package."""

from __future__ import annotations

from pytorch_lightning import Callback

from act_diagnostics.callbacks._core import DiagnosticsCallbackCore
from act_diagnostics.callbacks._docstring import CALLBACK_DOC


class ActivationDiagnostics(DiagnosticsCallbackCore, Callback):
    __doc__ = CALLBACK_DOC
