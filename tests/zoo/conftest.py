"""The model zoo (tests/zoo): standard architectures trained briefly through the callback.

Everything here carries the ``zoo`` marker (``pytest -m zoo`` runs only the zoo, ``-m "not zoo"``
leaves it out). Test modules skip when the zoo's packages (``pip install -e .[zoo]`` plus timm,
see scripts/zoo_setup.sh) are missing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# Offline, always: configs only, random weights, nothing from a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))

import torchvision_stand_in  # noqa: E402

if importlib.util.find_spec("timm") is not None:  # only where the zoo can run
    torchvision_stand_in.install()

_HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "zoo: the model zoo (standard architectures through the callback; needs the zoo extra)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.zoo)


_TIMINGS: dict[str, float] = {}


@pytest.fixture
def zoo_timings() -> dict[str, float]:
    """Seconds each zoo run spent in ``trainer.fit``, printed at the end of the session."""
    return _TIMINGS


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    if not _TIMINGS:
        return
    terminalreporter.section("zoo: seconds in fit per run")
    for name, seconds in sorted(_TIMINGS.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:6.1f}  {name}")
    terminalreporter.write_line(f"{sum(_TIMINGS.values()):6.1f}  total")
