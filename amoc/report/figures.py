"""The figures of a run from metric snapshots: users, rates, TTD percentiles, errors."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

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
)

_ERRORS = ("users.failed", "xmpp.logins.failed", "xmpp.messages.errors", "xmpp.disconnects")


def _counter(snap: Mapping[str, Any], name: str) -> float:
    return float(snap.get("counters", {}).get(name, 0))


def _gauge(snap: Mapping[str, Any], name: str) -> float:
    return float(snap.get("gauges", {}).get(name, 0))


def errors(snap: Mapping[str, Any]) -> float:
    """Failed user runs, failed logins, error replies and lost connections, in all."""
    return sum(_counter(snap, name) for name in _ERRORS)


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
    return {
        "target": float(target if target is not None else running),
        "running": running,
        "failed": _counter(now, "users.failed"),
        "logins_s": rate("xmpp.logins.ok"),
        "messages_s": rate("xmpp.messages.sent", "xmpp.messages.received"),
        "ttd_p50": float(ttd["p50"]),
        "ttd_p99": float(ttd["p99"]),
        "errors": errors(now),
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
