"""Throttle, coordinator, terminate and parameters on a master with two slaves."""

from __future__ import annotations

import time

import pytest

from tests.e2e.cluster import Cluster
from tests.e2e.terminal import Terminal
from tests.wait import wait_until

pytestmark = pytest.mark.e2e

RATE = 1200  # per minute over the cluster: 20 per second

PROBE = '''
"""A probe of the scenario toolkit (written by tests/e2e/test_toolkit_cluster.py)."""
import os

from amoc import coordinator, metrics, throttle
from amoc.config import amoc_config, param


def _apply(name, value):
    if value < 0:
        raise ValueError("negative level")
    metrics.gauge("probe.level").set(value)


PARAMETERS = [
    param("probe_rate", 1200, "throttle rate per minute over the cluster"),
    param("probe_level", 1, "applied at run time", update=_apply),
    param("probe_mode", "a", "one of a list", verify=["a", "b"]),
]


def _pair(event, a, b):
    metrics.counter("probe.pairs").inc()


def _every_pair(event, a, b):
    metrics.counter("probe.all_pairs").inc()
    if a[1] != b[1]:
        metrics.counter("probe.all_pairs.cross_node").inc()


def init():
    throttle.start("probe", amoc_config.get("probe_rate"))
    coordinator.start("pairs", [(2, _pair), ("all", _every_pair)], timeout=3_000)


async def start(user_id):
    await coordinator.add("pairs", user_id, data=os.getpid())
    while True:
        await throttle.wait("probe")
        metrics.counter("probe.sent").inc()


def terminate():
    metrics.counter("probe.terminated").inc()
'''


def sent(term: Terminal) -> int:
    value = term.value('metrics.show().get("probe.sent", 0)')
    assert isinstance(value, int)
    return value


def test_throttle_coordinator_terminate_and_parameters(cluster: Cluster) -> None:
    (cluster.release / "scenarios" / "toolkit_probe.py").write_text(PROBE)
    term = cluster.start_master()
    for i in (1, 2):
        cluster.start_slave(i)
        wait_until(lambda i=i: cluster.node(i) in cluster.up(), f"slave {i} to join", 15, every=0.1)
    term.run('amoc_config.set("interarrival", 100)')
    out = term.run('amoc_dist.do("toolkit_probe", 1, 20)')
    assert out.startswith("running toolkit_probe: 20 placed"), out
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 20, timeout=30)

    # The coordinator grouped the users of both nodes: 10 pairs as they came, each pair's
    # action run once; on the timeout, the "all" item saw all 20 users of both slaves:
    # 190 distinct pairs, of which 10 x 10 across the nodes.
    term.wait('metrics.show().get("probe.pairs", 0)', lambda n: n == 10, timeout=15)
    term.wait('metrics.show().get("probe.all_pairs", 0)', lambda n: n == 190, timeout=15)
    assert term.value('metrics.show()["probe.all_pairs.cross_node"]') == 100

    # The throttle holds RATE per minute over the cluster (each slave gets half).
    time.sleep(2)  # past the start
    first, t0 = sent(term), time.monotonic()
    time.sleep(15)
    last, t1 = sent(term), time.monotonic()
    per_minute = (last - first) / (t1 - t0) * 60
    assert RATE * 0.95 <= per_minute <= RATE * 1.03, per_minute

    # A gradual plan from the master's console: 4 rate changes on each slave.
    term.run('amoc_dist.change_rate_gradually("probe", 600, 2400, 500, 3)')
    term.wait('metrics.show().get("throttle.probe.steps", 0)', lambda n: n == 8, timeout=10)
    term.wait('metrics.show()["throttle.probe.rate"]', lambda r: r == 2400, timeout=5)

    # Parameters: a verification refuses, an update function applies on every slave.
    out = term.run('amoc_config.set("probe_mode", "c")')
    assert "must be one of ['a', 'b']" in out, out
    term.run('amoc_config.set("probe_level", 7)')
    out = term.run('amoc_config.set("probe_level", -1)')
    assert "refused by its update function: ValueError: negative level" in out, out
    for i in (1, 2):
        slave = Terminal(cluster.release, ["--name", cluster.name(i), "attach"], {})
        try:
            wait_until(
                lambda s=slave: s.value('metrics.gauge("probe.level").value') == 7,
                "level",
                10,
                every=0.1,
            )
            assert slave.value('amoc_config.get("probe_level")') == 7
        finally:
            slave.leave()

    # terminate runs once per node when the scenario stops.
    term.run("amoc_dist.stop()")
    term.wait('metrics.show().get("probe.terminated", 0)', lambda n: n == 2, timeout=10)


def test_user_rate_paces_spawning_over_the_cluster(cluster: Cluster) -> None:
    term = cluster.start_master()
    for i in (1, 2):
        cluster.start_slave(i)
        wait_until(lambda i=i: cluster.node(i) in cluster.up(), f"slave {i} to join", 15, every=0.1)
    term.run('amoc_config.set("user_rate", 600)')  # 10 users a second over the cluster
    started = time.monotonic()
    term.run('amoc_dist.do("dummy", 1, 30)')
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 30, timeout=20)
    took = time.monotonic() - started
    assert 2.5 < took < 5.0, took  # 30 users at 10/s: about 3 s (heartbeats add a little)
