"""amoc.monitor: monitor_hosts read and refused, /proc parsed, the sampler's backoff on a host
that does not answer (logged once, no data), and the exposition's families with a host label."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import socket
import time
from pathlib import Path

import pytest

from amoc.metrics import Registry
from amoc.metrics.prometheus import render
from amoc.monitor import procfs, service, sources, spec

pytestmark = pytest.mark.unit


def test_sources_are_read_from_mappings_and_short_strings() -> None:
    found = spec.parse(
        "local:beam.smp,1234;ssh://root@10.0.0.5:2222/beam.smp;http://10.0.0.5:9100/metrics"
    )
    assert [s.kind for s in found] == ["local", "ssh", "prometheus"]
    assert found[0].processes == ("beam.smp", "1234") and found[0].label == "localhost"
    assert (found[1].host, found[1].port, found[1].user, found[1].label) == (
        "10.0.0.5", 2222, "root", "10.0.0.5")  # fmt: skip
    assert found[2].label == "10.0.0.5:9100"
    table = spec.parse([{"kind": "ssh", "host": "db", "processes": ["lua5.4"], "label": "xmpp"},
                        {"kind": "prometheus", "url": "http://h/metrics",
                         "series": ['node_cpu_seconds_total{mode="idle"}']}])  # fmt: skip
    assert table[0].label == "xmpp" and table[1].series == ('node_cpu_seconds_total{mode="idle"}',)
    assert spec.parse(None) == () and spec.parse([]) == ()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ([{"kind": "snmp"}], "source 1: unknown monitor kind 'snmp'"),
        (["snmp://h"], "unknown monitor kind 'snmp'"),
        (["http:///metrics"], "has no host"),
        ([{"kind": "prometheus", "url": "ftp://h/x"}], "is not an http:// or https:// URL"),
        ([{"kind": "ssh"}], "host must be a host name"),
        ([{"kind": "ssh", "host": "h", "port": 0}], "port must be 1..65535"),
        ([{"kind": "local", "procs": ["x"]}], "unknown key 'procs'"),
        ([{"kind": "local", "processes": ["a b"]}], "with spaces"),
        (["local:x", "local:y"], "two sources have the label 'localhost'"),
        (42, "expected a list of sources"),
    ],
)
def test_bad_sources_are_refused_saying_why(value: object, says: str) -> None:
    with pytest.raises((ValueError, TypeError), match=says.replace("(", r"\(").replace(".", r"\.")):
        spec.parse(value)


def test_the_setting_is_refused_with_its_name() -> None:
    from amoc.config import Config
    from amoc.errors import ConfigError

    config = Config(environ={})
    config.declare(service.PARAMETERS)
    with pytest.raises(ConfigError, match="config 'monitor_hosts'.*unknown monitor kind"):
        config.set("monitor_hosts", "gopher://h")


STAT = """cpu  100 0 50 800 50 0 0 0 0 0
cpu0 50 0 25 400 25 0 0 0 0 0
cpu1 50 0 25 400 25 0 0 0 0 0
intr 1
"""
STAT2 = """cpu  250 0 100 850 50 0 0 0 0 0
cpu0 150 0 50 410 25 0 0 0 0 0
cpu1 100 0 50 440 25 0 0 0 0 0
"""
MEMINFO = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    400 kB\n"
NET = """Inter-|   Receive
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets
    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0
  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0
