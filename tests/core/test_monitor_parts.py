"""How the monitor is put together: small parts, each touching only its own private state and
the step state the monitor shares (checked on the sources, so a new cross-part reach fails here)."""

from __future__ import annotations

import re
from pathlib import Path

from act_diagnostics.core import ActivationMonitor

CORE = Path(__file__).resolve().parents[2] / "act_diagnostics" / "core"
PARTS = ("lifecycle", "discovery", "calls", "consumers", "gradients", "reruns", "windows")
_ASSIGNED = re.compile(r"self\.(_[a-z_]+)(?::[^=\n]+)? = ")


def _source(name: str) -> str:
    return (CORE / f"{name}.py").read_text()


def test_every_core_module_is_small() -> None:
    sizes = {path.name: len(path.read_text().splitlines()) for path in CORE.glob("*.py")}
    assert sizes["monitor.py"] < 300
    assert all(n < 500 for n in sizes.values()), sizes


def test_the_monitor_is_made_of_the_named_parts() -> None:
    modules = {cls.__module__.rsplit(".", 1)[-1] for cls in ActivationMonitor.__mro__[1:-1]}
    assert modules == set(PARTS)


def test_each_part_touches_only_its_own_and_the_shared_private_state() -> None:
    monitor = _source("monitor")
    init = monitor[monitor.index("def __init__") : monitor.index("def __reduce__")]
    shared = set(_ASSIGNED.findall(init))
    assert {"_names", "_facts", "_tracer", "_training"} <= shared
    methods = {m for part in (*PARTS, "monitor") for m in re.findall(r"def (_[a-z_]+)\(", _source(part))}
    for part in (*PARTS, "monitor"):
        source = _source(part)
        own = set(_ASSIGNED.findall(source))
        reached = set(re.findall(r"self\.(_[a-z_]+)", source)) - own - shared - methods
        assert not reached, f"{part}.py reaches into another part's state: {sorted(reached)}"


def test_no_two_parts_own_the_same_state() -> None:
    owners: dict[str, str] = {}
    for part in PARTS:
        source = _source(part)
        start = source.find("def _init_")
        end = source.find("\n    def ", start + 1)
        for attr in _ASSIGNED.findall(source[start:end]):
            assert attr not in owners, f"{attr} set up by {owners[attr]}.py and {part}.py"
            owners[attr] = part
    assert owners["_consumers_ok"] == "consumers" and owners["_awaiting_grad"] == "reruns"
