"""amoc.monitor: the servers under test, sampled onto the run's time axis.

- `spec`: the `monitor_hosts` setting read and checked (`SourceSpec`);
- `procfs`: /proc parsed, this machine's or a remote host's;
- `sources`: `LocalSource`, `SshSource` (one long-lived paramiko connection),
  `PrometheusSource` (a scrape);
- `service`: `Monitor`, the samplers with backoff, and what /metrics, the live view, the
  recorder and the capacity search read of them.
"""

from __future__ import annotations

from amoc.monitor.service import PARAMETERS, SERVER_METRICS, Monitor, server_values
from amoc.monitor.sources import MonitorError, SourceError
from amoc.monitor.spec import SourceSpec

__all__ = [
    "PARAMETERS",
    "SERVER_METRICS",
    "Monitor",
    "MonitorError",
    "SourceError",
    "SourceSpec",
    "server_values",
]
