"""amoc.metrics exporters against a real carbon-cache and a real HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from email.message import Message

import pytest

from amoc.config import Config
from amoc.errors import ConfigError
from amoc.metrics import PARAMETERS, MetricsService, Registry
from amoc.metrics.graphite import GraphiteReporter
from amoc.metrics.prometheus import PrometheusEndpoint
from tests.integration.carbon import Carbon, Points, carbon_fixture  # noqa: F401 - the fixture
from tests.wait import until

pytestmark = pytest.mark.integration

INTERVAL = 0.2
ACCURACY = 0.011  # the histogram's 1% relative accuracy, and a little rounding
TTD_VALUES = [float(v) for v in range(1, 201)]  # p50 100, p90 180, p99 198, max 200


def record_ttd(registry: Registry) -> None:
    """Record TTD_VALUES in the histogram `xmpp.ttd_ms`."""
    hist = registry.histogram("xmpp.ttd_ms")
    for value in TTD_VALUES:
        hist.record(value)


def values(points: Points) -> list[float]:
    """The values of whisper points."""
    return [value for _, value in points]


@contextlib.contextmanager
def ticking(action: Callable[[], None], period: float) -> Iterator[None]:
    """Run `action` every `period` seconds in the running loop while the block runs."""

    async def tick() -> None:
        while True:
            action()
            await asyncio.sleep(period)

    task = asyncio.get_running_loop().create_task(tick())
    try:
        yield
    finally:
        task.cancel()


def http_get(url: str) -> tuple[int, Message, str]:
    """Status, headers and body of a GET (no proxy; HTTP errors are answers too)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as answer:
            return answer.status, answer.headers, answer.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read().decode()


