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

import pytest

from amoc.monitor.sources import parse_exposition, select
from tests.integration.xmpp_fixture import XmppServer
from tests.net import free_port

pytestmark = pytest.mark.integration

FIRST = 160_001
USERS = 200


def ps(pid: int) -> tuple[float, float, float, float, float]:
    """What the process tools read of a process: (CPU seconds, RSS bytes, ps's CPU seconds,
    and the times before and after top read the CPU seconds). ps prints CPU time in whole
    seconds only: the fraction comes from top's TIME+ (procps too, the same /proc, in
    hundredths). On a busy machine top may take tenths of a second to start, and a busy
    server spends CPU seconds in that time: the read happened somewhere between the two."""
    out = subprocess.run(
        ["ps", "-o", "cputimes=,rss=", "-p", str(pid)],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout.split()  # fmt: skip
    before = time.time()
    top = subprocess.run(
        ["top", "-b", "-n", "1", "-w", "512", "-p", str(pid)],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout.splitlines()  # fmt: skip
    head = next(i for i, line in enumerate(top) if line.split()[:1] == ["PID"])
    after = time.time()
    time_plus = top[head + 1].split()[top[head].split().index("TIME+")]
    minutes, _, seconds = time_plus.partition(":")
    return int(minutes) * 60 + float(seconds), float(out[1]) * 1024, float(out[0]), before, after


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


def at(points: list[tuple[float, ...]], when: float, gap: float = 1.5) -> tuple[float, ...]:
    """The figures of `points` (time first, in order) at `when`, read off the line between
    the two points around it, at most `gap` s apart, each followed by the lowest and the
    highest of those two points; () when none are."""
    for a, b in itertools.pairwise(points):
        if a[0] <= when <= b[0] and b[0] - a[0] < gap:
            f = (when - a[0]) / (b[0] - a[0])
            return tuple(v for x, y in zip(a[1:], b[1:], strict=True)
                         for v in (x + f * (y - x), min(x, y), max(x, y)))  # fmt: skip
    return ()


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
    scrapes: list[dict[str, float]] = []
    procs: list[tuple[float, ...]] = []  # (time, CPU s, RSS, ps's whole s)
    read: list[tuple[float, float]] = []  # when top read each of procs' CPU s: (before, after)
    done = threading.Event()

    def watch() -> None:
        # ps/top every 0.2 s (and the time they take), /metrics every fifth turn while the
        # run goes: each scrape's figures against what ps read when they were sampled.
        for turn in itertools.count():
            if done.wait(0.2):
                return
            cpu, rss, whole, before, after = ps(pid)
            procs.append(((before + after) / 2, cpu, rss, whole))
            read.append((before, after))
            if turn % 5 != 4:
                continue
            try:
                samples = scrape(port)
            except OSError:
                continue
            which = f'{{process="{pid}"}}'
            scrapes.append({
                "time": select(samples, 'amoc_monitor_sample_timestamp_seconds{host="localhost"}'),
                "cpu": select(samples, "amoc_monitor_process_cpu_seconds_total" + which),
                "rss": select(samples, "amoc_monitor_process_resident_memory_bytes" + which),
            })  # fmt: skip

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
    live = []
    for s in scrapes:
        if s["cpu"] == s["cpu"] and (ps_at := at(procs, s["time"])):  # NaN: no data yet
            cpu, _, _, rss, low, high, whole, _, _ = ps_at
            live.append({**s, "ps_cpu": cpu, "ps_rss": rss, "ps_low": low, "ps_high": high,
                         "ps_whole": whole})  # fmt: skip
    assert len(live) >= 5, (scrapes, procs[:3])
    for r in live:
        assert within(r["cpu"], r["ps_cpu"]), r
        assert r["ps_low"] * 0.9 <= r["rss"] <= r["ps_high"] * 1.1, r
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
    series: list[tuple[float, ...]] = sorted(
        {(started + float(x[taken]), float(x[cpu_s]), float(x[rss_mb]) * 2**20)
         for x in rows if x[taken]}
    )  # fmt: skip
    compared = 0
    gaps: list[tuple[float, float]] = []
    for (when, cpu, rss, _whole), (before, after) in zip(procs, read, strict=True):
        # The report's figures at the moment ps read: between the samples taken around it.
        # CPU seconds only grow, so what top read lies between the report's samples around
        # the time top took to read them (a row a second: within a login burst the growth
        # is far from a straight line between two rows), give or take top's hundredths.
        if not ((ours := at(series, when)) and (first := at(series, before))
                and (last := at(series, after))):  # fmt: skip
            continue
        compared += 1
        ours_cpu, _, _, ours_rss, low, high = ours
        slack = 0.02 + 0.02 * cpu
        assert first[1] - slack <= cpu <= last[2] + slack, (first, last, cpu)
        assert low * 0.9 <= rss <= high * 1.1, (ours, when, cpu, rss)
        gaps.append((abs(ours_cpu / cpu - 1), abs(ours_rss / rss - 1)))
    assert compared >= 20, (series[:3], procs[:3])
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
