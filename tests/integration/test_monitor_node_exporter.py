"""The `prometheus` monitor source against a real node_exporter (Debian's
prometheus-node-exporter, our own process on loopback, stopped by its pid): the host's CPU,
memory, load and network come from its scrape, and agree with this machine's /proc, read at
the same time by a `local` source of the same monitor."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from amoc.metrics import Registry
from amoc.metrics.prometheus import render
from amoc.monitor import procfs, service, spec
from tests.net import free_port
from tests.wait import wait_until

pytestmark = pytest.mark.integration

NODE_EXPORTER = Path("/usr/bin/prometheus-node-exporter")
COLLECTORS = ("cpu", "meminfo", "loadavg", "netdev")


@contextmanager
def node_exporter(log: Path) -> Iterator[str]:
    """A node_exporter with the collectors a host's figures need; its scrape URL."""
    if not os.access(NODE_EXPORTER, os.X_OK):
        pytest.fail(f"{NODE_EXPORTER} is not installed: run `make deps`")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with log.open("ab") as out:
        child = subprocess.Popen(
            [str(NODE_EXPORTER), f"--web.listen-address=127.0.0.1:{port}",
             "--collector.disable-defaults", *(f"--collector.{c}" for c in COLLECTORS)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def answers() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    return reply.status == 200
            except OSError:
                return False

        wait_until(answers, timeout=20, what=f"node_exporter on {url}")
        yield url
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)


def test_node_exporter_gives_the_host_figures_that_proc_gives(tmp_path: Path) -> None:
    with node_exporter(tmp_path / "node_exporter.log") as url:
        mon = service.Monitor(
            spec.parse([{"kind": "prometheus", "url": url, "label": "node"},
                        {"kind": "local", "label": "proc"}]),
            interval=0.5,
        )  # fmt: skip
        pairs: list[tuple[procfs.Reading, procfs.Reading]] = []

        async def main() -> None:
            mon.start()
            # A core kept busy for 4 s by a shell loop of our own: both sources must see it.
            busy = await asyncio.create_subprocess_exec(
                "timeout", "4", "sh", "-c", "while :; do :; done"
            )
            try:
                for _ in range(80):  # at most 8 s: five samples of both once they have rates
                    await asyncio.sleep(0.1)
                    now = mon.readings()
                    node, proc = now["node"], now["proc"]
                    fresh = node and proc and (not pairs or pairs[-1][0] is not node)
                    if fresh and not (math.isnan(node.cpu) or math.isnan(proc.cpu)):
                        pairs.append((node, proc))
                    if len(pairs) >= 5:
                        break
            finally:
                await busy.wait()
                await mon.stop()

        asyncio.run(main())
        reg = Registry()
        reg.collect_with(mon.exposition)
        text = render(reg)
    assert len(pairs) >= 5, pairs
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total = int(meminfo["MemTotal"].split()[0]) * 1024
    cores = os.cpu_count() or 1
    for node, proc in pairs:
        assert node.mem_total == total, (node.mem_total, total)
        assert abs(node.mem_used - proc.mem_used) < 0.05 * total, (node, proc)
        assert abs(node.load1 - proc.load1) < 0.5, (node.load1, proc.load1)
        # Busy cores over half-second intervals that do not start at the same moment.
        assert 0 <= node.cpu <= cores + 0.05, node.cpu
        assert abs(node.cpu - proc.cpu) < 0.35, (node.cpu, proc.cpu)
        assert len(node.cores) == cores, node.cores
    assert max(node.cpu for node, _ in pairs) > 0.8, pairs  # the busy loop shows
    assert 'amoc_monitor_up{host="node"} 1' in text, text
    assert 'amoc_monitor_host_memory_total_bytes{host="node"}' in text, text
    assert 'amoc_monitor_host_cpu_cores{host="node"}' in text, text
