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


def show() -> dict[str, Any]:
    """The node's metrics now: counters, gauges, histogram percentiles."""
    return summary(REGISTRY.snapshot())


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
