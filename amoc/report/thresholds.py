"""Pass/fail thresholds for headless runs: `xmpp.ttd_ms.p99 < 50`, `error_ratio <= 0.01`."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from amoc.errors import AmocError
from amoc.report.figures import errors, iq_requests

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
}
_FORM = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|==|<|>)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*$")
_STATS = ("count", "mean", "p50", "p90", "p99", "max")


class ThresholdError(AmocError):
    """A threshold that cannot be read."""


@dataclass(frozen=True)
class Threshold:
    """`metric op number`, a condition the run must meet."""

    text: str
    metric: str
    op: str
    limit: float

    def value(self, snapshot: Mapping[str, Any], summary: Mapping[str, Any]) -> float:
        """The metric's value at the end of the run (NaN when it was never recorded)."""
        if self.metric == "error_ratio":
            return error_ratio(snapshot)
        if self.metric in summary and not isinstance(summary[self.metric], dict):
            return float(summary[self.metric])
        name, _, stat = self.metric.rpartition(".")
        found = summary.get(name)
        if isinstance(found, dict) and stat in _STATS:
            return float(found[stat])
        return math.nan

    def holds(self, value: float) -> bool:
        """Whether the run met it (a metric never recorded does not)."""
        return not math.isnan(value) and _OPS[self.op](value, self.limit)


def parse(text: str) -> Threshold:
    """`xmpp.ttd_ms.p99 < 50` -> Threshold, or ThresholdError saying what is wrong."""
    match = _FORM.match(text)
    if not match:
        raise ThresholdError(
            f"threshold {text!r}: expected METRIC OP NUMBER, e.g. 'xmpp.ttd_ms.p99 < 50' or "
            "'error_ratio <= 0.01' (OP one of < <= > >= ==)"
        )
    metric, op, limit = match.groups()
    return Threshold(text.strip(), metric, op, float(limit))


def error_ratio(snapshot: Mapping[str, Any]) -> float:
    """Errors / attempts: (failed runs + failed logins + error replies + IQ errors and
    timeouts + lost messages + lost connections) / (runs + logins + messages sent + IQ
    requests)."""
    counters = snapshot.get("counters", {})
    attempts = sum(
        counters.get(n, 0)
        for n in ("scenario.runs", "xmpp.logins.ok", "xmpp.logins.failed", "xmpp.messages.sent")
    )
    attempts += iq_requests(snapshot)
    return errors(snapshot) / attempts if attempts else 0.0


def check(
    thresholds: list[Threshold], snapshot: Mapping[str, Any], summary: Mapping[str, Any]
) -> list[str]:
    """A line per threshold the run failed (empty: all held)."""
    failed = []
    for t in thresholds:
        value = t.value(snapshot, summary)
        if not t.holds(value):
            seen = "never recorded" if math.isnan(value) else f"was {value:.4g}"
            failed.append(f"threshold failed: {t.text} ({seen})")
    return failed
