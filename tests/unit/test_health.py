"""The load generator's own health: loop lag and CPU measured in a real loop, the readings
between two snapshots, and the client-bound verdict over sustained spells."""

from __future__ import annotations

import asyncio
import itertools
import math
import time

import pytest

from amoc import health
from amoc.metrics import Registry
from amoc.report import live

pytestmark = pytest.mark.unit


def test_a_blocked_loop_shows_as_lag_and_its_cpu_is_counted() -> None:
    reg = Registry()

    async def main() -> None:
        probe = health.LoopHealth(reg, tick=0.01)
        probe.start()
        await asyncio.sleep(0.1)
        began = time.process_time()
        while time.process_time() - began < 0.25:  # the loop's thread busy for 250 ms
            pass
        await asyncio.sleep(0.05)
        probe.stop()

    before = reg.local_snapshot()
    asyncio.run(main())
    after = reg.local_snapshot()
    r = health.reading(after, before)
    assert r.lag_max >= 200, r  # the timer due during the busy spell ran that late
    assert 0.3 <= r.cpu * (after["time"] - before["time"]) / 0.25 <= 1.5, r
    assert after["counters"][health.CPU] >= 240
    # On a CPU or waiting for one: at least what it ran (more on a busy machine).
    assert r.busy >= 0.8 * r.cpu, r


def _snap(t: float, cpu_ms: int, lags: list[float]) -> dict[str, object]:
    reg = Registry()
    reg.counter(health.CPU).inc(cpu_ms)
    for lag in lags:
        reg.histogram(health.LAG).record(lag)
    snap = reg.local_snapshot()
    snap["time"] = t
    return snap


def test_a_reading_is_cpu_share_and_lag_of_the_interval_only() -> None:
    old = _snap(10.0, 1000, [1.0] * 50)
    new = _snap(12.0, 2800, [1.0] * 50 + [80.0] * 40)
    r = health.reading(new, old)
    assert r.cpu == pytest.approx(0.9)
    assert r.lag_p99 == pytest.approx(80, rel=0.02) and r.lag_max == pytest.approx(80, rel=0.02)
    assert math.isnan(health.reading(new, None).cpu)


def test_a_run_is_client_bound_only_when_saturation_lasts() -> None:
    sat = health.Saturation(health.Bounds(lag_ms=50, cpu=0.85, sustain_s=3))
    busy = health.Reading(cpu=0.95, lag_p99=10, lag_max=20)
    calm = health.Reading(cpu=0.30, lag_p99=1, lag_max=2)
    laggy = health.Reading(cpu=0.40, lag_p99=120, lag_max=300)  # a node held below a core
    starved = health.Reading(cpu=0.10, lag_p99=9, lag_max=30, busy=0.97)  # waits for a CPU
    assert sat.bounds.why(starved) == (
        "event loop running or waiting for a CPU 97% of the time, on a CPU 10%"
    )
    for t in range(2):  # two seconds busy, then calm: a spike, not a saturated node
        sat.add("s1@a", t, t + 1, busy)
    sat.add("s1@a", 2, 3, calm)
    sat.add("s1@a", 3, 4, calm)
    sat.add("s1@a", 4, 5, busy)  # a new spell
    assert sat.verdict() is None
    for node in ("s3@c",):  # busy with one calm second inside: one spell of 4 s
        for t, r in enumerate((busy, busy, calm, busy, busy)):
            sat.add(node, 20 + t, 21 + t, r)
    assert "node s3@c: CPU 95% of a core > 85% for 5 s" in (sat.verdict(since=19) or "")
    for t in range(5, 10):
        sat.add("s2@b", t, t + 1, laggy)
    line = sat.verdict()
    assert line is not None and line.startswith(health.CLIENT_BOUND)
    assert "node s2@b: loop lag p99 120 ms > 50 ms for 5 s" in line and "s1@a" not in line
    assert sat.verdict(since=0, until=4) is None  # another window of the run
    assert "s2@b" in (sat.verdict(since=0, until=6) or "")
    assert sorted(s.node for s in sat.now_bound()) == ["s2@b", "s3@c"]


def test_bounds_come_from_the_settings_and_bad_ones_are_refused() -> None:
    from amoc.config import Config
    from amoc.errors import ConfigError

    config = Config(environ={})
    config.declare(health.PARAMETERS)
    config.set("client_cpu_bound", 0.5)
    config.set("client_bound_sustain", 1000)
    assert health.Bounds.from_config(config) == health.Bounds(50.0, 0.5, 1.0)
    with pytest.raises(ConfigError, match="client_cpu_bound.*share of one core"):
        config.set("client_cpu_bound", 85)


def test_the_live_view_says_client_bound_and_shows_the_servers() -> None:
    sat = health.Saturation(health.Bounds(sustain_s=2))
    frames = []
    for t in range(4):
        now = {"time": 100.0 + t, "nodes": {"n": _snap(100.0 + t, 950 * t, [])}, "targets": {},
               "scenario": "s", "state": "running",
               "monitor": {"localhost": {"up": True, "cpu": 1.5, "mem_used": 2**31, "load1": 1.2,
                                         "procs": {"beam.smp": {"cpu": 0.64, "rss": 310 * 2**20}}},
                           "10.0.0.9": {"up": False, "error": "cannot connect"}}}  # fmt: skip
        frames.append(now)
    lines = []
    for before, now in itertools.pairwise(frames):
        lines = live.frame(now, before, sat)
    assert (
        "server localhost: cpu 150%  mem 2.0 GiB  load 1.2  beam.smp cpu 64.0% rss 310 MiB" in lines
    )
    assert "server 10.0.0.9: no data (cannot connect)" in lines
    assert any(line.startswith("client-bound: figures include") and "node n: CPU 95%" in line
               for line in lines), lines  # fmt: skip
