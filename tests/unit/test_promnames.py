"""Internal metric names to Prometheus families, and the exposition's shape (no server)."""

from __future__ import annotations

import pytest

from amoc.metrics import Registry
from amoc.metrics.prometheus import bucket_counts, render
from amoc.metrics.promnames import COUNT_BUCKETS, TIME_BUCKETS, family

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("kind", "name", "expected", "labels", "scale"),
    [
        ("counter", "xmpp.messages.sent", "amoc_xmpp_messages_sent_total", (), 1.0),
        ("gauge", "users.running", "amoc_users_running", (), 1.0),
        ("histogram", "xmpp.ttd_ms", "amoc_xmpp_ttd_seconds", (), 0.001),
        ("histogram", "xmpp.login_time_ms", "amoc_xmpp_login_time_seconds", (), 0.001),
        ("histogram", "xmpp.roster.items", "amoc_xmpp_roster_items", (), 1.0),
        ("counter", "xmpp.logins.failed", "amoc_xmpp_logins_failed_total", (), 1.0),
        ("counter", "xmpp.logins.failed.unknown_user", "amoc_xmpp_login_failures_total",
         (("reason", "unknown_user"),), 1.0),
        ("histogram", "xmpp.iq.pubsub_publish.time_ms", "amoc_xmpp_iq_time_seconds",
         (("kind", "pubsub_publish"),), 0.001),
        ("counter", "xmpp.iq.roster_get.timeouts", "amoc_xmpp_iq_timeouts_total",
         (("kind", "roster_get"),), 1.0),
        ("counter", "xmpp.muc.joins.failed.forbidden", "amoc_xmpp_muc_join_failures_total",
         (("condition", "forbidden"),), 1.0),
        ("counter", "cluster.control.bytes_in", "amoc_cluster_control_in_bytes_total", (), 1.0),
        ("counter", "throttle.my.rate.limit.executions", "amoc_throttle_executions_total",
         (("throttle", "my.rate.limit"),), 1.0),
        ("counter", "coordinator.pairs.batches", "amoc_coordinator_batches_total",
         (("coordinator", "pairs"),), 1.0),
        ("counter", "odd-name.with spaces_total", "amoc_odd_name_with_spaces_total", (), 1.0),
    ],
)  # fmt: skip
def test_families(
    kind: str, name: str, expected: str, labels: tuple[tuple[str, str], ...], scale: float
) -> None:
    fam = family(kind, name)
    assert (fam.name, fam.kind, fam.labels, fam.scale) == (expected, kind, labels, scale)
    assert fam.help and "\n" not in fam.help
    assert fam.buckets == (TIME_BUCKETS if scale != 1.0 else COUNT_BUCKETS)


def test_a_kind_that_is_not_one_is_named() -> None:
    with pytest.raises(ValueError, match="'summary' is not one of counter, gauge, histogram"):
        family("summary", "x")


def test_bucket_counts_are_cumulative_and_exact_on_bounds() -> None:
    reg = Registry()
    for ms in (0.0, 1.0, 1.0, 2.5, 2.6, 40.0, 70_000.0):
        reg.histogram("t_ms").record(ms)
    hist = reg.local_snapshot()["histograms"]["t_ms"]
    counts = dict(zip([*TIME_BUCKETS, "+Inf"], bucket_counts(hist, TIME_BUCKETS, 0.001),
                      strict=True))  # fmt: skip
    assert counts[0.0001] == 1  # zero
    assert counts[0.001] == 3  # and 1 ms twice, on the bound
    assert counts[0.0025] == 4  # 2.5 ms on the bound; 2.6 is above
    assert counts[0.005] == 5 and counts[0.05] == 6 and counts[60.0] == 6
    assert counts["+Inf"] == 7 == hist["count"]


def test_label_values_are_escaped_and_each_family_is_typed_once() -> None:
    reg = Registry()
    reg.counter('xmpp.logins.failed.a"b\\c').inc()
    reg.counter("xmpp.logins.failed.plain").inc(2)
    reg.label_with("n", lambda: {"nodes": {"other": reg.local_snapshot()}, "scenario": "s\n1"})
    text = render(reg)
    assert text.count("# TYPE amoc_xmpp_login_failures_total counter") == 1
    assert 'amoc_xmpp_login_failures_total{node="n",scenario="s\\n1",reason="a\\"b\\\\c"} 1' in text
    assert 'amoc_xmpp_login_failures_total{node="other",scenario="s\\n1",reason="plain"} 2' in text


def test_two_names_of_one_family_keep_the_first_kind(caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry()
    reg.counter("a.b").inc(3)  # amoc_a_b_total
    reg.gauge("a.b_total").set(1)  # would be the gauge amoc_a_b_total
    text = render(reg)
    assert [line for line in text.splitlines() if line.startswith("# TYPE amoc_a_b_total")] == [
        "# TYPE amoc_a_b_total counter"
    ]
    assert "amoc_a_b_total 3" in text and "amoc_a_b_total 1" not in text
    assert any("amoc_a_b_total is a counter and a gauge" in r.getMessage() for r in caplog.records)
