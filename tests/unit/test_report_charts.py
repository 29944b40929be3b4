"""The report's data: per-node series, load markers, histograms, the charting library inlined
(drawn in a real browser by tests/e2e/test_prometheus_cluster.py)."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from amoc import metrics
from amoc.config import BUILTINS, Config
from amoc.metrics import events
from amoc.report import echarts, html
from amoc.report import recorder as recorder_mod
from amoc.report.recorder import Recorder

pytestmark = pytest.mark.unit

NODES = ("s1@h", "s2@h")


def page_data(index: Path) -> dict[str, Any]:
    """The JSON the page draws from."""
    found = re.search(r'id="amoc-data">(.*?)</script>', index.read_text(), re.S)
    assert found, "no data in the page"
    return dict(json.loads(found.group(1)))


@contextlib.asynccontextmanager
async def recording(rec: Recorder) -> AsyncIterator[None]:
    """`rec` started, a run of scenario "s" (10 users) annotated around the body, and the
    recorder stopped after it (its report written) with the registry emptied."""
    rec.start()
    try:
        metrics.annotate("scenario_start", tags={"scenario": "s", "users": 10})
        yield
        metrics.annotate("scenario_stop", tags={"scenario": "s"})
    finally:
        await rec.stop()
        metrics.REGISTRY.reset()


class Cluster:
    """What a master's Node.sample() gives: two slaves' snapshots, their targets."""

    def __init__(self) -> None:
        self.time = 1000.0
        self.targets = {n: 5 for n in NODES}
        self.sent = dict.fromkeys(NODES, 0)

    def sample(self) -> dict[str, Any]:
        nodes = {}
        for n in NODES:
            reg = metrics.Registry()
            reg.counter("xmpp.messages.sent").inc(self.sent[n])
            reg.gauge("users.running").set(self.targets[n])
            nodes[n] = reg.local_snapshot()
        return {"time": self.time, "nodes": nodes, "targets": dict(self.targets),
                "scenario": "s", "state": "running"}  # fmt: skip


@pytest.fixture
def config(tmp_path: Path) -> Config:
    cfg = Config(environ={})
    cfg.declare([*BUILTINS, *recorder_mod.PARAMETERS])
    cfg.set("report_dir", str(tmp_path / "reports"))
    return cfg


async def test_a_clusters_report_has_a_line_per_node_and_the_load_markers(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(echarts, "script", lambda: b"window.fake_echarts = 1;")
    cluster = Cluster()
    rec = Recorder(cluster.sample, config, Path("/nonexistent"), "m", interval=3600)
    async with recording(rec):
        for step in range(1, 4):
            cluster.time += 1
            cluster.sent = {n: step * (10 if n == NODES[0] else 20) for n in NODES}
            if step == 2:
                await events.marked(_answer(), events.ADDED, count=4)
                config.set("interarrival", 7)
            rec._take()
        await events.marked(_answer(), events.REMOVED, count=2, force=True)
        rec._take()
    assert rec.last_report is not None
    data = page_data(rec.last_report)
    rates = next(c for c in data["charts"] if c["title"] == "Rates")
    by_name = {s["name"]: [v for _, v in s["data"]] for s in rates["series"]}
    # Rows: the start, three steps, the remove's, the stop's.
    assert by_name["messages/s s1@h"] == [0.0, 10.0, 10.0, 10.0, 0.0, 0.0]
    assert by_name["messages/s s2@h"] == [0.0, 20.0, 20.0, 20.0, 0.0, 0.0]
    assert by_name["messages/s"] == [0.0, 30.0, 30.0, 30.0, 0.0, 0.0]
    texts = [m["text"] for m in data["markers"]]
    assert texts[0] == "do s (10 users)" and texts[-1] == "stop"
    assert {"add 4", "interarrival 7", "remove 2 (force)"} <= set(texts)
    assert [m["at"] for m in data["markers"]] == sorted(m["at"] for m in data["markers"])
    assert "window.fake_echarts = 1;" in rec.last_report.read_text()


async def _answer() -> str:
    return "done"


async def test_a_verb_that_fails_leaves_no_marker() -> None:
    async def refused() -> None:
        raise RuntimeError("only 3 are placed")

    seen: list[dict[str, Any]] = []
    metrics.REGISTRY.on_annotation(seen.append)
    try:
        with pytest.raises(RuntimeError):
            await events.marked(refused(), events.REMOVED, count=50, force=False)
        assert await events.marked(_answer(), events.ADDED, count=1) == "done"
    finally:
        metrics.REGISTRY.off_annotation(seen.append)
        metrics.REGISTRY.reset()
    assert [(e["what"], e["tags"]) for e in seen] == [("users_added", {"count": 1})]


def test_the_latency_histograms_are_shares_per_bucket(tmp_path: Path) -> None:
    reg = metrics.Registry()
    for ms in (0.3, 0.3, 4.0, 900.0):
        reg.histogram("xmpp.ttd_ms").record(ms)
    reg.histogram("xmpp.roster.items").record(3)  # not a latency: no bars
    index = html.write(tmp_path / "r", [], {"scenario": "s"}, [], {},
                       histograms=reg.local_snapshot()["histograms"])  # fmt: skip
    (dist,) = [c for c in page_data(index)["charts"] if c["kind"] == "bar"]
    (bars,) = dist["series"]
    shares = dict(zip(dist["categories"], bars["data"], strict=True))
    assert bars["name"] == "xmpp.ttd_ms" and sum(shares.values()) == pytest.approx(100)
    assert shares["0.5 ms"] == 50 and shares["5 ms"] == 25 and shares["1000 ms"] == 25


def test_without_the_library_the_report_says_how_to_get_it(tmp_path: Path) -> None:
    missing = tmp_path / "echarts.min.js"
    with pytest.raises(echarts.ChartsMissing, match=r"is missing\): run `make echarts`"):
        echarts.script(missing)
    missing.write_text("not echarts")
    with pytest.raises(echarts.ChartsMissing, match=f"is not ECharts {echarts.VERSION}"):
        echarts.script(missing)
