"""A real Prometheus scrapes a two-node cluster's master and one of its nodes during an XMPP
run; PromQL, the dashboards' queries and the master's report are checked against amoc's own
figures, the report in headless Chromium."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import Cluster
from tests.e2e.terminal import amoc
from tests.integration.prometheus_server import Prometheus, bucket_of
from tests.integration.xmpp_fixture import XmppServer
from tests.net import free_port
from tests.wait import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "amoc-prometheus.json"
# Ids 150_001..150_044 are this file's on the shared XMPP server: 40 registered users in
# pairs, a pair that is not registered (their logins fail: errors by reason), then the pair
# that add(2) brings and remove(2, force=True) kills.
FIRST, USERS, PER_USER, INTERVAL_MS = 150_001, 40, 30, 250
UNREGISTERED = 2
RATE_WINDOW = 4  # s, for rate(): four scrapes
MASTER, NODE = "amoc_master", "amoc_node"


@dataclass
class Run:
    """What the run left: Prometheus still up, amoc's figures, the report, the time span."""

    prom: Prometheus
    cluster: Cluster
    figures: dict[str, Any]
    report: Path
    start: float
    final: float  # when Prometheus had the final figures, both slaves still up
    end: float


def settings(server: XmppServer) -> dict[str, Any]:
    """The run's settings (do(settings=...)), reaching every slave."""
    return {
        "xmpp_port": server.port,
        "xmpp_domain": server.domain,
        "xmpp_sasl": "PLAIN",
        "messages_per_user": PER_USER,
        "message_interval": INTERVAL_MS,
        "receive_timeout": 20_000,
        "repeat_num": 1,
        "interarrival": 20,
    }


# Families the test compares with amoc's own figures: (family, metrics.show() name).
COMPARED = (
    ("amoc_xmpp_messages_sent_total", "xmpp.messages.sent"),
    ("amoc_xmpp_messages_received_total", "xmpp.messages.received"),
    ("amoc_xmpp_logins_ok_total", "xmpp.logins.ok"),
    ("amoc_users_failed_total", "users.failed"),
    ("amoc_xmpp_ttd_seconds_count", "xmpp.ttd_ms"),
)


def figure(figures: dict[str, Any], name: str) -> float:
    """A counter, or a histogram's count."""
    value = figures[name]
    return float(value["count"] if isinstance(value, dict) else value)


def settled(prom: Prometheus, figures: dict[str, Any], node1: str) -> bool:
    """Whether the last scrapes hold amoc's final figures: the master's sums, and node 1
    scraped on its own as the master shows it (each job may be a scrape behind)."""
    for family, name in COMPARED:
        found = prom.query(f'sum({family}{{job="{MASTER}"}})')
        if not found or float(found[0]["value"][1]) != figure(figures, name):
            return False
    per_node = 'sum by (node) (amoc_xmpp_messages_sent_total{{job="{}"}})'
    seen = by(prom.query(per_node.format(MASTER)), "node")
    direct = by(prom.query(per_node.format(NODE)), "node")
    return node1 in seen and direct == {node1: seen[node1]}


def run_on_cluster(cluster: Cluster, server: XmppServer, prom: Prometheus, ports: list[int]) -> Run:
    """Two slaves (the first serving its own /metrics), a master console, one XMPP run with an
    add, a rate change and a remove; returns once Prometheus holds the final figures."""
    term = cluster.start_master(AMOC_PROMETHEUS_PORT=str(ports[0]))
    for i in (1, 2):
        env = {
            **cluster.env("slave"),
            **({"AMOC_PROMETHEUS_PORT": str(ports[1])} if i == 1 else {}),
        }
        done = amoc(cluster.release, "--name", cluster.name(i), "start", env=env)
        assert done.returncode == 0, done.stderr
        cluster.slaves.append(cluster.name(i))
    wait_until(lambda: len(cluster.up()) == 2, "two slaves up", 20, every=0.2)
    wait_until(lambda: prom.targets_up(MASTER) and prom.targets_up(NODE), "scrapes", 20)
    start = time.time()
    last = FIRST + USERS + UNREGISTERED - 1
    term.run(f"run_settings = {settings(server)!r}")  # a short line: no wrapped echo
    out = term.run(f'amoc_dist.do("xmpp_one_to_one", {FIRST}, {last}, comment="prometheus", '
                   "settings=run_settings)")  # fmt: skip
    assert out.startswith("running xmpp_one_to_one"), out
    assert term.run("amoc_dist.add(2)").startswith("running"), "add"
    term.run('amoc_config.set("interarrival", 5)')
    assert "removed 2 users" in term.run("amoc_dist.remove(2, force=True)")
    term.wait('amoc_dist.status()["state"]', lambda s: s == "finished", timeout=90)
    figures = term.value("dict(metrics.show())")
    assert isinstance(figures, dict)
    sent = figures["xmpp.messages.sent"]
    assert sent >= USERS * PER_USER, figures
    wait_until(lambda: settled(prom, figures, cluster.node(1)), "the final figures in both jobs",
               20, every=0.5)  # fmt: skip
    final = time.time()
    report = wait_until(lambda: term.value("report()"), "the run's report", 15)
    assert isinstance(report, str)
    # The events the dashboard marks: the run's stop, then a node lost.
    term.run("amoc_dist.stop()")
    event = 'amoc_last_event_timestamp_seconds{{job="{}", what="{}"}}'
    wait_until(lambda: prom.query(event.format(MASTER, "scenario_stop")), "the stop", 15)
    assert amoc(cluster.release, "--name", cluster.name(2), "stop").returncode == 0
    wait_until(lambda: prom.query(event.format(MASTER, "node_down")), "node 2 down", 20)
    # The end a step later: a range query's last point then comes after the last scrape.
    return Run(prom, cluster, figures, Path(report), start, final, time.time() + 1.0)


