"""The one seam between a node's metrics and a place they go (Graphite, Prometheus, ...).

A new exporter is one class with these four members, and one line in
`amoc.metrics.service.EXPORTERS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

if TYPE_CHECKING:
    from amoc.config import Param
    from amoc.metrics.registry import Registry


class Exporter(Protocol):
    """Sends or serves a registry's metrics from the node's start to its stop."""

    # Its settings, read once when the node starts (declare them start_only).
    PARAMETERS: ClassVar[tuple[Param, ...]]

    @classmethod
    def from_settings(cls, registry: Registry, values: Mapping[str, Any]) -> Self | None:
        """An exporter of `registry` as the resolved settings ask, or None when they leave it
        off (`values` holds at least every name in PARAMETERS)."""
        ...

    async def start(self) -> None:
        """Begin (inside the running loop); ConfigError when the settings cannot work."""
        ...

    async def stop(self) -> None:
        """Send what is left and release what `start` took."""
        ...
