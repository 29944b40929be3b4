"""A log-bucketed histogram: fixed relative error, mergeable by adding bucket counts.

Values are put in buckets whose bounds grow by a factor `GAMMA` (1% relative accuracy), the
idea of DDSketch. Two histograms merge exactly by adding their buckets, so a master can sum
what its nodes saw, and an interval's histogram is the difference of two snapshots.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

ACCURACY = 0.01
GAMMA = (1 + ACCURACY) / (1 - ACCURACY)
_LOG_GAMMA = math.log(GAMMA)
# Values at or below this (0, negatives, sub-nanosecond noise) share bucket ZERO.
_SMALLEST = 1e-9
ZERO = -(10**6)


def bucket_of(value: float) -> int:
    """The index of the bucket that holds `value`."""
    if value <= _SMALLEST:
        return ZERO
    return math.ceil(math.log(value) / _LOG_GAMMA)


def bucket_value(index: int) -> float:
    """The representative value of a bucket (within ACCURACY of every value in it)."""
    if index == ZERO:
        return 0.0
    return 2 * GAMMA**index / (GAMMA + 1)


class Histogram:
    """A distribution of recorded values: count, sum, min, max and percentiles."""

    __slots__ = ("buckets", "count", "max", "min", "name", "sum")

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def record(self, value: float) -> None:
        """Add one value."""
        index = bucket_of(value)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100); NaN when empty."""
        return _percentile(self.buckets, self.count, q, self.min, self.max)

    @property
    def mean(self) -> float:
        """The arithmetic mean; NaN when empty."""
        return self.sum / self.count if self.count else math.nan

    def snapshot(self) -> dict[str, Any]:
        """A plain, msgpack- and JSON-friendly copy."""
        return {
            "buckets": dict(self.buckets),
            "count": self.count,
            "sum": self.sum,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
        }

    def reset(self) -> None:
        """Forget every value."""
        self.buckets.clear()
        self.count, self.sum, self.min, self.max = 0, 0.0, math.inf, -math.inf


def _percentile(
    buckets: Mapping[int, int], count: int, q: float, low: float | None, high: float | None
) -> float:
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if count <= 0:
        return math.nan
    # Nearest rank: the smallest value with at least q% of the values at or below it.
    rank = max(math.ceil(q / 100 * count), 1)
    if rank == count and high is not None:
        return high
    if rank == 1 and low is not None:
        return low
    seen = 0
    for index in sorted(buckets):
        seen += buckets[index]
        if seen >= rank:
            value = bucket_value(index)
            # Exact extremes are known; keep the estimate within them.
            if low is not None:
                value = max(value, low)
            if high is not None:
                value = min(value, high)
            return value
    return high if high is not None else math.nan


def merge_snapshots(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One histogram snapshot that holds every value of `snapshots`."""
    buckets: dict[int, int] = {}
    count, total = 0, 0.0
    low: float | None = None
    high: float | None = None
    for snap in snapshots:
        for index, n in snap["buckets"].items():
            buckets[int(index)] = buckets.get(int(index), 0) + n
        count += snap["count"]
        total += snap["sum"]
        if snap["min"] is not None:
            low = snap["min"] if low is None else min(low, snap["min"])
        if snap["max"] is not None:
            high = snap["max"] if high is None else max(high, snap["max"])
    return {"buckets": buckets, "count": count, "sum": total, "min": low, "max": high}


def difference(newer: Mapping[str, Any], older: Mapping[str, Any] | None) -> dict[str, Any]:
    """The values recorded between two snapshots of one histogram.

    Min and max of the interval are not kept by the buckets; they are estimated from the
    lowest and highest bucket that grew (within ACCURACY).
    """
    if older is None:
        return dict(newer)
    buckets = {
        int(i): n - older["buckets"].get(i, older["buckets"].get(int(i), 0))
        for i, n in newer["buckets"].items()
    }
    buckets = {i: n for i, n in buckets.items() if n > 0}
    if not buckets:
        return {"buckets": {}, "count": 0, "sum": 0.0, "min": None, "max": None}
    low = bucket_value(min(buckets))
    high = bucket_value(max(buckets))
    if newer["max"] is not None and newer["max"] != older["max"]:
        high = newer["max"]  # the interval set a new all-time maximum: it is exact
    return {
        "buckets": buckets,
        "count": newer["count"] - older["count"],
        "sum": newer["sum"] - older["sum"],
        "min": low,
        "max": high,
    }


def describe(snap: Mapping[str, Any]) -> dict[str, float | int]:
    """count, mean, p50, p90, p99 and max of a histogram snapshot."""
    count = snap["count"]
    buckets = {int(i): n for i, n in snap["buckets"].items()}

    def pct(q: float) -> float:
        return _percentile(buckets, count, q, snap["min"], snap["max"])

    return {
        "count": count,
        "mean": snap["sum"] / count if count else math.nan,
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "max": snap["max"] if snap["max"] is not None else math.nan,
    }
