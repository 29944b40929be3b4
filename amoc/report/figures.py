"""The figures of a run from metric snapshots: users, rates, TTD percentiles, errors."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from amoc import health
from amoc.metrics.histogram import describe, difference
from amoc.metrics.registry import merge

# (column, title) in the order the live view, the CSV and the report show them.
COLUMNS = (
    ("target", "target"),
    ("running", "running"),
    ("failed", "failed"),
    ("logins_s", "logins/s"),
    ("messages_s", "msgs/s"),
    ("ttd_p50", "ttd p50 ms"),
    ("ttd_p99", "ttd p99 ms"),
    ("errors", "errors"),
    ("cpu", "cpu %"),
    ("lag_p99", "lag p99 ms"),
)

_ERRORS = (
    "users.failed",
    "xmpp.logins.failed",
    "xmpp.messages.errors",
    "xmpp.messages.lost",  # the sender's count: unacknowledged when a resumption failed
    "xmpp.messages.missing",  # the receiver's: waited for in vain (scenarios count it)
    "xmpp.disconnects",
)

# Feature latencies shown when a run records them: (histogram, column prefix, title).
FEATURE_HISTOGRAMS = (
    ("xmpp.muc.ttd_ms", "muc_ttd", "groupchat TTD"),
    ("xmpp.pubsub.ttd_ms", "pubsub_ttd", "pubsub item TTD"),
    ("xmpp.mam.lookup_time_ms", "mam_lookup", "MAM lookup"),
    ("xmpp.sm.resume_time_ms", "sm_resume", "SM resume"),
)
# Feature rates shown when their counters move: (column, title, counters).
FEATURE_RATES = (
    ("muc_s", "groupchat recv/s", ("xmpp.muc.messages.received",)),
    ("pubsub_s", "items recv/s", ("xmpp.pubsub.items.received",)),
    ("presences_s", "presences/s", ("xmpp.presences.received",)),
    ("iq_s", "iq/s", ()),  # every xmpp.iq.<kind>.time_ms count
)
_IQ_PREFIX, _IQ_SUFFIX = "xmpp.iq.", ".time_ms"


def _counter(snap: Mapping[str, Any], name: str) -> float:
    return float(snap.get("counters", {}).get(name, 0))


def _gauge(snap: Mapping[str, Any], name: str) -> float:
    return float(snap.get("gauges", {}).get(name, 0))


def iq_kinds(snap: Mapping[str, Any]) -> list[str]:
    """The IQ kinds a snapshot has timings of (`xmpp.iq.<kind>.time_ms`)."""
    return sorted(
        name[len(_IQ_PREFIX) : -len(_IQ_SUFFIX)]
        for name in snap.get("histograms", {})
        if name.startswith(_IQ_PREFIX) and name.endswith(_IQ_SUFFIX)
    )


def iq_failures(snap: Mapping[str, Any]) -> float:
    """IQ requests answered with an error or not answered in time, over every kind."""
    return sum(
        float(value)
        for name, value in snap.get("counters", {}).items()
        if name.startswith(_IQ_PREFIX) and name.endswith((".errors", ".timeouts"))
    )


def iq_requests(snap: Mapping[str, Any]) -> float:
    """IQ requests answered (with a result or an error) or timed out, over every kind."""
    hists = snap.get("histograms", {})
    answered = sum(_count(hists[f"{_IQ_PREFIX}{k}{_IQ_SUFFIX}"]) for k in iq_kinds(snap))
    timeouts = sum(
        float(v)
        for n, v in snap.get("counters", {}).items()
        if n.startswith(_IQ_PREFIX) and n.endswith(".timeouts")
    )
    return answered + timeouts


def _count(hist: Any) -> float:
    return float(hist["count"]) if hist else 0.0


def errors(snap: Mapping[str, Any]) -> float:
    """Failed user runs, failed logins, error replies (IQ errors and timeouts included) and
    lost connections, in all."""
    return sum(_counter(snap, name) for name in _ERRORS) + iq_failures(snap)


def features(
    now: Mapping[str, Any], before: Mapping[str, Any] | None, seconds: float
) -> dict[str, float]:
    """The feature figures a run recorded: groupchat / pubsub / MAM / SM latencies (p50, p99
    over the interval), feature rates, and per IQ kind its p99 (`iq_<kind>_p99`)."""
    dt = max(seconds, 1e-6)
    out: dict[str, float] = {}
    hists = now.get("histograms", {})
    old_hists = before.get("histograms", {}) if before else {}
    for name, prefix, _title in FEATURE_HISTOGRAMS:
        hist = hists.get(name)
        if hist:
            d = describe(difference(hist, old_hists.get(name)))
            out[f"{prefix}_p50"], out[f"{prefix}_p99"] = float(d["p50"]), float(d["p99"])
    for kind in iq_kinds(now):
        name = f"{_IQ_PREFIX}{kind}{_IQ_SUFFIX}"
        out[f"iq_{kind}_p99"] = float(describe(difference(hists[name], old_hists.get(name)))["p99"])
    for column, _title, names in FEATURE_RATES:
        if names:
            if not any(n in now.get("counters", {}) for n in names):
                continue
            moved = sum(_counter(now, n) - (_counter(before, n) if before else 0) for n in names)
        else:
            if not iq_kinds(now):
                continue
            moved = iq_requests(now) - (iq_requests(before) if before else 0)
        out[column] = moved / dt if before is not None else 0.0
    return out


def row(
    now: Mapping[str, Any],
    before: Mapping[str, Any] | None,
    seconds: float,
    target: int | None = None,
) -> dict[str, float]:
    """One row: `now` against `before` (rates and percentiles over the `seconds` between)."""
    dt = max(seconds, 1e-6)

    def rate(*names: str) -> float:
        if before is None:
            return 0.0
        return sum(_counter(now, n) - _counter(before, n) for n in names) / dt

    hist = now.get("histograms", {}).get("xmpp.ttd_ms")
    old = before.get("histograms", {}).get("xmpp.ttd_ms") if before else None
    ttd = describe(difference(hist, old)) if hist else {"p50": math.nan, "p99": math.nan}
    running = _gauge(now, "users.running")
    # The load generator's own health: CPU (% of one core; a total adds the nodes') and loop
    # lag p99 over the interval (amoc.health).
    cpu = busy = math.nan
    if before is not None and health.CPU in now.get("counters", {}):
        cpu = 100 * (_counter(now, health.CPU) - _counter(before, health.CPU)) / 1000 / dt
    if before is not None and now.get("counters", {}).get(health.BUSY):
        busy = 100 * (_counter(now, health.BUSY) - _counter(before, health.BUSY)) / 1000 / dt
    lag_hist = now.get("histograms", {}).get(health.LAG)
    lag = lag_max = math.nan
    if lag_hist and before is not None:
        got = describe(difference(lag_hist, before.get("histograms", {}).get(health.LAG)))
        if got["count"]:
            lag, lag_max = float(got["p99"]), float(got["max"])
    return {
        "target": float(target if target is not None else running),
        "running": running,
        "failed": _counter(now, "users.failed"),
        "logins_s": rate("xmpp.logins.ok"),
        "messages_s": rate("xmpp.messages.sent", "xmpp.messages.received"),
        "ttd_p50": float(ttd["p50"]),
        "ttd_p99": float(ttd["p99"]),
        "errors": errors(now),
        "cpu": max(0.0, cpu) if not math.isnan(cpu) else cpu,
        "lag_p99": lag,
        "lag_max": lag_max,
        "loop_busy": max(0.0, busy) if not math.isnan(busy) else busy,
        # A slave's clock offset to the master (amoc.cluster.clock), in its own rows.
        "clock_ms": float(now.get("gauges", {}).get("cluster.clock_offset_ms", math.nan)),
        **features(now, before, seconds),
    }


def total(snaps: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Several nodes' snapshots as one (counters and gauges add, histograms merge)."""
    return merge(snaps)


def fmt(column: str, value: float) -> str:
    """A figure as the live view prints it."""
    if math.isnan(value):
        return "-"
    if column in ("target", "running", "failed", "errors"):
        return str(int(value))
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def feature_lines(figures: Mapping[str, float]) -> list[str]:
    """The feature figures of a row as short lines (none when the run uses no feature)."""
    parts = []
    for _name, prefix, title in FEATURE_HISTOGRAMS:
        if f"{prefix}_p99" in figures:
            p50, p99 = figures[f"{prefix}_p50"], figures[f"{prefix}_p99"]
            parts.append(f"{title} p50 {fmt('', p50)} / p99 {fmt('', p99)} ms")
    for column, title, _names in FEATURE_RATES:
        if column in figures:
            parts.append(f"{title} {fmt(column, figures[column])}")
    iqs = [
        f"{key[3:-4]} {fmt('', value)}"
        for key, value in sorted(figures.items())
        if key.startswith("iq_") and key.endswith("_p99")
    ]
    lines = ["  ".join(parts[i : i + 4]) for i in range(0, len(parts), 4)]
    if iqs:
        lines.append("iq p99 ms: " + ", ".join(iqs))
    return lines
