"""The README's Prometheus table names what /metrics exposes, and each example queries it."""

from __future__ import annotations

import re

import pytest

from amoc.metrics import Registry
from amoc.metrics.prometheus import render
from tests.unit.files import ROOT

pytestmark = pytest.mark.unit

# The internal metrics behind the table's rows, as amoc and the scenarios record them.
RECORDED = {
    "counter": [
        "users.started", "users.finished", "users.failed", "users.abandoned", "scenario.runs",
        "xmpp.logins.ok", "xmpp.logins.failed", "xmpp.logins.failed.auth",
        "xmpp.messages.sent", "xmpp.messages.received", "xmpp.messages.errors",
        "xmpp.messages.lost", "xmpp.messages.missing", "xmpp.disconnects",
        "xmpp.iq.ping.errors", "xmpp.iq.ping.timeouts", "xmpp.muc.joins.failed.forbidden",
        "xmpp.registrations.failed.conflict", "xmpp.unregistrations.failed.timeout",
        "xmpp.presences.received.available", "throttle.amoc_user_rate.requests",
        "throttle.amoc_user_rate.executions", "throttle.amoc_user_rate.steps",
        "coordinator.pairs.batches", "coordinator.pairs.users", "cluster.users.lost",
        "cluster.control.bytes_in", "cluster.control.bytes_out", "one_to_one.received",
        "node.cpu_ms", "node.loop_busy_ms",
    ],
    "gauge": ["users.running", "xmpp.connected", "throttle.amoc_user_rate.rate",
              "cluster.nodes.up", "cluster.clock_offset_ms"],
    "histogram": [
        "xmpp.ttd_ms", "xmpp.login_time_ms", "xmpp.muc.ttd_ms", "xmpp.pubsub.ttd_ms",
        "xmpp.presences.ttd_ms", "xmpp.mam.lookup_time_ms", "xmpp.sm.resume_time_ms",
        "xmpp.iq.ping.time_ms", "xmpp.roster.items", "node.loop_lag_ms",
    ],
}  # fmt: skip


def table_rows() -> list[tuple[str, str]]:
    """(families cell, example cell) of each row of the README's Prometheus table."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Prometheus") : text.index("### Grafana dashboards")]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| `amoc_")]
    assert len(rows) >= 15, "the README's Prometheus table is gone"
    return [(cells[0], cells[2]) for cells in rows]


def named(cell: str) -> list[str]:
    """The families a cell names; `_x_total` after `amoc_a_b_total` is `amoc_a_x_total`."""
    out: list[str] = []
    for token in re.findall(r"`(_?[a-z][a-z0-9_]*|_[a-z0-9_]+)`", cell):
        if token.startswith("_"):
            assert out, f"{token} follows no family in {cell}"
            stem = out[-1].removesuffix("_total").rsplit("_", 1)[0]
            token = stem + token
        if token.startswith("amoc_"):
            out.append(token)
    return out


def exposed() -> tuple[set[str], set[str]]:
    """The families, and the series names (with _bucket, _sum, _count), of the exposition."""
    reg = Registry()
    for name in RECORDED["counter"]:
        reg.counter(name).inc()
    for name in RECORDED["gauge"]:
        reg.gauge(name).set(1)
    for name in RECORDED["histogram"]:
        reg.histogram(name).record(3)
    reg.annotate("scenario_start")
    text = render(reg)
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    series = {line.split("{")[0].split()[0] for line in text.splitlines() if line[:1] != "#"}
    return families, series


def test_every_family_in_the_readme_is_exposed_and_its_example_queries_it() -> None:
    families, series = exposed()
    for cell, example in table_rows():
        if "a scenario's own" in cell:
            names = ["amoc_one_to_one_received_total"]
        else:
            names = named(cell)
            assert names, cell
        missing = [n for n in names if n not in families]
        assert not missing, f"the README names {missing}, which /metrics does not expose"
        queried = set(re.findall(r"amoc_[a-z0-9_]+", re.sub(r'"[^"]*"', "", example)))
        assert queried and queried <= series, f"{example} queries what is not exposed"
        assert queried & {n + s for n in names for s in ("", "_bucket", "_sum", "_count")}, (
            f"{example} queries none of {names}"
        )
