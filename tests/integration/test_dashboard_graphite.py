"""Every series the Graphite dashboard draws is one amoc writes: checked against a real carbon.

A master reports the cluster under `amoc`, two nodes under `amoc.nodes.<node>` (the
dashboard's $prefix and $nodes); each panel's and annotation's series pattern must match
whisper files carbon wrote.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from amoc.metrics import Registry
from amoc.metrics.graphite import GraphiteReporter
from tests.integration.carbon import Carbon, carbon_fixture  # noqa: F401 - the fixture
from tests.wait import until

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "amoc-graphite.json"
VARIABLES = {"$prefix": "amoc", "$nodes": "amoc.nodes"}


def load(reg: Registry, step: int) -> None:
    """What a node of a one-to-one run records, `step` times over."""
    reg.gauge("users.running").set(10 * step)
    for name in (
        "xmpp.logins.ok",
        "xmpp.messages.sent",
        "xmpp.messages.received",
        "users.failed",
        "xmpp.logins.failed",
        "xmpp.logins.failed.auth",
        "xmpp.messages.errors",
        "xmpp.messages.missing",
        "xmpp.disconnects",
    ):
        reg.counter(name).inc(step)  # fmt: skip
    reg.histogram("xmpp.ttd_ms").record(1.5 * step)


def patterns() -> list[tuple[str, str]]:
    """(where, series pattern) of every Graphite query of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    found = [
        (f"panel {p['title']!r} {t['refId']}", t["target"])
        for p in board["panels"]
        for t in p["targets"]
    ]
    found += [
        (f"annotation {a['name']!r}", a["target"]["target"])
        for a in board["annotations"]["list"]
        if "target" in a["target"]
    ]
    out = []
    for where, target in found:
        match = re.fullmatch(r"\w+\(([^,()]+)(?:,.*)?\)|([^,()]+)", target)
        assert match, f"{where}: {target} is not FUNCTION(series, ...) or a series"
        series = match.group(1) or match.group(2)
        for name, value in VARIABLES.items():
            series = series.replace(name, value)
        assert "$" not in series, f"{where}: a variable the test does not know in {target}"
        by_node = re.fullmatch(r"aliasByNode\(.*, (-?\d+)\)", target)
        if by_node:  # the node named must be the series' wildcard (the node, the reason)
            parts = series.split(".")
            assert parts[int(by_node.group(1))] == "*", f"{where}: {target} names another node"
        out.append((where, series))
    return out


def whisper_glob(carbon: Carbon, pattern: str) -> list[Path]:
    return sorted(carbon.data_dir.glob(pattern.replace(".", "/") + ".wsp"))


async def test_every_graphite_query_of_the_dashboard_finds_series(carbon: Carbon) -> None:
    nodes = {name: Registry() for name in ("s1", "s2")}
    master = Registry()
    master.merge_with(lambda: [r.local_snapshot() for r in nodes.values()])
    reporters = [GraphiteReporter(master, carbon.host, carbon.port, prefix="amoc")] + [
        GraphiteReporter(reg, carbon.host, carbon.port, prefix=f"amoc.nodes.{name}")
        for name, reg in nodes.items()
    ]
    start = time.time()
    for reg in nodes.values():
        load(reg, 1)
    for reporter in reporters:
        reporter.collect(now=start - 2)  # a first report: rates need one before them
    master.annotate("scenario_start", tags={"scenario": "s"})
    for reg in nodes.values():
        load(reg, 2)
    try:
        for reporter in reporters:
            await reporter.flush()
            assert reporter.sent_lines > 0
        found = patterns()
        assert len(found) >= 14
        for where, pattern in found:
            await until(lambda p=pattern: whisper_glob(carbon, p),  # type: ignore[misc]
                        f"{where}: whisper files for {pattern}", 15, every=0.1)  # fmt: skip
    finally:
        for reporter in reporters:
            await reporter.stop()
    per_node = whisper_glob(carbon, "amoc.nodes.*.xmpp.messages.sent.rate")
    assert [p.parts[-5] for p in per_node] == ["s1", "s2"]
    reasons = whisper_glob(carbon, "amoc.xmpp.logins.failed.*.rate")
    assert [p.parts[-2] for p in reasons] == ["auth"]
