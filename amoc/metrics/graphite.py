"""Report a registry to Graphite over the plaintext carbon protocol, every interval.

Series (with `prefix` in front):
- counters: `<name>.count` (total) and `<name>.rate` (per second over the interval);
- gauges: `<name>.value`;
- histograms, over the interval: `<name>.count`, `.mean`, `.p50`, `.p90`, `.p99`, `.max`;
- annotations: `events.<what>` = 1 at the event's time, and, when `events_url` is set, a
  graphite-web event (what, tags, data) for dashboards' annotation layers.

When carbon is unreachable the lines wait in a bounded buffer (oldest dropped first), one
warning is logged, and they are sent when carbon is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from amoc.config import Param, mask_url, non_negative_ms, optional_port, optional_text, scrub
from amoc.metrics.histogram import describe, difference
from amoc.metrics.registry import Registry

log = logging.getLogger("amoc.metrics.graphite")

BUFFER_LINES = 200_000
CONNECT_TIMEOUT = 3.0


def _series(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


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
    ms = non_negative_ms(value)
    if ms < 100:
        raise ValueError("must be at least 100 ms")
    return ms


class GraphiteReporter:
    """Sends the registry's values to carbon every `interval` seconds."""

    PARAMETERS: ClassVar[tuple[Param, ...]] = tuple(
        # All read once when the node starts: a change needs a restart of the node.
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
        )
    )

    def __init__(
        self,
        registry: Registry,
        host: str,
        port: int = 2003,
        prefix: str = "amoc",
        interval: float = 5.0,
        events_url: str | None = None,
    ) -> None:
        self.registry = registry
        self.host, self.port = host, port
        self.prefix = f"{prefix}." if prefix else ""
        self.interval = interval
        self.events_url = events_url
        self.buffer: deque[str] = deque(maxlen=BUFFER_LINES)
        self.sent_lines = 0
        self.dropped_lines = 0
        self.connected = False
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._previous: dict[str, Any] | None = None
        self._events: list[dict[str, Any]] = []
        self._previous_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._warned = False
        registry.on_annotation(self._events.append)

    @classmethod
    def from_settings(cls, registry: Registry, values: Mapping[str, Any]) -> Self | None:
        """A reporter to `graphite_host`, or None when it is not set."""
        if not values["graphite_host"]:
            return None
        return cls(
            registry,
            host=values["graphite_host"],
            port=values["graphite_port"],
            prefix=values["graphite_prefix"],
            interval=values["graphite_interval"] / 1000,
            events_url=values["graphite_events_url"],
        )

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start reporting (inside the running loop)."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="graphite")

    async def stop(self) -> None:
        """Report once more, then close."""
        self.registry.off_annotation(self._events.append)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), CONNECT_TIMEOUT * 2)
        await self._close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:  # reporting must never stop the node
                log.exception("graphite report failed")

    # -- one report ---------------------------------------------------------------------

    def collect(self, now: float | None = None) -> list[str]:
        """The lines for the values since the last collect (and queue them)."""
        now = time.time() if now is None else now
        ts = int(now)
        snap = self.registry.snapshot()
        prev = self._previous
        elapsed = max(now - self._previous_at, 1e-3) if prev else None
        lines: list[str] = []
        p = self.prefix
        for name, value in sorted(snap["counters"].items()):
            s = _series(name)
            lines.append(f"{p}{s}.count {value} {ts}")
            if prev is not None and elapsed is not None:
                rate = (value - prev["counters"].get(name, 0)) / elapsed
                lines.append(f"{p}{s}.rate {rate:.3f} {ts}")
        for name, value in sorted(snap["gauges"].items()):
            lines.append(f"{p}{_series(name)}.value {value} {ts}")
        for name, hist in sorted(snap["histograms"].items()):
            older = prev["histograms"].get(name) if prev else None
            stats = describe(difference(hist, older))
            s = _series(name)
            lines.append(f"{p}{s}.count {stats['count']} {ts}")
            if stats["count"]:
                for key in ("mean", "p50", "p90", "p99", "max"):
                    value = stats[key]
                    if not math.isnan(value):
                        lines.append(f"{p}{s}.{key} {value:.3f} {ts}")
        events = list(self._events)
        self._events.clear()
        for event in events:
            lines.append(f"{p}events.{_series(event['what'])} 1 {int(event['when'])}")
            if self.events_url:
                asyncio.get_running_loop().run_in_executor(None, self._post_event, event)
        self._previous, self._previous_at = snap, now
        self._queue(lines)
        return lines

    def _queue(self, lines: list[str]) -> None:
        room = BUFFER_LINES - len(self.buffer)
        if len(lines) > room:
            self.dropped_lines += len(lines) - room
        self.buffer.extend(lines)

    async def flush(self) -> None:
        """Collect and send everything buffered, if carbon can be reached."""
        self.collect()
        await self._send()

    async def _send(self) -> None:
        if not self.buffer:
            return
        if self._closed_by_carbon():
            # Writing to a connection carbon has closed "succeeds" locally and the lines are
            # lost (carbon answers with a reset); reconnect first, or keep them buffered.
            await self._close()
        if self._writer is None and not await self._connect():
            return
        assert self._writer is not None
        lines = list(self.buffer)
        try:
            self._writer.write(("\n".join(lines) + "\n").encode())
            await asyncio.wait_for(self._writer.drain(), CONNECT_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            self._lost(f"sending failed: {exc or type(exc).__name__}")
            await self._close()
            return
        for _ in lines:
            self.buffer.popleft()
        self.sent_lines += len(lines)

    async def _connect(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT
            )
        except (TimeoutError, OSError) as exc:
            self._lost(f"cannot connect: {exc or type(exc).__name__}")
            return False
        self._reader, self._writer = reader, writer
        if self._warned:
            log.warning(
                "graphite %s:%d is back; sending %d buffered lines",
                self.host,
                self.port,
                len(self.buffer),
            )
            self._warned = False
        self.connected = True
        return True

    def _lost(self, why: str) -> None:
        self.connected = False
        if not self._warned:
            log.warning(
                "graphite %s:%d unreachable (%s); metrics are kept and sent when it is back",
                self.host,
                self.port,
                why,
            )
            self._warned = True

    def _closed_by_carbon(self) -> bool:
        # Carbon never writes on the plaintext port: end of stream means it hung up.
        if self._writer is None:
            return False
        return self._writer.is_closing() or (self._reader is not None and self._reader.at_eof())

    async def _close(self) -> None:
        self._reader = None
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _post_event(self, event: dict[str, Any]) -> None:
        import urllib.request  # here: a node without events_url does not load it (16 ms)

        assert self.events_url is not None
        tags = [event["what"]] + [f"{k}={v}" for k, v in sorted(event["tags"].items())]
        body = json.dumps(
            {
                "what": event["what"],
                "tags": tags,
                "data": event["comment"] or "",
                "when": int(event["when"]),
            }
        ).encode()
        request = urllib.request.Request(
            self.events_url, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT) as answer:
                answer.read()
        except (OSError, ValueError) as exc:  # a bad URL is a ValueError (InvalidURL)
            log.warning(
                "graphite event %r not posted to %s: %s",
                event["what"],
                mask_url(self.events_url),
                scrub(str(exc), self.events_url),
            )
