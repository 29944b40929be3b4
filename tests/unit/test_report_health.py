"""The report of a run whose load node was saturated and whose servers were monitored: the
client-bound line and marker, the servers' charts under the load and their table, no data
marked (real /proc readings of this process as the monitored server)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from amoc import health, metrics
from amoc.config import BUILTINS, Config
from amoc.monitor import procfs, service, spec
from amoc.report import echarts
from amoc.report import recorder as recorder_mod
from amoc.report.recorder import Recorder
from tests.unit.test_report_charts import page_data, recording

pytestmark = pytest.mark.unit


class Nodes:
    """Two slaves' snapshots a second apart: s2's process busy 95% of a core."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.cpu = {"s1@h": 0, "s2@h": 0}

    def step(self) -> None:
        self.t += 1
        self.cpu["s1@h"] += 200
        self.cpu["s2@h"] += 950

    def sample(self) -> dict[str, Any]:
        nodes = {}
        for name, used in self.cpu.items():
            reg = metrics.Registry()
            reg.counter(health.CPU).inc(used)
            reg.gauge("users.running").set(5)
            snap = reg.local_snapshot()
            snap["time"] = self.t
            nodes[name] = snap
        return {"time": self.t, "nodes": nodes, "targets": dict.fromkeys(self.cpu, 5),
                "scenario": "s", "state": "running"}  # fmt: skip


def _monitor() -> service.Monitor:
    """This process as a monitored server with two readings of its /proc, and a host that
    never answered."""
    pid = str(os.getpid())
    mon = service.Monitor(spec.parse([f"local:{pid}", {"kind": "ssh", "host": "db9"}]))
    first = procfs.read_local([pid], time.time())
    time.sleep(0.05)
    state = mon._states["localhost"]
    state.reading = procfs.between(first, procfs.read_local([pid], time.time()))
    state.up, state.samples = True, 2
    mon._states["db9"].error = "cannot connect: timed out"
    return mon


async def test_a_saturated_node_and_the_servers_are_in_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(echarts, "script", lambda: b"window.fake_echarts = 1;")
    config = Config(environ={})
    config.declare([*BUILTINS, *recorder_mod.PARAMETERS, *health.PARAMETERS])
    config.set("report_dir", str(tmp_path))
    nodes = Nodes()
    rec = Recorder(nodes.sample, config, tmp_path, "m", interval=3600, monitor=_monitor())
    async with recording(rec):
        for _ in range(5):
            nodes.step()
            rec._take()
    assert rec.last_report is not None
    summary = json.loads((rec.last_report.parent / "summary.json").read_text())
    assert summary["client_bound"] == (
        "client-bound: figures include the load generator's delay "
        "(node s2@h: CPU 95% of a core > 85% for 5 s)"
    )
    assert summary["monitored"]["localhost"]["status"] == "ok"
    assert summary["monitored"]["db9"]["status"] == "no data: cannot connect: timed out"
    page = rec.last_report.read_text()
    assert 'id="client-bound"' in page and "<td>db9</td><td>ssh db9</td><td>0</td>" in page
    data = page_data(rec.last_report)
    titles = [c["title"] for c in data["charts"]]
    assert titles[:4] == ["Users", "Rates", "Time to delivery", "Errors (cumulative)"]
    assert titles[4:6] == ["Servers under test: CPU", "Servers under test: memory"]
    cpu = next(c for c in data["charts"] if c["title"] == "Load generator: CPU")
    per_node = {s["name"]: [v for _, v in s["data"]] for s in cpu["series"]}
    assert per_node["CPU s2@h"][1:6] == [95.0] * 5 and per_node["CPU s1@h"][1:6] == [20.0] * 5
    memory = next(c for c in data["charts"] if c["title"] == "Servers under test: memory")
    rss = next(s for s in memory["series"] if s["name"].endswith(f"{os.getpid()} RSS on localhost"))
    assert all(v and v > 1 for _, v in rss["data"])  # MiB of this process, every row
    assert "client-bound s2@h" in [m["text"] for m in data["markers"]]
