"""How the monitor is put together: small parts on one base that declares the state they share,
each touching only its own private state and that shared state (checked on the sources, so a new
cross-part reach fails here)."""

from __future__ import annotations

import re
from pathlib import Path

import torch.nn as nn

from act_diagnostics.core import ActivationMonitor
from act_diagnostics.core.monitor_state import MonitorState

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
    *parts, base, _ = ActivationMonitor.__mro__[1:]
    assert {cls.__module__.rsplit(".", 1)[-1] for cls in parts} == set(PARTS)
    assert base is MonitorState and all(MonitorState in cls.__bases__ for cls in parts)


def test_the_shared_state_is_declared_only() -> None:
    # Plain annotations: no property, descriptor or class default, so a hook reads the shared state
    # from the instance's dict as it would on a single class.
    declared = MonitorState.__annotations__
    assert {"enabled", "detail", "learning_structure", "activation_depth", "_tracer_entered"} <= set(declared)
    assert not set(declared) & set(vars(MonitorState))
    # Everything declared is set up by the time the monitor is built (by it or by its owning part).
    monitor = ActivationMonitor(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    assert [name for name in declared if name not in vars(monitor)] == []


def test_each_part_touches_only_its_own_and_the_shared_private_state() -> None:
    monitor = _source("monitor")
    init = monitor[monitor.index("def __init__") : monitor.index("def __reduce__")]
    # The shared private state: declared on the parts' base, set up by the monitor.
    shared = {name for name in MonitorState.__annotations__ if name.startswith("_")}
    assert {"_names", "_facts", "_tracer", "_training"} <= shared
    assert set(_ASSIGNED.findall(init)) == shared
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
