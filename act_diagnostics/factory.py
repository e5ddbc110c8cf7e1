"""Zero-code enable: Lightning's callback entry points, switched on by ``ACT_DIAGNOSTICS=1``.

Every ``Trainer`` loads the callback factories registered under the entry-point group of its
flavour (``pytorch_lightning.callbacks_factory`` or ``lightning.pytorch.callbacks_factory``;
see pyproject.toml). The factories here return ``[]`` unless the environment variable
``ACT_DIAGNOSTICS`` is set to an "on" value, so an installed act_diagnostics changes nothing by itself.

Values of ``ACT_DIAGNOSTICS``:

* ``1``, ``true``, ``yes``, ``on``: add ``ActivationDiagnostics()`` with its defaults to every Trainer.
* unset, empty, ``0``, ``false``, ``no``, ``off``: do nothing (the default).
* anything else: do nothing, and warn once that the value is not understood.

When the user also passed an ``ActivationDiagnostics`` (of either flavour) to the Trainer, by hand,
through ``LightningCLI`` or from ``LightningModule.configure_callbacks``, that one wins: the
automatic instance removes itself from ``trainer.callbacks`` in ``setup`` before measuring
anything, so exactly one instance runs. Until then it uses a distinct ``state_key`` (Lightning
refuses two stateful callbacks with the same key at Trainer init); once it knows it is alone it
uses the ordinary key, so its checkpoints resume with a hand-added callback and vice versa.

Neither Lightning package is imported here at module import time: each factory imports only its
own flavour.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from act_diagnostics.callbacks.hooks import LightningHooks

ENV_VAR = "ACT_DIAGNOSTICS"
ON_VALUES = frozenset({"1", "true", "yes", "on"})
OFF_VALUES = frozenset({"", "0", "false", "no", "off"})
AUTO_STATE_KEY_SUFFIX = "[auto]"

_warned_values: set[str] = set()


def enabled(environ: dict[str, str] | None = None) -> bool:
    """True when ``ACT_DIAGNOSTICS`` asks for the callback (see the module docstring for values)."""
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR, "").strip().lower()
    if value in ON_VALUES:
        return True
    if value not in OFF_VALUES and value not in _warned_values:
        _warned_values.add(value)
        warnings.warn(
            f"`{ENV_VAR}` must be one of {', '.join(sorted(ON_VALUES))} (on) or "
            f"{', '.join(repr(v) for v in sorted(OFF_VALUES))} (off), got {value!r}; act_diagnostics stays off.",
            UserWarning,
            stacklevel=2,
        )
    return False


class _AutoInstance(LightningHooks):
    """Mixin of the automatically added callback: steps aside for a hand-added one."""

    _auto_alone = False
    _flavour_class: type  # the flavour's ActivationDiagnostics, set by _auto_class

    @property
    def state_key(self) -> str:
        base = self._flavour_class.__qualname__
        return base if self._auto_alone else base + AUTO_STATE_KEY_SUFFIX

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        from act_diagnostics.callbacks._core import DiagnosticsCallbackCore

        others = [c for c in getattr(trainer, "callbacks", []) if c is not self and isinstance(c, DiagnosticsCallbackCore)]
        if others:
            # A new list: Lightning is iterating over the old one while it calls this hook.
            trainer.callbacks = [c for c in trainer.callbacks if c is not self]
            return
        self._auto_alone = True
        super().setup(trainer, pl_module, stage)


def _auto_class(flavour: str) -> type:
    """The automatic subclass of one flavour's callback (module-level name, so it pickles)."""
    name = {"pytorch_lightning": "AutoActivationDiagnostics", "lightning": "AutoLightningActivationDiagnostics"}[flavour]
    cls = globals().get(name)
    if cls is None:
        ActivationDiagnostics: type  # noqa: N806 - the class, as the flavour modules name it
        if flavour == "pytorch_lightning":
            from act_diagnostics.callbacks.pl_callback import ActivationDiagnostics
        else:
            from act_diagnostics.callbacks.lightning_callback import ActivationDiagnostics
        cls = type(
            name,
            (_AutoInstance, ActivationDiagnostics),
            {
                "__module__": __name__,
                "__qualname__": name,
                "__doc__": _AutoInstance.__doc__,
                "_flavour_class": ActivationDiagnostics,
            },
        )
        globals()[name] = cls
    return cls


def __getattr__(name: str) -> Any:
    # Unpickling (ddp_spawn) looks the automatic classes up by name.
    if name == "AutoActivationDiagnostics":
        return _auto_class("pytorch_lightning")
    if name == "AutoLightningActivationDiagnostics":
        return _auto_class("lightning")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pytorch_lightning_callbacks() -> list[Any]:
    """Entry point of ``pytorch_lightning.callbacks_factory``: ``[ActivationDiagnostics()]`` or ``[]``."""
    return [_auto_class("pytorch_lightning")()] if enabled() else []


def lightning_callbacks() -> list[Any]:
    """Entry point of ``lightning.pytorch.callbacks_factory``: ``[ActivationDiagnostics()]`` or ``[]``."""
    return [_auto_class("lightning")()] if enabled() else []
