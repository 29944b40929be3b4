"""amoc.metrics: counters, gauges and mergeable histograms, exported to Graphite and Prometheus.

from amoc import metrics
metrics.counter("xmpp.messages.sent").inc()
metrics.histogram("xmpp.ttd_ms").record(3.2)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from amoc.metrics.histogram import Histogram, describe
from amoc.metrics.registry import Counter, Gauge, Registry, merge, summary
from amoc.metrics.service import PARAMETERS, MetricsService

REGISTRY = Registry()


def counter(name: str) -> Counter:
    """The node's counter `name`."""
    return REGISTRY.counter(name)


def gauge(name: str) -> Gauge:
    """The node's gauge `name`."""
    return REGISTRY.gauge(name)


def histogram(name: str) -> Histogram:
    """The node's histogram `name`."""
    return REGISTRY.histogram(name)


def annotate(
    what: str, comment: str | None = None, tags: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Record an event; exporters send it to Graphite as an annotation."""
    return REGISTRY.annotate(what, comment, tags)


class MetricsTable(dict[str, Any]):
    """Metric name -> value (or count/mean/percentiles); prints as an aligned table."""

    def __repr__(self) -> str:
        if not self:
            return "no metrics yet"
        width = max(len(name) for name in self)
        lines = []
        for name in sorted(self):
            value = self[name]
            if isinstance(value, Mapping):
                shown = "  ".join(f"{k} {_figure(v)}" for k, v in value.items())
            else:
                shown = _figure(value)
            lines.append(f"{name.ljust(width)}  {shown}")
        return "\n".join(lines)


def _figure(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def show() -> MetricsTable:
    """The node's metrics now: counters, gauges, histogram percentiles, as a table."""
    return MetricsTable(summary(REGISTRY.snapshot()))


__all__ = [
    "PARAMETERS",
    "REGISTRY",
    "Counter",
    "Gauge",
    "Histogram",
    "MetricsService",
    "Registry",
    "annotate",
    "counter",
    "describe",
    "gauge",
    "histogram",
    "merge",
    "show",
    "summary",
]
