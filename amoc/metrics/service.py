"""The metrics exporters of a node, started and stopped with it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from amoc.config import Config, Param
from amoc.metrics.exporter import Exporter
from amoc.metrics.graphite import GraphiteReporter
from amoc.metrics.prometheus import PrometheusEndpoint

if TYPE_CHECKING:
    from amoc.metrics.registry import Registry

log = logging.getLogger("amoc.metrics")

# Every kind of exporter a node can run, in the order they start (and their settings are
# listed); they stop in the reverse order.
EXPORTERS: tuple[type[Exporter], ...] = (GraphiteReporter, PrometheusEndpoint)

PARAMETERS: tuple[Param, ...] = tuple(p for kind in EXPORTERS for p in kind.PARAMETERS)


class MetricsService:
    """Runs the exporters that the node's configuration asks for."""

    def __init__(self, config: Config, registry: Registry | None = None) -> None:
        self.config = config
        self._registry = registry
        self.exporters: list[Exporter] = []  # the running ones, in start order

    @property
    def registry(self) -> Registry:
        """The registry exported (the node's own by default)."""
        if self._registry is None:
            from amoc.metrics import REGISTRY

            self._registry = REGISTRY
        return self._registry

    async def start(self) -> None:
        """Start every exporter the settings ask for (Graphite, Prometheus, ...)."""
        self.config.declare(PARAMETERS)
        values = self.config.resolve(PARAMETERS)
        for kind in EXPORTERS:
            exporter = kind.from_settings(self.registry, values)
            if exporter is not None:
                await exporter.start()
                self.exporters.append(exporter)

    async def stop(self) -> None:
        """Send what is left and close the endpoints."""
        while self.exporters:
            await self.exporters.pop().stop()
