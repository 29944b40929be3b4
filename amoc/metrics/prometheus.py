"""A Prometheus `/metrics` endpoint (text format 0.0.4) served by the node's event loop.

Families are named as `amoc.metrics.promnames` says (counters `_total`, times in seconds,
histograms with `le` buckets). A master serves its cluster: every slave's series labelled by
its `node`, so `sum without (node)` is the cluster's figure."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

from amoc.config import Param, optional_port, optional_text
from amoc.errors import ConfigError
from amoc.metrics.histogram import GAMMA, ZERO
from amoc.metrics.promnames import Family, family
from amoc.metrics.registry import Registry

log = logging.getLogger("amoc.metrics.prometheus")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EVENTS = "amoc_last_event_timestamp_seconds"
EVENTS_HELP = (
    "when this node last recorded each kind of event (scenario_start, scenario_stop, "
    "node_down), seconds since the epoch"
)
_MAX_REQUEST = 8192
_SECTIONS = (("counters", "counter"), ("gauges", "gauge"), ("histograms", "histogram"))

Labels = tuple[tuple[str, str], ...]


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    shown = ",".join(f'{k}="{_escape(v)}"' for k, v in labels if v != "")
    return f"{{{shown}}}" if shown else ""


def bucket_counts(hist: Mapping[str, Any], bounds: Sequence[float], scale: float) -> list[int]:
    """Cumulative counts at or below each of `bounds` (and +Inf last) of a histogram
    snapshot, its values multiplied by `scale`.

    A log bucket (GAMMA**(i-1), GAMMA**i] goes whole to the first bound above its lower
    edge: a value on a bound is counted at that bound, one at most 2% above it may be too."""
    counts = [0] * (len(bounds) + 1)
    for index, n in hist["buckets"].items():
        i = int(index)
        if i == ZERO:
            counts[bisect.bisect_left(bounds, 0.0)] += n
        else:
            counts[bisect.bisect_right(bounds, GAMMA ** (i - 1) * scale)] += n
    return list(itertools.accumulate(counts))


class _Exposition:
    """The families of one scrape, each with its samples, in the order they appear."""

    def __init__(self) -> None:
        self.families: dict[str, tuple[Family, list[str]]] = {}
        self._clashes: set[str] = set()

    def add(self, fam: Family, lines: list[str]) -> None:
        found = self.families.setdefault(fam.name, (fam, []))
        if found[0].kind != fam.kind:
            if fam.name not in self._clashes:  # two internal names, one family: keep the first
                self._clashes.add(fam.name)
                log.warning("prometheus: %s is a %s and a %s; the %s is left out",
                            fam.name, found[0].kind, fam.kind, fam.kind)  # fmt: skip
            return
        found[1].extend(lines)

    def sample(self, fam: Family, labels: Labels, value: Any) -> None:
        name, scale = fam.name, fam.scale
        if fam.kind != "histogram":
            self.add(fam, [f"{name}{_labels(labels)} {_number(float(value) * scale)}"])
            return
        bounds = fam.buckets
        counts = bucket_counts(value, bounds, scale)
        les = [*(_number(b) for b in bounds), "+Inf"]
        lines = [
            f"{name}_bucket{_labels((*labels, ('le', le)))} {n}"
            for le, n in zip(les, counts, strict=True)
        ]
        lines.append(f"{name}_sum{_labels(labels)} {_number(value['sum'] * scale)}")
        lines.append(f"{name}_count{_labels(labels)} {value['count']}")
        self.add(fam, lines)

    def text(self) -> str:
        out: list[str] = []
        for name, (fam, lines) in self.families.items():
            out += [f"# HELP {name} {fam.help}", f"# TYPE {name} {fam.kind}", *lines]
        return "\n".join(out) + "\n"


def render(registry: Registry) -> str:
    """The registry in Prometheus text format: a series per node (label `node`; a master's
    slaves by their names), the running scenario as the label `scenario`, and this node's
    last event of each kind (`amoc_last_event_timestamp_seconds{what=...}`)."""
    nodes, scenario = registry.by_node()
    run: Labels = (("scenario", scenario),) if scenario else ()
    found: dict[tuple[str, str], Family] = {}
    expo = _Exposition()
    for section, kind in _SECTIONS:
        names = sorted({n for snap in nodes.values() for n in snap.get(section, {})})
        for name in names:
            fam = found.get((kind, name)) or found.setdefault((kind, name), family(kind, name))
            for node in sorted(nodes):
                value = nodes[node].get(section, {}).get(name)
                if value is not None:
                    expo.sample(fam, (("node", node), *run, *fam.labels), value)
    events = Family(EVENTS, "gauge", EVENTS_HELP)
    last: dict[str, float] = {}
    for event in list(registry.annotations):
        last[event["what"]] = max(last.get(event["what"], 0.0), event["when"])
    for what, when in sorted(last.items()):
        expo.sample(events, (("node", registry.node_name), *run, ("what", what)), when)
    for fam, labels, value in registry.collected():  # the monitored servers' (label host)
        expo.sample(fam, labels, value)
    return expo.text()


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
