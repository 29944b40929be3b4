"""The `prometheus` monitor source against a real scrape: a real Prometheus's own /metrics
(its process's CPU and RSS, a request counter as a rate), the same figures as ps reads of
that process, and a scrape URL where nothing listens: no data, never an error."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
from pathlib import Path

import pytest

from amoc.metrics import Registry
from amoc.metrics.prometheus import render
from amoc.monitor import service, spec
from tests.integration.prometheus_server import Prometheus
from tests.net import free_port

pytestmark = pytest.mark.integration

SERIES = ["process_resident_memory_bytes", "process_cpu_seconds_total",
          'prometheus_http_requests_total{handler="/metrics"}']  # fmt: skip


def test_a_scrape_gives_the_chosen_series_and_an_absent_endpoint_no_data(tmp_path: Path) -> None:
    with Prometheus(tmp_path / "prom", {"self": []}) as prom:
        url = f"{prom.url}/metrics"
        nowhere = f"http://127.0.0.1:{free_port()}/metrics"
        mon = service.Monitor(
            spec.parse([{"kind": "prometheus", "url": url, "series": SERIES, "label": "prom"},
                        {"kind": "prometheus", "url": nowhere, "label": "gone"}]),
            interval=0.2,
        )  # fmt: skip

        async def main() -> tuple[dict[str, float], str]:
            mon.start()
            try:
                for _ in range(100):  # at most 10 s: three scrapes of the live one
                    if mon._states["prom"].samples >= 3:
                        break
                    await asyncio.sleep(0.1)
                reading = mon.readings()["prom"]
                assert reading is not None
                reg = Registry()
                reg.collect_with(mon.exposition)
                return dict(reading.series), render(reg)
            finally:
                await mon.stop()

        series, text = asyncio.run(main())
        assert prom.process is not None
        ps = ["ps", "-o", "rss=", "-p", str(prom.process.pid)]
        rss = float(subprocess.run(ps, capture_output=True, text=True, check=True).stdout) * 1024
    assert abs(series["process_resident_memory_bytes"] - rss) <= 0.1 * rss, (series, rss)
    assert 0 <= series["process_cpu_seconds_total"] < 2  # a counter: its rate, cores
    assert series[SERIES[2]] >= 0 and not math.isnan(series[SERIES[2]])
    assert mon.status()["gone"].startswith("no data: cannot scrape"), mon.status()
    assert mon.status()["prom"] == "ok"
    assert 'amoc_monitor_series{host="prom",series="process_resident_memory_bytes"}' in text
    assert 'amoc_monitor_up{host="gone"} 0' in text and 'amoc_monitor_up{host="prom"} 1' in text


def test_promtool_finds_nothing_to_say_about_the_monitors_families() -> None:
    """The amoc_monitor_* and amoc_node_* families beside a node's own, as /metrics has them."""
    here = spec.parse_one({"kind": "local", "processes": [str(os.getpid())]})
    mon = service.Monitor([here], interval=0.05)

    async def main() -> None:
        mon.start()
        try:
            while mon._states["localhost"].samples < 2:
                await asyncio.sleep(0.02)
        finally:
            await mon.stop()

    asyncio.run(main())
    reg = Registry()
    reg.counter("node.cpu_ms").inc(1500)
    reg.counter("node.loop_busy_ms").inc(1600)
    reg.histogram("node.loop_lag_ms").record(3.0)
    reg.collect_with(mon.exposition)
    text = render(reg)
    done = subprocess.run(
        ["/usr/bin/promtool", "check", "metrics"], input=text, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr + text
    for family in ("amoc_monitor_process_cpu_seconds_total", "amoc_monitor_host_cpu_cores",
                   "amoc_node_cpu_seconds_total", "amoc_node_loop_busy_seconds_total",
                   "amoc_node_loop_lag_seconds"):  # fmt: skip
        assert f"# TYPE {family} " in text, family
