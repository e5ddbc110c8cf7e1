"""act_diagnostics: activation diagnostics for PyTorch Lightning (and plain torch)."""

from act_diagnostics.core import ActivationMonitor, MonitorConfig, Site, SiteStats, Snapshot

__version__ = "0.1.0"
__all__ = ["ActivationMonitor", "MonitorConfig", "Site", "SiteStats", "Snapshot", "__version__"]