@pytest.fixture(scope="module")
def cluster_run(
    release: Path, xmpp_server: XmppServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("promcluster")
    xmpp_server.register(FIRST, FIRST + USERS - 1)
    xmpp_server.register(FIRST + USERS + UNREGISTERED, FIRST + USERS + UNREGISTERED + 1)
    keys = root / "keys"
    made = amoc(release, "keys", str(keys))
    assert made.returncode == 0, made.stderr
    tag = f"p{os.getpid() % 10000}{int(time.time() * 1000) % 10000}"
    cluster = Cluster(release, tag, f"tcp://127.0.0.1:{free_port()}", keys)
    ports = [free_port(), free_port()]
    jobs = {MASTER: [f"127.0.0.1:{ports[0]}"], NODE: [f"127.0.0.1:{ports[1]}"]}
    prom = Prometheus(root / "prometheus", jobs)
    prom.start()
    try:
        yield run_on_cluster(cluster, xmpp_server, prom, ports)
    finally:
        if cluster.master is not None and cluster.master.child.isalive():
            cluster.master.leave()
        for name in cluster.slaves:
            amoc(release, "--name", name, "stop")
        prom.stop()


def by(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


def test_prometheus_sees_what_amoc_counted(cluster_run: Run) -> None:
    prom, cluster, figures = cluster_run.prom, cluster_run.cluster, cluster_run.figures
    at = cluster_run.final
    master = f'job="{MASTER}"'
    for family, name in COMPARED:
        assert prom.value(f"sum({family}{{{master}}})", at) == figure(figures, name), family
    per_node = by(
        prom.query(f"sum by (node) (amoc_xmpp_messages_sent_total{{{master}}})", at), "node"
    )
    assert set(per_node) == {cluster.node(1), cluster.node(2)}
    assert sum(per_node.values()) == figures["xmpp.messages.sent"]
    # The node scraped on its own says what the master says of it, under the same name.
    direct = by(prom.query(f'sum by (node) (amoc_xmpp_messages_sent_total{{job="{NODE}"}})', at),
                "node")  # fmt: skip
    assert direct == {cluster.node(1): per_node[cluster.node(1)]}
    reasons = by(prom.query(f"sum by (reason) (amoc_xmpp_login_failures_total{{{master}}})", at),
                 "reason")  # fmt: skip
    assert reasons == {"auth": UNREGISTERED} == {"auth": figures["xmpp.logins.failed"]}
    scenario = prom.query(f"amoc_users_started_total{{{master}}}", at)[0]["metric"]["scenario"]
    assert scenario == "xmpp_one_to_one"

    p99 = prom.value(
        f"histogram_quantile(0.99, sum by (le) (amoc_xmpp_ttd_seconds_bucket{{{master}}}))", at
    )
    lower, upper = bucket_of(p99)
    amoc_p99 = figures["xmpp.ttd_ms"]["p99"] / 1000
    assert lower / 1.02 <= amoc_p99 <= upper * 1.02, (p99, amoc_p99)
    count = prom.value(f"sum(amoc_xmpp_ttd_seconds_count{{{master}}})", at)
    assert count == figures["xmpp.ttd_ms"]["count"] >= USERS * PER_USER


def test_message_rates_agree_with_the_report(cluster_run: Run) -> None:
    report = cluster_run.report.parent
    rows = list(csv.DictReader((report / "series.csv").read_text().splitlines()))
    started = json.loads((report / "summary.json").read_text())["run"]["started"]
    busy = [float(r["t"]) for r in rows if float(r["messages_s"] or 0) > 0]
    middle = (busy[0] + busy[-1]) / 2  # in the steady part: every user sends every 250 ms
    window = [float(r["messages_s"]) for r in rows
              if middle - RATE_WINDOW < float(r["t"]) <= middle]  # fmt: skip
    amoc_rate = sum(window) / len(window)
    expr = " + ".join(
        f'sum(rate(amoc_xmpp_messages_{kind}_total{{job="{MASTER}"}}[{RATE_WINDOW}s]))'
        for kind in ("sent", "received")
    )
    prom_rate = cluster_run.prom.value(expr, at=started + middle)
    steady = 2 * USERS * 1000 / INTERVAL_MS  # sent and received
    assert prom_rate == pytest.approx(amoc_rate, rel=0.3), (prom_rate, amoc_rate, window)
    assert prom_rate == pytest.approx(steady, rel=0.3), (prom_rate, steady)


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every query of the Prometheus dashboard: panels and annotations."""
    board = json.loads(DASHBOARD.read_text())
    found = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"])
        for p in board["panels"]
        for t in p.get("targets", [])
    ]
    found += [(f"annotation {a['name']!r}", a["expr"]) for a in board["annotations"]["list"]]
    return found


def grafana(expr: str) -> str:
    """A dashboard query with Grafana's variables as the test's run gives them."""
    values = {"$__rate_interval": f"{RATE_WINDOW}s", "$job": MASTER, "$node": ".*"}
    for name, value in values.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a variable the test does not know in {expr}"
    return expr


def test_every_dashboard_query_returns_data(cluster_run: Run) -> None:
    prom = cluster_run.prom
    queries = dashboard_queries()
    assert len(queries) >= 12
    empty = []
    for where, expr in queries:
        matrix = prom.query_range(grafana(expr), cluster_run.start, cluster_run.end, 1.0)
        finite = [v for s in matrix for _, v in s["values"] if math.isfinite(float(v))]
        if not finite:
            empty.append(f"{where}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)
    # The template variables: label_values(METRIC{...}, LABEL).
    board = json.loads(DASHBOARD.read_text())
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        assert match, variable
        values = prom.api(f"label/{match.group(2)}/values", **{"match[]": grafana(match.group(1))})
        assert values, variable["name"]
    nodes = prom.api("label/node/values", **{"match[]": f'amoc_users_running{{job="{MASTER}"}}'})
    assert set(nodes) >= {cluster_run.cluster.node(1), cluster_run.cluster.node(2)}


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("chromium")
    assert found, "chromium is missing: run `make deps`"
    return subprocess.run(
        [found, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
         *args],
        capture_output=True, text=True, timeout=90, check=True,
    )  # fmt: skip


def test_the_masters_report_draws_every_series_in_chromium(
    cluster_run: Run, tmp_path: Path
) -> None:
    index = cluster_run.report
    cluster = cluster_run.cluster
    page = index.read_text()
    data = json.loads(re.search(r'id="amoc-data">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
    wanted = [[s["name"] for s in chart["series"]] for chart in data["charts"]]
    nodes = (cluster.node(1), cluster.node(2))
    for name in ("running", "messages/s", "TTD p99", "errors"):
        assert any(f"{name} {n}" in names for names in wanted for n in nodes), name
    assert any("xmpp.ttd_ms" in names for names in wanted)  # the distribution
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,3200", index.as_uri())
    assert shot.stat().st_size > 50_000
    dom = chromium("--dump-dom", index.as_uri()).stdout
    drawn = [json.loads(m.replace("&quot;", '"'))
             for m in re.findall(r'data-series="([^"]*)"', dom)]  # fmt: skip
    assert drawn == wanted
    assert f'data-charts="{len(wanted)}"' in dom
    svg = "".join(re.findall(r"<svg.*?</svg>", dom, re.S))
    for names in wanted:
        for name in names:
            assert f">{name}<" in svg, f"legend entry {name!r} not drawn"
    for marker in (f"do xmpp_one_to_one ({USERS + UNREGISTERED} users)", "add 2",
                   "interarrival 5", "remove 2 (force)"):  # fmt: skip
        assert f">{marker}<" in svg, f"marker {marker!r} not drawn"
