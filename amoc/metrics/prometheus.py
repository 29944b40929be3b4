"""A Prometheus `/metrics` endpoint (text format 0.0.4) served by the node's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from amoc.config import Param, optional_port, optional_text
from amoc.errors import ConfigError
from amoc.metrics.histogram import describe
from amoc.metrics.registry import Registry

log = logging.getLogger("amoc.metrics.prometheus")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"))
_MAX_REQUEST = 8192


def metric_name(name: str) -> str:
    """`xmpp.ttd_ms` -> `amoc_xmpp_ttd_ms`."""
    return "amoc_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def render(registry: Registry) -> str:
    """The registry in Prometheus text format."""
    snap = registry.snapshot()
    out: list[str] = []
    for name, value in sorted(snap["counters"].items()):
        m = metric_name(name) + "_total"
        out += [f"# TYPE {m} counter", f"{m} {value}"]
    for name, value in sorted(snap["gauges"].items()):
        m = metric_name(name)
        out += [f"# TYPE {m} gauge", f"{m} {_number(value)}"]
    for name, hist in sorted(snap["histograms"].items()):
        m = metric_name(name)
        stats = describe(hist)
        out.append(f"# TYPE {m} summary")
        for label, key in QUANTILES:
            out.append(f'{m}{{quantile="{label}"}} {_number(stats[key])}')
        out += [f"{m}_sum {_number(hist['sum'])}", f"{m}_count {hist['count']}"]
    return "\n".join(out) + "\n"


class PrometheusEndpoint:
    """Serves GET /metrics on host:port (port 0: any free port, see `.port`)."""

    PARAMETERS: ClassVar[tuple[Param, ...]] = (
        # Read once when the node starts: a change needs a restart of the node.
        Param(
            "prometheus_host",
            "127.0.0.1",
            "address of the /metrics endpoint",
            optional_text,
            start_only=True,
        ),
        Param(
            "prometheus_port",
            None,
            "port of the /metrics endpoint (None: off)",
            optional_port,
            start_only=True,
        ),
    )

    def __init__(self, registry: Registry, host: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = registry
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None

    @classmethod
    def from_settings(cls, registry: Registry, values: Mapping[str, Any]) -> Self | None:
        """An endpoint on `prometheus_port`, or None when it is not set."""
        if values["prometheus_port"] is None:
            return None
        return cls(registry, values["prometheus_host"] or "127.0.0.1", values["prometheus_port"])

    async def start(self) -> None:
        """Listen, or raise ConfigError naming the address when it cannot."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise ConfigError(
                f"prometheus endpoint cannot listen on {self.host}:{self.port} "
                f"(prometheus_host/prometheus_port): {exc.strerror or exc}"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("prometheus metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if len(head) > _MAX_REQUEST:
                raise ValueError("request too large")
            method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body = "405 Method Not Allowed", "only GET /metrics\n"
            elif path != "/metrics":
                status, body = "404 Not Found", "see /metrics\n"
            else:
                status, body = "200 OK", render(self.registry)
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + (data if method != "HEAD" else b"")
            )
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            ConnectionError,
        ):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