"""
PROC = "4931 (beam.smp) S 1 4931 4931 0 -1 4194560 100 0 0 0 {ut} {st} 0 0 20 0 40 0 9 0 {rss}"


def _files(stat: str, ut: int, rss: int, rx: int) -> dict[str, str]:
    return {
        "stat": stat, "meminfo": MEMINFO, "loadavg": "1.50 1.00 0.50 2/300 999\n",
        "net/dev": NET.replace("1000 10", f"{rx} 10"),
        "procs": PROC.format(ut=ut, st=10, rss=rss) + "\n1 (init (odd) name) S 0 1 1",
        "ticks": "100", "pagesize": "4096",
    }  # fmt: skip


def test_proc_files_make_an_intervals_reading() -> None:
    old = procfs.counters(_files(STAT, 90, 1000, 1000), ["beam.smp", "nothing"], 10.0)
    new = procfs.counters(_files(STAT2, 240, 1500, 3048), ["beam.smp", "nothing"], 12.0)
    r = procfs.between(old, new)
    # All cores: busy 150 -> 350 of 1000 -> 1250 ticks: 80% of two cores.
    assert r.cpu == pytest.approx(1.6) and r.cores == pytest.approx((125 / 135, 75 / 115))
    assert (r.mem_total, r.mem_used, r.load1) == (1024_000, 600 * 1024, 1.5)
    assert r.net_rx_s == pytest.approx(1024) and r.net_tx_s == 0
    beam = r.procs["beam.smp"]
    assert beam.cpu == pytest.approx(0.75) and beam.cpu_seconds == pytest.approx(2.5)
    assert beam.rss == 1500 * 4096 and beam.count == 1
    assert r.procs["nothing"].count == 0 and math.isnan(procfs.between(None, new).cpu)


def test_a_rows_rates_cover_every_reading_since_the_last_row() -> None:
    # Samples each 0.5 s, a row each 1 s: a busy half-second then an idle one must show as
    # half a core in the row, not as the last sample's idle.
    state = service._State(source=None)
    busy = [90, 165, 165, 240, 240]  # beam.smp's user ticks at 10.0, 10.5, 11.0, 11.5, 12.0 s
    last = None
    for i, ut in enumerate(busy):
        counters = procfs.counters(_files(STAT, ut, 1000, 1000), ["beam.smp"], 10.0 + i / 2)
        state.note(procfs.between(last, counters))
        last = counters
        if i in (2, 4):
            assert state.reading is not None and state.reading.procs["beam.smp"].cpu == 0
            assert state.rate("beam.smp.cpu", 0.0) == pytest.approx(0.75)
            state.spans.clear()
    assert state.rate("beam.smp.cpu", 0.25) == 0.25  # no reading since the row: the latest


def test_a_remote_commands_output_splits_into_its_files() -> None:
    text = "".join(
        f"{procfs.MARK} {name}\n{body}\n" for name, body in _files(STAT, 1, 2, 3).items()
    )
    assert procfs.split(text)["loadavg"].startswith("1.50")
    assert procfs.counters(procfs.split(text), ["4931"], 1.0).procs["4931"][0].name == "beam.smp"


def test_this_machines_proc_has_this_process() -> None:
    found = procfs.read_local([str(os.getpid())], time.time())
    me = found.procs[str(os.getpid())]
    assert len(me) == 1 and me[0].rss_pages > 0 and found.mem_total > 0


def test_a_local_name_that_matches_nothing_is_refused() -> None:
    local = sources.LocalSource(spec.parse_one("local:no_such_proc_h24"))
    with pytest.raises(sources.MonitorError, match="no process named 'no_such_proc_h24'"):
        local.check()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_host_is_logged_once_and_has_no_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = spec.parse_one({"kind": "ssh", "host": "127.0.0.1", "port": _closed_port()})
    here = spec.parse_one({"kind": "local", "processes": [str(os.getpid())]})
    mon = service.Monitor([down, here], interval=0.05)

    async def main() -> None:
        mon.start()
        began = time.monotonic()
        while time.monotonic() - began < 1.0:  # the local source keeps its pace meanwhile
            await asyncio.sleep(0.05)
        await mon.stop()

    with caplog.at_level(logging.WARNING, logger="amoc.monitor"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "127.0.0.1" in r.getMessage()]
    assert len(lines) == 1 and "retrying with backoff" in lines[0], lines
    assert mon.status()["127.0.0.1"].startswith("no data: cannot connect")
    assert mon.status()["localhost"] == "ok"
    assert mon._states["127.0.0.1"].failures >= 2  # tried again (0.05, 0.1, 0.2... s apart)
    assert mon._states["localhost"].samples >= 8
    cols = mon.columns()
    assert math.isnan(cols["mon.127.0.0.1.cpu"]) and cols[f"mon.localhost.{os.getpid()}.rss_mb"] > 1


def test_the_servers_go_to_metrics_with_a_host_label() -> None:
    here = spec.parse_one({"kind": "local", "processes": [str(os.getpid())]})
    mon = service.Monitor([here], interval=0.05)

    async def main() -> None:
        mon.start()
        while mon._states["localhost"].samples < 2:
            await asyncio.sleep(0.02)
        await mon.stop()

    asyncio.run(main())
    reg = Registry()
    reg.collect_with(mon.exposition)
    text = render(reg)
    pid = os.getpid()
    assert "# TYPE amoc_monitor_process_cpu_seconds_total counter" in text
    assert f'amoc_monitor_process_resident_memory_bytes{{host="localhost",process="{pid}"}}' in text
    assert 'amoc_monitor_up{host="localhost"} 1' in text
    sampled = re.search(
        r'^amoc_monitor_sample_timestamp_seconds\{host="localhost"\} (\S+)$', text, re.M
    )
    assert sampled and abs(float(sampled.group(1)) - time.time()) < 30, text
    assert 'amoc_monitor_host_load1{host="localhost"}' in text
    charts = mon.charts()
    assert charts[0][0] == "Servers under test: CPU"
    comm = Path(f"/proc/{pid}/comm").read_text().strip()  # a pid shows with its name
    assert (f"mon.localhost.{pid}.cpu", f"{comm} {pid} on localhost") in charts[0][2]


NODE_EXPORTER = """# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{{cpu="0",mode="idle"}} {idle0}
node_cpu_seconds_total{{cpu="0",mode="user"}} {user0}
node_cpu_seconds_total{{cpu="0",mode="iowait"}} 0
node_cpu_seconds_total{{cpu="1",mode="idle"}} {idle1}
node_cpu_seconds_total{{cpu="1",mode="system"}} {sys1}
node_load1 0.75
node_memory_MemTotal_bytes 8e+09
node_memory_MemAvailable_bytes 6e+09
node_network_receive_bytes_total{{device="eth0"}} {rx}
node_network_receive_bytes_total{{device="lo"}} 99999
node_network_transmit_bytes_total{{device="eth0"}} 0
process_resident_memory_bytes 1.5e+07
"""


def test_a_node_exporter_scrape_gives_the_hosts_figures() -> None:
    source = sources.PrometheusSource(
        spec.parse_one({"kind": "prometheus", "url": "http://h:9100/metrics",
                        "series": ["process_resident_memory_bytes", "node_load1",
                                   'node_network_receive_bytes_total{device="eth0"}']})
    )  # fmt: skip

    def scrape(**values: float) -> list[tuple[str, dict[str, str], float]]:
        return sources.parse_exposition(NODE_EXPORTER.format(**values))

    def reading(now: float, samples: list[tuple[str, dict[str, str], float]]) -> procfs.Reading:
        host = sources._node_exporter(samples)
        chosen = {s: sources.select(samples, s) for s in source.spec.series}
        last, source._last = source._last, (now, host, chosen)
        return source._reading(now, host, chosen, last)

    reading(10.0, scrape(idle0=100, user0=100, idle1=150, sys1=50, rx=1000))
    r = reading(12.0, scrape(idle0=101, user0=102, idle1=150.5, sys1=51.5, rx=5096))
    # cpu0: 2 busy of 3 s, cpu1: 1.5 of 2 s: 3.5 busy of 5 over two cores.
    assert r.cpu == pytest.approx(3.5 / 5 * 2)
    assert r.cores == pytest.approx((2 / 3, 1.5 / 2))  # each core's busy share
    assert (r.mem_total, r.mem_used, r.load1) == (8e9, 2e9, 0.75)
    assert r.net_rx_s == pytest.approx(2048)  # eth0 only, not lo
    assert r.series["process_resident_memory_bytes"] == 1.5e7
    assert r.series['node_network_receive_bytes_total{device="eth0"}'] == pytest.approx(2048)
