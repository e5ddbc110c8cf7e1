"""Torch-only core: activation kinds, site discovery, on-device statistics, one-copy reduction."""

from act_diagnostics.core.config import MonitorConfig
from act_diagnostics.core.errors import MonitorFailure, UnmeasuredModules
from act_diagnostics.core.kinds import KINDS, ActivationKind
from act_diagnostics.core.monitor import ActivationMonitor
from act_diagnostics.core.sites import Site
from act_diagnostics.core.snapshot import LOGGED_STATS, SiteStats, Snapshot

__all__ = [
    "KINDS",
    "LOGGED_STATS",
    "ActivationKind",
    "ActivationMonitor",
    "MonitorConfig",
    "MonitorFailure",
    "Site",
    "SiteStats",
    "Snapshot",
    "UnmeasuredModules",
]
