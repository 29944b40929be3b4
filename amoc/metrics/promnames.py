"""How an internal metric (`xmpp.ttd_ms`, `xmpp.logins.failed.auth`) becomes a Prometheus family.

Internal names stay as they are (thresholds, Graphite and reports use them); only the
exposition follows Prometheus' conventions:
- counters end in `_total`; times are in seconds (`xmpp.ttd_ms` -> `amoc_xmpp_ttd_seconds`,
  values divided by 1000) and bytes in `_bytes`;
- a part of a name that varies (a failure reason, an IQ kind, a throttle's name) is a label
  of one family (`amoc_xmpp_login_failures_total{reason="auth"}`), not a family of its own;
- histograms get fixed `le` buckets (`TIME_BUCKETS`, `COUNT_BUCKETS`) so that
  `histogram_quantile` works on them and on their sums over nodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "amoc_"

# Upper bounds in seconds, for latencies from a tenth of a millisecond to a minute.
TIME_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Upper bounds for histograms of plain numbers (roster items, messages per lookup).
COUNT_BUCKETS: tuple[float, ...] = (
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
)  # fmt: skip


@dataclass(frozen=True)
class Family:
    """Where one internal metric goes in the exposition."""

    name: str  # the family's name, e.g. amoc_xmpp_ttd_seconds (a counter's ends in _total)
    kind: str  # counter, gauge or histogram
    help: str
    labels: tuple[tuple[str, str], ...] = ()  # taken out of the internal name
    scale: float = 1.0  # internal value * scale = exposed value (ms -> s: 0.001)

    @property
    def buckets(self) -> tuple[float, ...]:
        """The `le` bounds of a histogram family."""
        return TIME_BUCKETS if self.scale != 1.0 else COUNT_BUCKETS


# (internal name pattern, family base name, help). The named groups become labels; the
# first pattern that matches wins. Their totals (`xmpp.logins.failed`) keep their own family.
_LABELLED: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(pattern), base, text)
    for pattern, base, text in (
        (r"xmpp\.logins\.failed\.(?P<reason>[^.]+)", "xmpp_login_failures",
         "failed logins by reason (auth, unknown_user, tls, refused, timeout, closed...)"),
        (r"xmpp\.iq\.(?P<kind>.+)\.time_ms", "xmpp_iq_time",
         "IQ round trips by kind of request, answered ones"),
        (r"xmpp\.iq\.(?P<kind>.+)\.errors", "xmpp_iq_errors", "IQ error answers by kind"),
        (r"xmpp\.iq\.(?P<kind>.+)\.timeouts", "xmpp_iq_timeouts", "IQ requests not answered "
         "in time, by kind"),
        (r"xmpp\.muc\.joins\.failed\.(?P<condition>[^.]+)", "xmpp_muc_join_failures",
         "refused room joins by error condition"),
        (r"xmpp\.registrations\.failed\.(?P<condition>[^.]+)", "xmpp_registration_failures",
         "refused in-band registrations by error condition"),
        (r"xmpp\.unregistrations\.failed\.(?P<condition>[^.]+)", "xmpp_unregistration_failures",
         "failed account removals by condition"),
        (r"xmpp\.presences\.received\.(?P<kind>[^.]+)", "xmpp_presences_received_by_kind",
         "presences received by type (available, unavailable, subscribe...)"),
        (r"throttle\.(?P<throttle>.+)\.(?P<what>requests|executions|steps)", "throttle_{what}",
         "throttle {what}, by throttle"),
        (r"throttle\.(?P<throttle>.+)\.rate", "throttle_rate",
         "a throttle's current rate (executions per interval)"),
        (r"coordinator\.(?P<coordinator>.+)\.(?P<what>batches|users)", "coordinator_{what}",
         "coordinator {what}, by coordinator"),
    )
)  # fmt: skip

# What the common metrics mean (the help line); others get a generic one.
HELP: dict[str, str] = {
    "users.started": "users started",
    "users.running": "users running now",
    "users.failed": "user runs that raised",
    "users.finished": "users that did all their runs",
    "users.abandoned": "users that ignored cancellation at a stop",
    "scenario.runs": "runs of the scenario's start, over all users",
    "xmpp.logins.ok": "successful XMPP logins",
    "xmpp.logins.failed": "failed XMPP logins, every reason",
    "xmpp.login_time_ms": "time from connect to a bound session",
    "xmpp.connected": "XMPP connections open now",
    "xmpp.messages.sent": "chat messages sent",
    "xmpp.messages.received": "chat messages received",
    "xmpp.messages.errors": "error replies to messages",
    "xmpp.messages.lost": "messages unacknowledged when a resumption failed",
    "xmpp.messages.missing": "messages a receiver waited for in vain",
    "xmpp.disconnects": "connections lost during a run",
    "xmpp.ttd_ms": "time to delivery of stamped chat messages",
    "xmpp.muc.ttd_ms": "time to delivery of stamped groupchat messages, per receiver",
    "xmpp.pubsub.ttd_ms": "time to delivery of stamped PubSub items",
    "xmpp.presences.ttd_ms": "time to delivery of stamped presence updates",
    "xmpp.mam.lookup_time_ms": "time of a whole archive lookup (every page)",
    "xmpp.sm.resume_time_ms": "time to resume a stream (XEP-0198)",
    "cluster.nodes.up": "slave nodes up (a master's)",
    "cluster.users.lost": "users lost with their node (a master's)",
    "cluster.control.bytes_out": "control-plane bytes sent",
    "cluster.control.bytes_in": "control-plane bytes received",
    "cluster.clock_offset_ms": "a slave's clock minus the master's, as measured and corrected "
    "by (amoc.cluster.clock)",
    "node.cpu_ms": "CPU this node's process used, every thread (amoc.health)",
    "node.loop_lag_ms": "how late this node's event loop ran a timer (amoc.health)",
    "node.loop_busy_ms": "time this node's loop thread ran or waited for a CPU (amoc.health)",
}

_KINDS = ("counter", "gauge", "histogram")


def _clean(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", text)


def _units(base: str, kind: str) -> tuple[str, float]:
    """The base name with its unit Prometheus' way, and the scale of the values."""
    if base.endswith("_ms"):
        return base[: -len("_ms")] + "_seconds", 0.001
    match = re.fullmatch(r"(.*)bytes_(in|out|sent|received)", base)
    if match:
        return f"{match.group(1)}{match.group(2)}_bytes", 1.0
    if kind == "counter" and base.endswith("_total"):
        base = base[: -len("_total")]
    return base, 1.0


def family(kind: str, name: str) -> Family:
    """The family of the internal metric `name` of `kind` (counter, gauge, histogram)."""
    if kind not in _KINDS:
        raise ValueError(f"metric kind {kind!r} is not one of {', '.join(_KINDS)}")
    base, text = _clean(name), HELP.get(name, "")
    labels: tuple[tuple[str, str], ...] = ()
    for pattern, template, help_text in _LABELLED:
        match = pattern.fullmatch(name)
        if match:
            groups = match.groupdict()
            what = groups.pop("what", "")
            base = _clean(template.format(what=what) + ("_ms" if name.endswith("_ms") else ""))
            labels = tuple(sorted(groups.items()))
            text = help_text.format(what=what)
            break
    base, scale = _units(base, kind)
    full = PREFIX + base + ("_total" if kind == "counter" else "")
    if not text:
        text = f"amoc {kind} {name}"
    unit = " (seconds)" if scale != 1.0 else ""
    return Family(full, kind, text + unit, labels, scale)
