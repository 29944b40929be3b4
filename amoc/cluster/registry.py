"""The slaves a master knows: who they are, when they last beat, what they report.

A slave is known by its heartbeats. Each carries the name the slave dials with and an
`instance` token the slave draws at start, so that the master tells a restarted slave (a
new instance under a known name, the old one silent) from a second slave under the same
name (both beat): the second one is refused, and stays refused while the first beats.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amoc import metrics
from amoc.cluster import ids as id_runs
from amoc.cluster.clock import ClockOffset
from amoc.cluster.placement import RunMeta
from amoc.cluster.protocol import ProtocolError
from amoc.cluster.wire import route_of, split_route
from amoc.status import NodeView, RunStatus

log = logging.getLogger("amoc.cluster.master")

# A new instance under a known name waits this many heartbeat intervals of the old one's
# silence before it takes the name: a restart gets through, a duplicate does not.
TAKEOVER_INTERVALS = 1.5


@dataclass
class Report:
    """What a slave says of the run it carries."""

    meta: RunMeta | None = None
    runs: id_runs.Runs = field(default_factory=list)  # checked; expanded only when asked
    version: int = 0

    @property
    def ids(self) -> list[int]:
        """The ids the slave carries, ascending (a heartbeat's runs are not expanded on
        arrival: at 100 000 users that would be every id of the cluster each second)."""
        return id_runs.from_runs(self.runs)


@dataclass
class NodeInfo:
    """A slave as the master knows it."""

    name: str
    instance: str = ""
    host: str = ""
    pid: int = 0
    version: str = ""
    capacity: float = 1.0
    up: bool = True
    last_seen: float = 0.0  # monotonic
    status: RunStatus = field(default_factory=lambda: RunStatus("idle"))
    report: Report = field(default_factory=Report)
    snapshot: dict[str, Any] = field(default_factory=dict)
    downs: int = 0
    clock: ClockOffset = field(default_factory=ClockOffset)

    def view(self, now: float, placed: int) -> NodeView:
        """A picture for status(), nodes() and the REST API."""
        users = self.status.users
        return NodeView(
            name=self.name, host=self.host, pid=self.pid, up=self.up, capacity=self.capacity,
            last_heartbeat_s=round(now - self.last_seen, 2), state=self.status.state,
            scenario=self.status.scenario, placed=placed, running=users.running,
            pending=users.pending, errors=users.failed_runs, downs=self.downs,
            clock_offset_ms=self.clock.offset_ms, clock_error_ms=self.clock.error_ms,
        )  # fmt: skip


@dataclass
class _Contender:
    instance: str
    host: str
    pid: int
    first_seen: float


class NodeRegistry:
    """Heartbeats in, node records out; calls `joined`, `returned`, `restarted` and
    `refuse` so that the master acts on them."""

    def __init__(
        self,
        interval: float,
        refuse: Callable[[str, str, str], None],
        clock_warn_ms: float = 100.0,
    ) -> None:
        """`refuse(route, instance, reason)` tells a refused instance why."""
        self.interval = interval
        self.clock_warn_ms = clock_warn_ms
        self.nodes: dict[str, NodeInfo] = {}
        self._refuse = refuse
        self._contenders: dict[str, _Contender] = {}
        self._refused: dict[tuple[str, str], float] = {}  # (name, instance) -> logged at
        self._m_up = metrics.gauge("cluster.nodes.up")
        self._m_refused = metrics.counter("cluster.refused")

    def beat(self, route: str, msg: dict[str, Any]) -> tuple[NodeInfo, str] | None:
        """Take a heartbeat from `route` ("name/instance"); the node and what happened
        ("joined", "returned", "restarted", "beat"), or None when it is refused."""
        sender, instance = split_route(route)
        if msg.get("name") != sender or msg.get("instance") != instance or not instance:
            raise ProtocolError(
                f"heartbeat names {msg.get('name')!r}/{msg.get('instance')!r} "
                f"but comes from {route!r}"
            )
        status = RunStatus.from_dict(_map(msg, "status"))
        report = _report(msg)
        received = time.time()
        now = time.monotonic()
        info = self.nodes.get(sender)
        if info is None:
            info = self.nodes[sender] = NodeInfo(sender, instance)
            event = "joined"
            log.info("node %s joined (%s, pid %s)", sender, msg.get("host"), msg.get("pid"))
        elif info.instance != instance:
            if not self._may_take(info, instance, msg, now):
                return None
            event = "restarted"
            log.warning(
                "node %s restarted (%s, pid %s; was pid %s)",
                sender, msg.get("host"), msg.get("pid"), info.pid,
            )  # fmt: skip
            info.instance, info.up = instance, True
            info.clock = ClockOffset()  # another process, perhaps another clock
            self._contenders.pop(sender, None)
        elif not info.up:
            info.up = True
            event = "returned"
            log.warning("node %s is back after %.1f s", sender, now - info.last_seen)
        else:
            event = "beat"
        info.host = str(msg.get("host", ""))
        info.pid = int(msg.get("pid") or 0)
        info.version = str(msg.get("version", ""))
        capacity = msg.get("capacity")
        info.capacity = float(capacity) if isinstance(capacity, int | float) else 1.0
        info.last_seen = now
        info.status, info.report = status, report
        snap = msg.get("metrics")
        if isinstance(snap, dict):
            info.snapshot = snap
        if info.clock.add(msg.get("clock"), received):
            self._check_clock(info)
        self._count_up()
        return info, event

    def _check_clock(self, info: NodeInfo) -> None:
        """Warn once when a node's clock is further off than `clock_warn_ms` (and once more
        when it is back within)."""
        offset, error = info.clock.offset_ms, info.clock.error_ms
        if offset is None or error is None:
            return
        far = abs(offset) - error > self.clock_warn_ms
        if far and not info.clock.warned:
            log.warning(
                "node %s: its clock is %+.1f ms (+-%.1f) off the master's, more than "
                "cluster_clock_warn (%.0f ms): its TTDs are corrected by it, but check its "
                "time synchronisation (NTP)",
                info.name, offset, error, self.clock_warn_ms,
            )  # fmt: skip
        elif not far and info.clock.warned and abs(offset) + error < self.clock_warn_ms:
            log.info("node %s: its clock is within %.0f ms of the master's again", info.name,
                     self.clock_warn_ms)  # fmt: skip
        else:
            return
        info.clock.warned = far
        metrics.annotate("clock_offset", tags={"node": info.name, "offset_ms": offset})

    def _may_take(self, info: NodeInfo, instance: str, msg: dict[str, Any], now: float) -> bool:
        """Whether a new instance may take `info`'s name: the old one must be silent."""
        silent = now - info.last_seen
        if not info.up or silent > TAKEOVER_INTERVALS * self.interval:
            return True
        contender = self._contenders.get(info.name)
        if contender is None or contender.instance != instance:
            self._contenders[info.name] = _Contender(
                instance, str(msg.get("host", "")), int(msg.get("pid") or 0), now
            )
            return False  # wait: a restart shows as the old one's silence
        if info.last_seen > contender.first_seen:
            # The old instance beat after the new one appeared: two nodes share the name.
            key = (info.name, instance)
            if key not in self._refused or now - self._refused[key] > 60:
                self._refused[key] = now
                self._m_refused.inc()
                log.error(
                    "two nodes call themselves %s: %s pid %s is in the cluster, %s pid %s is "
                    "refused; give one of them another name (--name)",
                    info.name, info.host, info.pid, contender.host, contender.pid,
                )  # fmt: skip
            self._refuse(
                route_of(info.name, instance),
                instance,
                f"another node named {info.name} ({info.host}, pid {info.pid}) is in the "
                "cluster; this node stays out: restart it with another --name",
            )
        return False

    def mark_down(self, down_after: float) -> list[NodeInfo]:
        """Nodes silent for more than `down_after` s, now marked down."""
        now = time.monotonic()
        gone = []
        for info in self.nodes.values():
            if info.up and now - info.last_seen > down_after:
                info.up = False
                info.downs += 1
                gone.append(info)
                log.warning(
                    "node %s is down: no heartbeat for %.1f s", info.name, now - info.last_seen
                )
        if gone:
            self._count_up()
        return gone

    def up(self) -> list[str]:
        """The up slaves, in join order."""
        return [n.name for n in self.nodes.values() if n.up]

    def snapshots(self) -> list[dict[str, Any]]:
        """The latest metrics of every up slave."""
        return [n.snapshot for n in self.nodes.values() if n.up and n.snapshot]

    def _count_up(self) -> None:
        self._m_up.set(sum(1 for n in self.nodes.values() if n.up))


def _map(msg: dict[str, Any], name: str) -> dict[str, Any]:
    value = msg.get(name)
    if not isinstance(value, dict):
        raise ProtocolError(f"heartbeat without a {name} map")
    return value


def _report(msg: dict[str, Any]) -> Report:
    run = msg.get("run")
    if run is None:
        return Report()
    meta = RunMeta.from_dict(run)
    version = msg.get("run_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError("heartbeat: run_version must be an integer")
    return Report(meta, id_runs.checked(msg.get("ids")), version)
