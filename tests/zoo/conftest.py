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


def _code_under_test_from_pythonpath() -> None:
    """tests/conftest.py puts this checkout first on sys.path. A checkout named in PYTHONPATH goes
    before it, so that another tree's code can be run against this zoo:
    ``cd <other checkout> && PYTHONPATH=$PWD python -m pytest <this checkout>/tests/zoo``."""
    for entry in reversed([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]):
        root = os.path.abspath(entry)
        if os.path.isfile(os.path.join(root, "act_diagnostics", "__init__.py")):
            if root in sys.path:
                sys.path.remove(root)
            sys.path.insert(0, root)
            loaded = sys.modules.get("act_diagnostics")
            if loaded is not None and os.path.dirname(os.path.dirname(os.path.abspath(loaded.__file__))) == root:
                continue  # already this checkout's: re-importing would leave earlier test modules with other classes
            for name in [n for n in sys.modules if n == "act_diagnostics" or n.startswith("act_diagnostics.")]:
                del sys.modules[name]


_code_under_test_from_pythonpath()

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


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _TIMINGS:
        return
    import act_diagnostics

    terminalreporter.section(f"zoo: seconds in fit per run (act_diagnostics from {Path(act_diagnostics.__file__).parent.parent})")
    for name, seconds in sorted(_TIMINGS.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:6.1f}  {name}")
    terminalreporter.write_line(f"{sum(_TIMINGS.values()):6.1f}  total")
