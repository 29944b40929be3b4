"""`local` monitoring of the managed ejabberd by pid, against what `ps` reads at the same
moments: /metrics (a real HTTP client) and the run's report carry the server's CPU and RSS
on the run's time axis; and the bad inputs of `monitor_hosts` refused before any user starts."""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from amoc.monitor.sources import parse_exposition, select
from tests.integration.xmpp_fixture import XmppServer
from tests.net import free_port

pytestmark = pytest.mark.integration

FIRST = 160_001
USERS = 200


def ps(pid: int) -> tuple[float, float, float]:
    """What the process tools read of a process: (CPU seconds, RSS bytes, ps's CPU seconds).
    ps prints CPU time in whole seconds only: the fraction comes from top's TIME+
    (procps too, the same /proc, in hundredths)."""
    out = subprocess.run(
        ["ps", "-o", "cputimes=,rss=", "-p", str(pid)],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout.split()  # fmt: skip
    top = subprocess.run(
        ["top", "-b", "-n", "1", "-w", "512", "-p", str(pid)],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout.splitlines()  # fmt: skip
    head = next(i for i, line in enumerate(top) if line.split()[:1] == ["PID"])
    time_plus = top[head + 1].split()[top[head].split().index("TIME+")]
    minutes, _, seconds = time_plus.partition(":")
    return int(minutes) * 60 + float(seconds), float(out[1]) * 1024, float(out[0])


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return parse_exposition(reply.read().decode())


def run(release: Path, *args: str, timeout: float = 120) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(release / "bin" / "amoc"), "--name", f"mon{os.getpid()}", "run", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def within(ours: float, theirs: float, share: float = 0.10) -> bool:
    return abs(ours - theirs) <= share * abs(theirs)


def test_local_monitoring_of_ejabberd_agrees_with_ps(
    release: Path, xmpp_server: XmppServer, tmp_path: Path
) -> None:
    pid = int(xmpp_server.state()["pid"])
    xmpp_server.register(FIRST, FIRST + USERS - 1)
    port = free_port()
    source = repr([{"kind": "local", "processes": [pid]}])
    child = run(
        release, "xmpp_one_to_one", "--users", str(USERS), "--first", str(FIRST),
        "--duration", "40", "--rate", "200", "--report", str(tmp_path),
        "--set", f"xmpp_port={xmpp_server.port}", "--set", "repeat_num=1",
        "--set", "messages_per_user=24", "--set", "message_interval=500",
        "--set", f"monitor_hosts={source}", "--set", "monitor_interval=500",
        "--set", f"prometheus_port={port}",
    )  # fmt: skip
    readings: list[dict[str, Any]] = []
    done = threading.Event()

    def watch() -> None:
        # Every 2 s while the run goes: ps, then /metrics, at the same moment.
        while not done.wait(2.0):
            try:
                samples = scrape(port)
            except OSError:
                continue
            cpu, rss, whole = ps(pid)
            which = f'{{process="{pid}"}}'
            metric = {
                "cpu": select(samples, "amoc_monitor_process_cpu_seconds_total" + which),
                "rss": select(samples, "amoc_monitor_process_resident_memory_bytes" + which),
            }
            readings.append(
                {"time": time.time(), "ps_cpu": cpu, "ps_rss": rss, "ps_whole": whole, **metric}
            )

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = child.communicate(timeout=120)
    finally:
        done.set()
        watcher.join(5)
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert f"server localhost (local ({pid})): " in out and ", ok" in out, out
    live = [r for r in readings if r["cpu"] == r["cpu"]]  # scraped while the monitor had data
    assert len(live) >= 5, readings
    for r in live:
        assert within(r["cpu"], r["ps_cpu"]), r
        assert within(r["rss"], r["ps_rss"]), r
        assert abs(r["cpu"] - r["ps_whole"]) < 1.5, r  # ps's whole seconds
    worst = {k: max(abs(r[k] / r[f"ps_{k}"] - 1) for r in live) for k in ("cpu", "rss")}
    print(f"\n/metrics against ps/top at {len(live)} moments: CPU seconds within "
          f"{worst['cpu']:.1%}, RSS within {worst['rss']:.1%}; e.g. {live[-1]}")  # fmt: skip

    index = Path(re.search(r"report: (\S+)", out).group(1))  # type: ignore[union-attr]
    summary = json.loads((index.parent / "summary.json").read_text())
    started = summary["run"]["started"]
    assert summary["monitored"]["localhost"]["status"] == "ok"
    rows = list(csv.DictReader((index.parent / "series.csv").read_text().splitlines()))
    cpu_s, rss_mb, share, taken = (
        f"mon.localhost.{w}" for w in (f"{pid}.cpu_s", f"{pid}.rss_mb", f"{pid}.cpu", "t")
    )
    # The report's samples of the server, each at the moment it was taken (the run's axis).
    series = sorted({(started + float(x[taken]), float(x[cpu_s]), float(x[rss_mb]) * 2**20)
                     for x in rows if x[taken]})  # fmt: skip
    compared = 0
    gaps: list[tuple[float, float]] = []
    for r in live:
        # The report's figures at that moment: between the samples taken around it.
        around = [(a, b) for a, b in itertools.pairwise(series)
                  if a[0] <= r["time"] <= b[0] and b[0] - a[0] < 1.5]  # fmt: skip
        if not around:
            continue
        (ta, ca, ra), (tb, cb, rb) = around[0]
        f = (r["time"] - ta) / (tb - ta)
        compared += 1
        assert within(ca + f * (cb - ca), r["ps_cpu"]), (around, r)
        assert within(ra + f * (rb - ra), r["ps_rss"]), (around, r)
        gaps.append((abs((ca + f * (cb - ca)) / r["ps_cpu"] - 1),
                     abs((ra + f * (rb - ra)) / r["ps_rss"] - 1)))  # fmt: skip
    assert compared >= 3, (series[:3], live)
    print(
        f"the report against ps/top at {compared} moments: CPU seconds within "
        f"{max(g[0] for g in gaps):.1%}, RSS within {max(g[1] for g in gaps):.1%}"
    )
    # The plotted CPU (% of a core over each second) is the cumulative CPU's slope.
    timed = [(float(x["t"]), float(x[cpu_s]), float(x[share])) for x in rows if x[share]]
    assert max(s for _t, _c, s in timed) > 5, timed  # the server worked under the load
    (t0, c0, _), (t1, c1, _) = timed[0], timed[-1]
    mean = sum(s for _t, _c, s in timed[1:]) / (len(timed) - 1)
    assert within(mean, 100 * (c1 - c0) / (t1 - t0), 0.15), (mean, timed)
    page = index.read_text()
    assert "Servers under test: CPU" in page and f"beam.smp {pid} on localhost" in page


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("[{'kind': 'snmp', 'host': 'h'}]", "unknown monitor kind 'snmp'"),
        ("['http:///metrics']", "has no host"),
        ("[{'kind': 'prometheus', 'url': 'http://:9100/metrics'}]", "has no host"),
        ("['local:no_such_process_x']", "no process named 'no_such_process_x'"),
    ],
)
def test_bad_monitor_hosts_are_refused_before_any_user_starts(
    release: Path, tmp_path: Path, value: str, says: str
) -> None:
    child = run(
        release, "dummy", "--users", "2", "--duration", "5", "--report", str(tmp_path),
        "--set", f"monitor_hosts={value}",
    )  # fmt: skip
    out, err = child.communicate(timeout=60)
    assert child.returncode == 2, (out, err)
    assert "monitor_hosts" in err and says in err, err
    assert "users started" not in out and not list(tmp_path.iterdir())
