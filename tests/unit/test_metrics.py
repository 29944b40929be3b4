"""amoc.metrics: histogram accuracy, merging, intervals, Prometheus text, Graphite lines."""

import math
import random
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import pytest

from amoc.config import Config, Param
from amoc.metrics import MetricsService, Registry, merge, summary
from amoc.metrics import service as metrics_service
from amoc.metrics.exporter import Exporter
from amoc.metrics.graphite import GraphiteReporter
from amoc.metrics.histogram import ACCURACY, Histogram, describe, difference, merge_snapshots
from amoc.metrics.prometheus import PrometheusEndpoint, render

pytestmark = pytest.mark.unit


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)), 1) - 1]


@pytest.mark.parametrize("q", [1, 50, 90, 99, 99.9])
def test_percentiles_are_within_the_accuracy(q: float) -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(1, 1.5) for _ in range(20_000)]
    hist = Histogram()
    for v in values:
        hist.record(v)
    want = exact(values, q)
    assert abs(hist.percentile(q) - want) <= ACCURACY * want * 1.001


def test_extremes_count_sum_and_empty() -> None:
    hist = Histogram()
    assert math.isnan(hist.percentile(50))
    for v in (0.0, 3.0, 1000.0):
        hist.record(v)
    assert (hist.count, hist.sum, hist.min, hist.max) == (3, 1003.0, 0.0, 1000.0)
    assert hist.percentile(0) == 0.0
    assert hist.percentile(100) == 1000.0
    with pytest.raises(ValueError, match="0..100"):
        hist.percentile(101)


def test_merged_nodes_equal_one_histogram_of_everything() -> None:
    rng = random.Random(3)
    nodes = [Histogram() for _ in range(3)]
    whole = Histogram()
    for i in range(9000):
        v = rng.expovariate(0.1)
        nodes[i % 3].record(v)
        whole.record(v)
    merged = merge_snapshots(h.snapshot() for h in nodes)
    assert merged["buckets"] == whole.snapshot()["buckets"]
    assert describe(merged)["p99"] == pytest.approx(whole.percentile(99))
    assert merged["count"] == 9000
    assert merged["max"] == whole.max


def test_difference_is_the_interval() -> None:
    hist = Histogram()
    for _ in range(100):
        hist.record(1.0)
    older = hist.snapshot()
    for _ in range(10):
        hist.record(50.0)
    interval = describe(difference(hist.snapshot(), older))
    assert interval["count"] == 10
    assert interval["p50"] == pytest.approx(50, rel=ACCURACY)
    assert interval["max"] == 50.0
    assert describe(difference(hist.snapshot(), hist.snapshot()))["count"] == 0


def test_registry_snapshot_merge_and_summary() -> None:
    a, b = Registry(), Registry()
    for reg, n in ((a, 3), (b, 4)):
        reg.counter("xmpp.messages.sent").inc(n)
        reg.gauge("users.running").set(n)
        reg.histogram("xmpp.ttd_ms").record(n)
    total = summary(merge([a.snapshot(), b.snapshot()]))
    assert total["xmpp.messages.sent"] == 7
    assert total["users.running"] == 7
    assert total["xmpp.ttd_ms"]["count"] == 2
    assert total["xmpp.ttd_ms"]["max"] == 4
    with pytest.raises(ValueError, match="metric name"):
        a.counter("has space")


def test_prometheus_text() -> None:
    reg = Registry()
    reg.counter("users.started").inc(5)
    reg.gauge("users.running").set(2)
    for v in (1, 2, 3):
        reg.histogram("xmpp.ttd_ms").record(v)
    text = render(reg)
    assert "# TYPE amoc_users_started_total counter\namoc_users_started_total 5\n" in text
    assert "amoc_users_running 2\n" in text
    assert "# TYPE amoc_xmpp_ttd_seconds histogram\n" in text
    assert 'amoc_xmpp_ttd_seconds_bucket{le="0.001"} 1\n' in text  # 1 ms
    assert 'amoc_xmpp_ttd_seconds_bucket{le="0.0025"} 2\n' in text  # 1 and 2 ms
    assert 'amoc_xmpp_ttd_seconds_bucket{le="+Inf"} 3\n' in text
    assert "amoc_xmpp_ttd_seconds_sum 0.006\n" in text and "amoc_xmpp_ttd_seconds_count 3\n" in text


async def test_graphite_lines_rates_and_interval_percentiles() -> None:
    reg = Registry()
    reporter = GraphiteReporter(reg, "127.0.0.1", 1, prefix="load")
    reg.counter("msgs").inc(10)
    reg.histogram("ttd").record(5)
    first = reporter.collect(now=1000.0)
    assert "load.msgs.count 10 1000" in first
    assert "load.ttd.p99 5.000 1000" in first
    reg.counter("msgs").inc(20)
    reg.histogram("ttd").record(100)
    reg.annotate("scenario_start", comment="baseline")
    second = reporter.collect(now=1010.0)
    assert "load.msgs.rate 2.000 1010" in second
    assert "load.ttd.count 1 1010" in second
    assert "load.ttd.max 100.000 1010" in second
    assert any(line.startswith("load.events.scenario_start 1 ") for line in second)


class Recorder:
    """An exporter that only notes what was asked of it."""

    PARAMETERS: ClassVar[tuple[Param, ...]] = (
        Param("recorder_names", None, "names of recorders to run (None: none)", start_only=True),
    )
    log: ClassVar[list[str]] = []

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def from_settings(cls, registry: Registry, values: Mapping[str, Any]) -> Self | None:
        return cls(values["recorder_names"]) if values["recorder_names"] else None

    async def start(self) -> None:
        self.log.append(f"start {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")


def test_every_exporter_declares_start_only_settings_listed_by_the_service() -> None:
    kinds: tuple[type[Exporter], ...] = metrics_service.EXPORTERS
    assert kinds == (GraphiteReporter, PrometheusEndpoint)
    assert tuple(p for k in kinds for p in k.PARAMETERS) == metrics_service.PARAMETERS
    assert all(p.start_only for p in metrics_service.PARAMETERS)
    config = Config(environ={})
    config.declare(metrics_service.PARAMETERS)
    values = config.resolve(metrics_service.PARAMETERS)
    assert [k.from_settings(Registry(), values) for k in kinds] == [None, None]  # off by default


async def test_the_service_runs_the_exporters_its_list_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new exporter is one class and one entry in EXPORTERS; the service does the rest."""
    kinds = (*metrics_service.EXPORTERS, Recorder)
    monkeypatch.setattr(metrics_service, "EXPORTERS", kinds)
    monkeypatch.setattr(
        metrics_service, "PARAMETERS", tuple(p for k in kinds for p in k.PARAMETERS)
    )
    Recorder.log.clear()
    config = Config(environ={})
    config.declare(metrics_service.PARAMETERS)
    config.set("recorder_names", "r1")
    config.set("prometheus_port", 0)
    service = MetricsService(config, Registry())
    await service.start()
    prometheus, recorder = service.exporters
    assert isinstance(prometheus, PrometheusEndpoint) and prometheus.port > 0
    assert isinstance(recorder, Recorder) and Recorder.log == ["start r1"]
    await service.stop()
    assert Recorder.log == ["start r1", "stop r1"] and service.exporters == []
