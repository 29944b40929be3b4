"""The metrics exporters of a node, started and stopped with it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from amoc.config import Config, Param, non_negative_ms, optional_port, optional_text

if TYPE_CHECKING:
    from amoc.metrics.registry import Registry

log = logging.getLogger("amoc.metrics")


def _port(value: Any) -> int:
    port = optional_port(value)
    if port is None or port == 0:
        raise ValueError("must be a port between 1 and 65535")
    return port


def _prefix(value: Any) -> str:
    text = optional_text(value) or ""
    if any(c.isspace() for c in text) or text.startswith(".") or text.endswith("."):
        raise ValueError("must be dotted words without spaces, e.g. 'amoc.run1'")
    return text


def _interval(value: Any) -> float | int:
    value = non_negative_ms(value)
    if value < 100:
        raise ValueError("must be at least 100 ms")
    return value


PARAMETERS: tuple[Param, ...] = tuple(
    # All read once when the exporters start: a change needs a restart of the node.
    Param(name, default, description, verify, start_only=True)
    for name, default, description, verify in (
        ("graphite_host", None, "carbon host for metrics (None: no Graphite)", optional_text),
        ("graphite_port", 2003, "carbon plaintext port", _port),
        ("graphite_prefix", "amoc", "prefix of every Graphite series", _prefix),
        ("graphite_interval", 5000, "ms between two reports to Graphite", _interval),
        (
            "graphite_events_url",
            None,
            "graphite-web events URL for annotations, e.g. http://127.0.0.1/events/ "
            "(user:password@ in it is shown as ***)",
            optional_text,
        ),
        ("prometheus_host", "127.0.0.1", "address of the /metrics endpoint", optional_text),
        ("prometheus_port", None, "port of the /metrics endpoint (None: off)", optional_port),
    )
)


class MetricsService:
    """Runs the exporters that the node's configuration asks for."""

    def __init__(self, config: Config, registry: Registry | None = None) -> None:
        self.config = config
        self._registry = registry
        self.graphite: Any = None
        self.prometheus: Any = None

    @property
    def registry(self) -> Registry:
        """The registry exported (the node's own by default)."""
        if self._registry is None:
            from amoc.metrics import REGISTRY

            self._registry = REGISTRY
        return self._registry

    async def start(self) -> None:
        """Start Graphite reporting and the Prometheus endpoint where configured."""
        from amoc.metrics.graphite import GraphiteReporter
        from amoc.metrics.prometheus import PrometheusEndpoint

        self.config.declare(PARAMETERS)
        values = self.config.resolve(PARAMETERS)
        if values["graphite_host"]:
            self.graphite = GraphiteReporter(
                self.registry,
                host=values["graphite_host"],
                port=values["graphite_port"],
                prefix=values["graphite_prefix"],
                interval=values["graphite_interval"] / 1000,
                events_url=values["graphite_events_url"],
            )
            self.graphite.start()
        if values["prometheus_port"] is not None:
            self.prometheus = PrometheusEndpoint(
                self.registry, values["prometheus_host"] or "127.0.0.1", values["prometheus_port"]
            )
            await self.prometheus.start()

    async def stop(self) -> None:
        """Send what is left and close the endpoints."""
        if self.graphite is not None:
            await self.graphite.stop()
            self.graphite = None
        if self.prometheus is not None:
            await self.prometheus.stop()
            self.prometheus = None