def samples(text: str) -> dict[str, float]:
    """Prometheus text format samples by name (with labels)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def buffered(reporter: GraphiteReporter, series: str) -> dict[int, float]:
    """The last buffered value of `series` for each timestamp."""
    out = {}
    for line in reporter.buffer:
        name, value, ts = line.split(" ")
        if name == series:
            out[int(ts)] = float(value)
    return out


async def test_reporter_sends_counters_gauges_histograms_and_annotations(carbon: Carbon) -> None:
    """What the registry holds is what whisper stores, series by series."""
    registry = Registry()
    reporter = GraphiteReporter(registry, carbon.host, carbon.port, prefix="t1", interval=INTERVAL)
    registry.counter("xmpp.messages.sent").inc(42)
    registry.gauge("users.running").set(7.5)
    record_ttd(registry)
    event = registry.annotate("scenario_start", comment="baseline")
    stanzas = registry.counter("xmpp.stanzas.in")
    await reporter.start()
    try:
        with ticking(lambda: stanzas.inc(10), 0.05):
            count = await carbon.aread("t1.xmpp.messages.sent.count")
            gauge = await carbon.aread("t1.users.running.value")
            p50 = await carbon.aread("t1.xmpp.ttd_ms.p50")
            p90 = await carbon.aread("t1.xmpp.ttd_ms.p90")
            p99 = await carbon.aread("t1.xmpp.ttd_ms.p99")
            high = await carbon.aread("t1.xmpp.ttd_ms.max")
            mean = await carbon.aread("t1.xmpp.ttd_ms.mean")
            hist_count = await carbon.aread("t1.xmpp.ttd_ms.count")
            events = await carbon.aread("t1.events.scenario_start")
            rate = await carbon.aread("t1.xmpp.stanzas.in.rate", until=lambda p: len(p) >= 2)
            stanza_count = await carbon.aread("t1.xmpp.stanzas.in.count")
        assert reporter.connected
    finally:
        await reporter.stop()

    assert set(values(count)) == {42.0}
    assert set(values(gauge)) == {7.5}
    # Interval statistics: only the first report has values, so each is one point.
    assert values(p50) == [pytest.approx(100.0, rel=ACCURACY)]
    assert values(p90) == [pytest.approx(180.0, rel=ACCURACY)]
    assert values(p99) == [pytest.approx(198.0, rel=ACCURACY)]
    assert values(high) == [200.0]
    assert values(mean) == [100.5]
    # Later, empty intervals report 0; within one second the last report wins.
    assert set(values(hist_count)) <= {0.0, 200.0}
    assert events == [(int(event["when"]), 1.0)]
    # 10 every 50 ms or more: at most 10 * (E / 0.05 + 1) / E per second over E >= 0.2 s.
    assert max(values(rate)) > 0
    assert all(0 <= r <= 250 for r in values(rate)), rate
    assert values(stanza_count) == sorted(values(stanza_count))


async def test_reporter_keeps_metrics_while_carbon_is_down(
    carbon: Carbon, caplog: pytest.LogCaptureFixture
) -> None:
    """Values recorded while carbon is down are buffered, warned about once, then sent."""
    caplog.set_level(logging.WARNING, logger="amoc.metrics.graphite")
    registry = Registry()
    reporter = GraphiteReporter(registry, carbon.host, carbon.port, prefix="t2", interval=INTERVAL)
    sent = registry.counter("sent")
    annotated: list[str] = []

    def record() -> None:
        sent.inc()
        annotated.append(f"down.e{len(annotated)}")
        registry.annotate(annotated[-1])

    sent.inc()
    await reporter.start()
    try:
        await carbon.aread("t2.sent.count")
        assert reporter.connected
        # From carbon's SIGTERM on, every value recorded must reach whisper in the end.
        with ticking(record, 0.1):
            await asyncio.to_thread(carbon.stop)
            down_from = time.time()
            await until(lambda: not reporter.connected, "the reporter to notice")
            size = len(reporter.buffer)
            await until(lambda: time.time() > down_from + 1.5, "1.5 s of downtime")
            assert not reporter.connected
            assert len(reporter.buffer) > size
            down_until = time.time()
            kept = buffered(reporter, "t2.sent.count")
            await asyncio.to_thread(carbon.start)
            await until(lambda: reporter.connected, "the reporter to reconnect")
        await until(lambda: not reporter.buffer, "the buffer to be sent")
        down = range(int(down_from) + 1, int(down_until))
        assert set(down) <= set(kept)
        count = dict(
            await carbon.aread("t2.sent.count", until=lambda p: set(down) <= dict(p).keys())
        )
        for name in annotated:
            await carbon.aread(f"t2.events.{name}")
    finally:
        await reporter.stop()

    assert {ts: count[ts] for ts in down} == {ts: kept[ts] for ts in down}
    assert reporter.dropped_lines == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "amoc.metrics.graphite"]
    unreachable = [m for m in messages if "unreachable" in m]
    assert len(unreachable) == 1, messages
    assert f"{carbon.host}:{carbon.port}" in unreachable[0]
    assert len([m for m in messages if "is back; sending" in m]) == 1, messages


async def test_metrics_service_flushes_to_graphite_on_stop(carbon: Carbon) -> None:
    """MetricsService runs both exporters from the config; stop() sends the last values."""
    config = Config(environ={})
    config.declare(PARAMETERS)
    config.set("graphite_host", carbon.host)
    config.set("graphite_port", carbon.port)
    config.set("graphite_prefix", "t3")
    config.set("graphite_interval", 60_000)  # no periodic report within the test
    config.set("prometheus_port", 0)
    registry = Registry()
    service = MetricsService(config, registry)
    await service.start()
    try:
        graphite, prometheus = service.exporters
        assert isinstance(graphite, GraphiteReporter) and graphite.interval == 60
        assert isinstance(prometheus, PrometheusEndpoint)
        port = prometheus.port
        assert port > 0
        status, _, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        registry.counter("final").inc(5)
        record_ttd(registry)
        assert carbon.points("t3.final.count") == []
    finally:
        await asyncio.wait_for(service.stop(), 10)
    assert service.exporters == []

    assert values(await carbon.aread("t3.final.count")) == [5.0]
    assert values(await carbon.aread("t3.xmpp.ttd_ms.count")) == [200.0]
    assert values(await carbon.aread("t3.xmpp.ttd_ms.max")) == [200.0]
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


async def test_prometheus_endpoint_serves_metrics() -> None:
    """GET /metrics gives the text format with the recorded values; others are refused."""
    registry = Registry()
    registry.counter("xmpp.messages.sent").inc(42)
    registry.gauge("users.running").set(7.5)
    record_ttd(registry)
    endpoint = PrometheusEndpoint(registry, "127.0.0.1", 0)
    await endpoint.start()
    try:
        base = f"http://127.0.0.1:{endpoint.port}"
        status, headers, body = await asyncio.to_thread(http_get, f"{base}/metrics")
        missing, _, _ = await asyncio.to_thread(http_get, f"{base}/other")
        second = PrometheusEndpoint(Registry(), "127.0.0.1", endpoint.port)
        with pytest.raises(ConfigError, match=f"127.0.0.1:{endpoint.port}"):
            await second.start()
    finally:
        await endpoint.stop()

    assert status == 200
    content_type = headers["Content-Type"]
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
    assert "# TYPE amoc_xmpp_messages_sent_total counter" in body.splitlines()
    assert "# TYPE amoc_users_running gauge" in body.splitlines()
    assert "# TYPE amoc_xmpp_ttd_seconds histogram" in body.splitlines()
    got = samples(body)
    assert got["amoc_xmpp_messages_sent_total"] == 42
    assert got["amoc_users_running"] == 7.5
    # 1..200 ms: 50 at or below 0.05 s, 100 at or below 0.1 s (a value on a bound counts
    # there; one within 2% above may too), all 200 at or below 0.25 s.
    assert 50 <= got['amoc_xmpp_ttd_seconds_bucket{le="0.05"}'] <= 51
    assert 100 <= got['amoc_xmpp_ttd_seconds_bucket{le="0.1"}'] <= 101
    assert got['amoc_xmpp_ttd_seconds_bucket{le="0.25"}'] == 200
    assert got["amoc_xmpp_ttd_seconds_sum"] == pytest.approx(sum(TTD_VALUES) / 1000)
    assert got["amoc_xmpp_ttd_seconds_count"] == 200
    assert missing == 404
