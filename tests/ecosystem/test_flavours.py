"""Both Lightning flavours: one thin class each, a tiny Trainer run each, and neither package required."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.ecosystem.conftest import callback_class, fit, flavour_module, make_trainer, tiny_module_class

ROOT = Path(__file__).resolve().parents[2]


def test_each_flavour_class_subclasses_its_own_callback(flavour: str) -> None:
    L = flavour_module(flavour)
    cls = callback_class(flavour)
    assert issubclass(cls, L.Callback)
    other = "lightning.pytorch" if flavour == "pytorch_lightning" else "pytorch_lightning"
    try:
        other_callback = flavour_module(other).Callback
    except pytest.skip.Exception:
        return
    assert not issubclass(cls, other_callback)


def test_public_import_paths() -> None:
    import act_diagnostics
    import act_diagnostics.lightning
    from act_diagnostics.callbacks import lightning_callback, pl_callback

    assert act_diagnostics.ActivationDiagnostics is pl_callback.ActivationDiagnostics
    assert act_diagnostics.lightning.ActivationDiagnostics is lightning_callback.ActivationDiagnostics


def test_tiny_trainer_run(flavour: str, tmp_path: Path) -> None:
    callback = callback_class(flavour)(log_every_n_steps=4, verbose=False)
    trainer = make_trainer(flavour, tmp_path, callbacks=[callback])
    fit(trainer, tiny_module_class(flavour)())
    assert callback.failure is None
    assert callback.last_snapshot is not None
    names = set(callback.last_snapshot.stats)
    assert {"act", ":tanh"} <= names, names  # a module site and a functional site (root forward)
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0}).Reload()
    assert "act/act/firing_rate" in acc.Tags()["scalars"]
    assert [e.step for e in acc.Scalars("act/act/firing_rate")][:3] == [0, 3, 7]


# Each snippet runs in a fresh interpreter where one package is made unimportable.
_WITHOUT_LIGHTNING = """
import sys
sys.modules["lightning"] = None  # `import lightning` now raises ImportError
import act_diagnostics
from act_diagnostics import factory
cls = act_diagnostics.ActivationDiagnostics
import pytorch_lightning as pl
assert issubclass(cls, pl.Callback), cls.__mro__
assert factory.pytorch_lightning_callbacks() == []
try:
    import act_diagnostics.lightning
except ImportError:
    pass
else:
    raise AssertionError("act_diagnostics.lightning imported without lightning")
assert not any(m == "lightning" or m.startswith("lightning.") for m in sys.modules if sys.modules[m] is not None)
print("OK", cls.__module__)
"""

_WITHOUT_PYTORCH_LIGHTNING = """
import sys, warnings
sys.modules["pytorch_lightning"] = None
import torch
import act_diagnostics
from act_diagnostics import factory
cls = act_diagnostics.ActivationDiagnostics
import lightning.pytorch as L
assert issubclass(cls, L.Callback), cls.__mro__
assert factory.lightning_callbacks() == []
from tests.ecosystem.conftest import tiny_module_class, loader
cb = cls(log_every_n_steps=2, verbose=False, outputs=act_diagnostics.OutputOptions(report=False))
trainer = L.Trainer(max_steps=4, logger=False, callbacks=[cb], enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, accelerator="cpu")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    trainer.fit(tiny_module_class("lightning.pytorch")(), loader(n=64))
assert cb.failure is None and cb.last_snapshot is not None
assert not any(m == "pytorch_lightning" or m.startswith("pytorch_lightning.") for m in sys.modules if sys.modules[m] is not None)
print("OK", cls.__module__)
"""


@pytest.mark.slow  # a fresh interpreter per flavour
@pytest.mark.parametrize(
    ("snippet", "needs", "expected_module"),
    [
        (_WITHOUT_LIGHTNING, "pytorch_lightning", "act_diagnostics.callbacks.pl_callback"),
        (_WITHOUT_PYTORCH_LIGHTNING, "lightning.pytorch", "act_diagnostics.callbacks.lightning_callback"),
    ],
    ids=["without-lightning", "without-pytorch_lightning"],
)
def test_one_flavour_is_enough(snippet: str, needs: str, expected_module: str) -> None:
    flavour_module(needs)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(snippet)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"OK {expected_module}" in proc.stdout
