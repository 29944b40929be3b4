"""The load generator's own health: event-loop lag and process CPU, and the client-bound verdict.

Every node measures, in its own loop, how late its timers fire (`node.loop_lag_ms`, a
histogram: a timer due every `HEALTH_TICK_S` records how late it ran), the CPU its process
used (`node.cpu_ms`, a counter of CPU milliseconds, every thread included) and, on Linux, how
long its loop thread ran or waited for a CPU (`node.loop_busy_ms`, from its schedstat: a
loop held back by a CPU quota or by other processes waits, and its CPU alone looks low).
They are ordinary metrics: they travel in the heartbeat's snapshot, merge on the master,
and reach /metrics as `amoc_node_loop_lag_seconds`, `amoc_node_cpu_seconds_total` and
`amoc_node_loop_busy_seconds_total`.

A node is saturated in an interval when its loop lag p99 exceeds `client_lag_bound`, or its
CPU, or its loop's running-or-waiting time, exceeds `client_cpu_bound` of one core; when
that lasts `client_bound_sustain` ms, the run is client-bound: its figures include the load
generator's own delay. `Saturation` keeps
those spells per node (the recorder, the live view and the capacity search read them).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from amoc.config import Config, Param
from amoc.metrics.histogram import describe, difference
from amoc.metrics.registry import Registry

LAG = "node.loop_lag_ms"
CPU = "node.cpu_ms"
# The loop thread's time running or runnable (waiting for a CPU: other processes, a cgroup
# quota), from Linux's schedstat: near the wall time, the loop never had a moment idle.
BUSY = "node.loop_busy_ms"
HEALTH_TICK_S = 0.05  # 20 timers a second: a few microseconds of CPU per second


def _share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a share of one core (0.85 is 85%), got {value!r}")
    if not 0 < value <= 1:
        raise ValueError("must be > 0 and <= 1 (a share of one core: 0.85 is 85%)")
    return float(value)


def _positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected milliseconds as a number, got {value!r}")
    if not 0 < value < math.inf:
        raise ValueError("must be a finite number of ms > 0")
    return float(value)


PARAMETERS: tuple[Param, ...] = (
    Param(
        "client_lag_bound",
        50,
        "ms of event-loop lag (p99 over a second) above which a load node is saturated",
        _positive,
    ),
    Param(
        "client_cpu_bound",
        0.85,
        "share of one core above which a load node is saturated (0.85: 85%)",
        _share,
    ),
    Param(
        "client_bound_sustain",
        3000,
        "ms a load node must stay saturated before the run is called client-bound",
        _positive,
    ),
)


class LoopHealth:
    """Measures this node's loop lag and process CPU into `registry` (start in the loop)."""

    def __init__(self, registry: Registry, tick: float = HEALTH_TICK_S) -> None:
        self.tick = tick
        self._lag = registry.histogram(LAG)
        self._cpu = registry.counter(CPU)
        self._busy = registry.counter(BUSY)
        self._cpu_seen = 0.0  # process CPU seconds already counted (ms counted as integers)
        self._busy_seen = 0.0  # the loop thread's busy seconds already counted
        self._schedstat: str | None = None  # the loop thread's /proc schedstat, if any
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the timer chain in the running loop (from the loop's thread)."""
        self._loop = asyncio.get_running_loop()
        self._cpu_seen = time.process_time() - self._cpu.value / 1000.0
        path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        self._schedstat = path if os.path.exists(path) else None
        self._busy_seen = self._busy_now() - self._busy.value / 1000.0
        self._schedule(self._loop.time() + self.tick)

    def _busy_now(self) -> float:
        """The loop thread's seconds on a CPU plus waiting for one (0 without schedstat)."""
        if self._schedstat is None:
            return 0.0
        try:
            with open(self._schedstat) as handle:
                on_cpu, waiting = handle.read().split()[:2]
        except (OSError, ValueError):
            return self._busy_seen
        return (int(on_cpu) + int(waiting)) / 1e9

    def stop(self) -> None:
        """Stop measuring."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, due: float) -> None:
        assert self._loop is not None
        self._handle = self._loop.call_at(due, self._turn, due)

    def _turn(self, due: float) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._lag.record(max(0.0, now - due) * 1000.0)
        used = time.process_time() - self._cpu_seen
        whole = int(used * 1000.0)
        if whole > 0:
            self._cpu.inc(whole)
            self._cpu_seen += whole / 1000.0
        busy = int((self._busy_now() - self._busy_seen) * 1000.0)
        if busy > 0:
            self._busy.inc(busy)
            self._busy_seen += busy / 1000.0
        self._schedule(now + self.tick)  # from now: a late turn does not bunch the next ones


@dataclass(frozen=True)
class Reading:
    """One node's health over one interval."""

    cpu: float  # share of one core (1.0: a whole core), NaN when unknown
    lag_p99: float  # ms, NaN when no timer fired
    lag_max: float  # ms
    busy: float = math.nan  # share of the time the loop thread ran or waited for a CPU


def reading(now: Mapping[str, Any], before: Mapping[str, Any] | None) -> Reading:
    """A node's health between two of its snapshots (their own `time` stamps)."""
    nan = math.nan
    if before is None:
        return Reading(nan, nan, nan)
    seconds = float(now.get("time", 0.0)) - float(before.get("time", 0.0))
    counters, old = now.get("counters", {}), before.get("counters", {})
    cpu = busy = nan
    if CPU in counters and seconds > 0:
        cpu = max(0.0, counters[CPU] - old.get(CPU, 0)) / 1000.0 / seconds
    if counters.get(BUSY) and seconds > 0:
        busy = max(0.0, counters[BUSY] - old.get(BUSY, 0)) / 1000.0 / seconds
    hist = now.get("histograms", {}).get(LAG)
    if not hist:
        return Reading(cpu, nan, nan, busy)
    lag = describe(difference(hist, before.get("histograms", {}).get(LAG)))
    if not lag["count"]:
        return Reading(cpu, nan, nan, busy)
    return Reading(cpu, float(lag["p99"]), float(lag["max"]), busy)


@dataclass(frozen=True)
class Bounds:
    """When a node counts as saturated, and for how long before a run is client-bound."""

    lag_ms: float = 50.0
    cpu: float = 0.85
    sustain_s: float = 3.0

    @classmethod
    def from_config(cls, config: Config) -> Bounds:
        """The bounds the settings give."""
        config.declare(PARAMETERS)
        return cls(
            float(config.get("client_lag_bound")),
            float(config.get("client_cpu_bound")),
            float(config.get("client_bound_sustain")) / 1000.0,
        )

    def why(self, r: Reading) -> str | None:
        """What saturates a node in this reading (None: healthy)."""
        if r.lag_p99 > self.lag_ms:
            return f"loop lag p99 {r.lag_p99:.0f} ms > {self.lag_ms:g} ms"
        if r.cpu > self.cpu:
            return f"CPU {r.cpu:.0%} of a core > {self.cpu:.0%}"
        if r.busy > self.cpu:  # it wanted a core: running, or waiting for one it did not get
            got = f", on a CPU {r.cpu:.0%}" if not math.isnan(r.cpu) else ""
            return f"event loop running or waiting for a CPU {r.busy:.0%} of the time{got}"
        return None


@dataclass
class Spell:
    """A stretch of time in which one node was saturated (times: the run's axis, s)."""

    node: str
    start: float
    end: float
    why: str
    cpu: float  # the highest CPU share seen in it
    lag_p99: float  # the highest lag p99 seen in it (ms)
    busy: float = math.nan  # the highest share of time its loop ran or waited for a CPU

    @property
    def seconds(self) -> float:
        """How long it lasted."""
        return self.end - self.start

    def starved(self, bound: float) -> bool:
        """Whether the node lacked CPU in it (its CPU, or its loop's running-or-waiting
        time, above `bound`), not only late timers: a burst of replies from a saturated
        server makes a loop late too, without the node being short of CPU."""
        return self.cpu > bound or self.busy > bound

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly."""
        return {
            "node": self.node,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "why": self.why,
            "cpu": _round(self.cpu),
            "lag_p99_ms": _round(self.lag_p99),
            "busy": _round(self.busy),
        }


def _highest(a: float, b: float) -> float:
    if math.isnan(a):
        return b
    return a if math.isnan(b) else max(a, b)


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


@dataclass
class Saturation:
    """Per node, the spells of saturation in a run; those that lasted `sustain_s` count."""

    bounds: Bounds = field(default_factory=Bounds)
    spells: list[Spell] = field(default_factory=list)  # ended or still open, in time order
    _open: dict[str, Spell] = field(default_factory=dict)
    _healthy: set[str] = field(default_factory=set)  # open spells just read healthy once

    def add(self, node: str, t0: float, t1: float, r: Reading) -> bool:
        """Note a node's reading over [t0, t1]; whether it is saturated now. A spell
        survives one healthy reading (a saturated node's lag dips under the bound at times):
        two in a row end it."""
        why = self.bounds.why(r)
        spell = self._open.get(node)
        if why is None:
            if spell is not None and node not in self._healthy:
                self._healthy.add(node)
                return False
            self._open.pop(node, None)
            self._healthy.discard(node)
            return False
        self._healthy.discard(node)
        if spell is None:
            spell = Spell(node, t0, t1, why, r.cpu, r.lag_p99, r.busy)
            self._open[node] = spell
            self.spells.append(spell)
        spell.end = t1
        spell.cpu = _highest(spell.cpu, r.cpu)
        spell.lag_p99 = _highest(spell.lag_p99, r.lag_p99)
        spell.busy = _highest(spell.busy, r.busy)
        return True

    def bound(self, since: float = -math.inf, until: float = math.inf) -> list[Spell]:
        """The sustained spells that overlap [since, until]."""
        return [
            s
            for s in self.spells
            if s.seconds >= self.bounds.sustain_s - 1e-6 and s.end > since and s.start < until
        ]

    def starved(self, since: float = -math.inf, until: float = math.inf) -> list[Spell]:
        """The sustained spells that overlap [since, until] in which the node lacked CPU."""
        return [s for s in self.bound(since, until) if s.starved(self.bounds.cpu)]

    def now_bound(self) -> list[Spell]:
        """The sustained spells still going on."""
        return [s for s in self._open.values() if s.seconds >= self.bounds.sustain_s - 1e-6]

    def verdict(self, since: float = -math.inf, until: float = math.inf) -> str | None:
        """The client-bound line (None: the load generator kept up)."""
        return verdict_line(self.bound(since, until))


CLIENT_BOUND = "client-bound: figures include the load generator's delay"


def _why(spell: Spell) -> str:
    """What saturated a node over a spell: its first reading's reason, and the CPU it was
    short of when it was (its highest CPU and running-or-waiting shares)."""
    if math.isnan(spell.busy) or spell.why.startswith(("CPU", "event loop running")):
        return spell.why
    return f"{spell.why}; CPU {spell.cpu:.0%}, running or waiting for a CPU {spell.busy:.0%}"


def verdict_line(spells: list[Spell]) -> str | None:
    """`client-bound: ... (node s1@h: CPU 97% of a core > 85% for 12 s)`, or None."""
    if not spells:
        return None
    worst: dict[str, Spell] = {}
    for s in spells:
        if s.node not in worst or s.seconds > worst[s.node].seconds:
            worst[s.node] = s
    parts = [f"node {n}: {_why(s)} for {s.seconds:.0f} s" for n, s in sorted(worst.items())]
    return f"{CLIENT_BOUND} ({'; '.join(parts)})"
