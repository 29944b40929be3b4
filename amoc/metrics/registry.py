"""Named counters, gauges and histograms of one node, and how snapshots merge."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from amoc.metrics.histogram import Histogram, describe, merge_snapshots

ANNOTATIONS_KEPT = 1000


class Counter:
    """A number that only grows (users started, messages sent...)."""

    __slots__ = ("name", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0

    def inc(self, n: int = 1) -> None:
        """Add `n` (default 1)."""
        self.value += n


class Gauge:
    """A number that goes up and down (users running, connections open)."""

    __slots__ = ("name", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value: float = 0

    def set(self, value: float) -> None:
        """Set the value."""
        self.value = value

    def inc(self, n: float = 1) -> None:
        """Add `n`."""
        self.value += n

    def dec(self, n: float = 1) -> None:
        """Subtract `n`."""
        self.value -= n


def _check_name(name: str) -> str:
    if not name or any(c.isspace() for c in name) or name.startswith(".") or name.endswith("."):
        raise ValueError(f"metric name {name!r} must be dotted words without spaces")
    return name


class Registry:
    """Every metric of a node, by name; get-or-create, so any module can ask for one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, Counter] = {}
        self.gauges: dict[str, Gauge] = {}
        self.histograms: dict[str, Histogram] = {}
        self.annotations: deque[dict[str, Any]] = deque(maxlen=ANNOTATIONS_KEPT)
        self._listeners: list[Any] = []
        # Where other snapshots come from that this registry's view includes (merge_with).
        self._others: Callable[[], Iterable[Mapping[str, Any]]] | None = None
        # This node's name and where every node's snapshot comes from, by name (label_with).
        self._name = ""
        self._sample: Callable[[], Mapping[str, Any]] | None = None
        # Series that are no node's (a monitored server's, labelled by host): collect_with.
        self._collect: Callable[[], Iterable[tuple[Any, tuple[tuple[str, str], ...], float]]]
        self._collect = _nothing

    def counter(self, name: str) -> Counter:
        """The counter called `name`, created at 0 when new."""
        found = self.counters.get(name)
        if found is None:
            with self._lock:
                found = self.counters.setdefault(name, Counter(_check_name(name)))
        return found

    def gauge(self, name: str) -> Gauge:
        """The gauge called `name`, created at 0 when new."""
        found = self.gauges.get(name)
        if found is None:
            with self._lock:
                found = self.gauges.setdefault(name, Gauge(_check_name(name)))
        return found

    def histogram(self, name: str) -> Histogram:
        """The histogram called `name`, created empty when new."""
        found = self.histograms.get(name)
        if found is None:
            with self._lock:
                found = self.histograms.setdefault(name, Histogram(_check_name(name)))
        return found

    def annotate(
        self, what: str, comment: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record an event (a scenario started or stopped) for Graphite's annotations."""
        event = {
            "what": _check_name(what),
            "comment": comment,
            "tags": dict(tags or {}),
            "when": time.time(),
        }
        self.annotations.append(event)
        for listener in list(self._listeners):
            listener(event)
        return event

    def on_annotation(self, listener: Any) -> None:
        """Call `listener(event)` for each new annotation."""
        self._listeners.append(listener)

    def off_annotation(self, listener: Any) -> None:
        """Stop calling `listener`."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def merge_with(self, others: Callable[[], Iterable[Mapping[str, Any]]] | None) -> None:
        """Make `snapshot()` include the snapshots `others()` returns (None: only ours)."""
        self._others = others

    def label_with(self, name: str, sample: Callable[[], Mapping[str, Any]] | None) -> None:
        """Make `by_node()` name each node's snapshot: `sample()` gives {"nodes": {name:
        snapshot}, "scenario": name or None} (a master's: its slaves), and this registry's
        own joins them under `name`. None: `by_node()` gives the merged view, unnamed."""
        self._name, self._sample = name, sample

    def collect_with(
        self, collect: Callable[[], Iterable[tuple[Any, tuple[tuple[str, str], ...], float]]] | None
    ) -> None:
        """Make `collected()` (and so /metrics) include `collect()`'s samples: (family,
        labels, value) of series that are no node's own (None: none)."""
        self._collect = collect or _nothing

    def collected(self) -> list[tuple[Any, tuple[tuple[str, str], ...], float]]:
        """The samples of `collect_with`'s source."""
        return list(self._collect())

    @property
    def node_name(self) -> str:
        """This node's name as `label_with` gave it ("" until then)."""
        return self._name

    def by_node(self) -> tuple[dict[str, dict[str, Any]], str | None]:
        """Every node's snapshot by node name, and the scenario that runs (None: idle or
        unknown); without `label_with`, one snapshot (the merged view) under the name ""."""
        if self._sample is None:
            return {"": self.snapshot()}, None
        view = self._sample()
        nodes = {str(name): dict(snap) for name, snap in view.get("nodes", {}).items() if snap}
        nodes.setdefault(self._name, self.local_snapshot())
        scenario = view.get("scenario")
        return nodes, str(scenario) if scenario else None

    def snapshot(self) -> dict[str, Any]:
        """This registry's values, merged with those of `merge_with`'s source if any."""
        local = self.local_snapshot()
        others = list(self._others()) if self._others is not None else []
        return merge([local, *others]) if others else local

    def local_snapshot(self) -> dict[str, Any]:
        """A plain copy of this node's own values, fit for msgpack, JSON and `merge`."""
        with self._lock:
            return {
                "counters": {n: c.value for n, c in self.counters.items()},
                "gauges": {n: g.value for n, g in self.gauges.items()},
                "histograms": {n: h.snapshot() for n, h in self.histograms.items()},
                "time": time.time(),
            }

    def reset(self) -> None:
        """Forget every metric and annotation (tests, a new run on a fresh node)."""
        with self._lock:
            for c in self.counters.values():
                c.value = 0
            for g in self.gauges.values():
                g.value = 0
            for h in self.histograms.values():
                h.reset()
            self.annotations.clear()


def _nothing() -> list[tuple[Any, tuple[tuple[str, str], ...], float]]:
    return []


def merge(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One snapshot for several nodes: counters and gauges add, histograms merge exactly."""
    counters: dict[str, int] = {}
    gauges: dict[str, float] = {}
    hists: dict[str, list[Mapping[str, Any]]] = {}
    latest = 0.0
    for snap in snapshots:
        for name, value in snap.get("counters", {}).items():
            counters[name] = counters.get(name, 0) + value
        for name, value in snap.get("gauges", {}).items():
            gauges[name] = gauges.get(name, 0) + value
        for name, hist in snap.get("histograms", {}).items():
            hists.setdefault(name, []).append(hist)
        latest = max(latest, snap.get("time", 0.0))
    return {
        "counters": counters,
        "gauges": gauges,
        "histograms": {name: merge_snapshots(parts) for name, parts in hists.items()},
        "time": latest,
    }


def summary(snap: Mapping[str, Any]) -> dict[str, Any]:
    """Name to value (counters, gauges) or to count/mean/p50/p90/p99/max (histograms)."""
    out: dict[str, Any] = {}
    out.update(snap.get("counters", {}))
    out.update(snap.get("gauges", {}))
    for name, hist in snap.get("histograms", {}).items():
        out[name] = describe(hist)
    return out
