"""The /metrics exposition read by Prometheus' own tools: promtool's linter and a real scrape."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amoc.metrics import Registry
from amoc.metrics.histogram import describe, merge_snapshots
from amoc.metrics.prometheus import PrometheusEndpoint, render
from amoc.metrics.promnames import family
from tests.integration.prometheus_server import Prometheus, bucket_of
from tests.wait import until

pytestmark = pytest.mark.integration

PROMTOOL = Path("/usr/bin/promtool")
# Two slaves' TTD in ms: different shapes, so the cluster's p99 is neither node's.
TTD = {
    "s1@h": [0.2 + 0.01 * k for k in range(900)],  # 0.2 .. 9.2 ms
    "s2@h": [3.0 + 0.4 * k for k in range(100)],  # 3 .. 42.6 ms
}


def slave(values: list[float], sent: int) -> dict[str, Any]:
    """A slave's snapshot as its heartbeat brings it."""
    reg = Registry()
    for v in values:
        reg.histogram("xmpp.ttd_ms").record(v)
    reg.counter("xmpp.messages.sent").inc(sent)
    reg.counter("xmpp.logins.failed").inc(3)
    reg.counter("xmpp.logins.failed.auth").inc(2)
    reg.counter("xmpp.logins.failed.timeout").inc(1)
    reg.counter("cluster.control.bytes_out").inc(1000)
    reg.gauge("users.running").set(len(values) // 10)
    reg.histogram("xmpp.iq.roster_get.time_ms").record(4.0)
    reg.histogram("xmpp.roster.items").record(12)
    reg.gauge("throttle.amoc_user_rate.rate").set(5)
    return reg.local_snapshot()


@pytest.fixture
def master() -> Iterator[Registry]:
    """A master's registry: its own metrics and two slaves', labelled by node."""
    reg = Registry()
    reg.gauge("cluster.nodes.up").set(2)
    reg.annotate("scenario_start", tags={"scenario": "xmpp_one_to_one"})
    slaves = {name: slave(values, sent=100 * (i + 1)) for i, (name, values) in
              enumerate(TTD.items())}  # fmt: skip
    reg.merge_with(lambda: list(slaves.values()))
    reg.label_with("m", lambda: {"nodes": slaves, "scenario": "xmpp_one_to_one"})
    yield reg


def test_promtool_finds_nothing_to_say_about_the_exposition(master: Registry) -> None:
    text = render(master)
    done = subprocess.run(
        [str(PROMTOOL), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    helped = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    assert families == helped and len(families) == len(set(families)) >= 10
    assert "amoc_xmpp_login_failures_total" in families  # reason is a label
    assert not any("ms" in name.split("_") for name in families), families
    assert 'amoc_xmpp_login_failures_total{node="s2@h",scenario="xmpp_one_to_one",' \
        'reason="timeout"} 1' in text  # fmt: skip
    assert "amoc_cluster_control_out_bytes_total" in families


def ask(prom: Prometheus) -> tuple[Any, ...]:
    """What the test asks Prometheus, in PromQL."""
    up = prom.value('up{job="amoc_master"}')
    sent = prom.value('sum(amoc_xmpp_messages_sent_total{job="amoc_master"})')
    per_node = {
        r["metric"]["node"]: float(r["value"][1])
        for r in prom.query("sum by (node) (amoc_xmpp_messages_sent_total)")
    }
    by_reason = {
        r["metric"]["reason"]: float(r["value"][1])
        for r in prom.query("sum by (reason) (amoc_xmpp_login_failures_total)")
    }
    p99 = prom.value("histogram_quantile(0.99, sum by (le) (amoc_xmpp_ttd_seconds_bucket))")
    p99_s1 = prom.value(
        'histogram_quantile(0.99, sum by (le) (amoc_xmpp_ttd_seconds_bucket{node="s1@h"}))'
    )
    iq = prom.query("amoc_xmpp_iq_time_seconds_count")
    started = prom.value('amoc_last_event_timestamp_seconds{what="scenario_start"}')
    return up, sent, per_node, by_reason, p99, p99_s1, iq, started


async def test_a_real_prometheus_sums_the_nodes_and_finds_the_p99(
    master: Registry, tmp_path: Path
) -> None:
    endpoint = PrometheusEndpoint(master, "127.0.0.1", 0)
    await endpoint.start()
    try:
        target = f"127.0.0.1:{endpoint.port}"
        with Prometheus(tmp_path / "prom", {"amoc_master": [target]}) as prom:
            await until(lambda: prom.targets_up("amoc_master"), "a scrape of the master", 20,
                        every=0.2)  # fmt: skip
            # Queried from a thread: the endpoint is served by this test's loop meanwhile.
            got = await asyncio.to_thread(ask, prom)
    finally:
        await endpoint.stop()

    merged = master.snapshot()
    up, sent, per_node, by_reason, p99, p99_s1, iq, started = got
    assert up == 1
    assert sent == merged["counters"]["xmpp.messages.sent"] == 300
    assert per_node == {"s1@h": 100, "s2@h": 200}
    assert by_reason == {"auth": 4, "timeout": 2}
    amoc_p99 = describe(merged["histograms"]["xmpp.ttd_ms"])["p99"] / 1000
    lower, upper = bucket_of(p99)
    assert lower / 1.02 <= amoc_p99 <= upper * 1.02, (p99, amoc_p99)
    s1 = describe(merge_snapshots([master.by_node()[0]["s1@h"]["histograms"]["xmpp.ttd_ms"]]))
    lower, upper = bucket_of(p99_s1)
    assert lower / 1.02 <= s1["p99"] / 1000 <= upper * 1.02, (p99_s1, s1)
    assert bucket_of(p99) != bucket_of(p99_s1)  # the cluster's tail is s2's
    assert {r["metric"]["kind"] for r in iq} == {"roster_get"}
    assert started == pytest.approx(master.annotations[0]["when"])
    assert family("histogram", "xmpp.ttd_ms").name == "amoc_xmpp_ttd_seconds"
