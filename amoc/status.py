"""What a run looks like, typed: the `Runner` protocol and the status it returns.

Two runners implement it: `runner.Controller` (one node's users) and `cluster.Master`
(users spread over slaves). The console (`amoc.local.RunnerConsole`) and the REST API
(`amoc.api.provider.RunnerProvider`) each have one adapter over it. Statuses are frozen
dataclasses; `to_dict()` gives the plain map that JSON, msgpack and the console print.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from amoc.errors import RunnerError


@dataclass(frozen=True)
class UserCounts:
    """One node's users now, and what they did since the run started."""

    running: int = 0
    stopping: int = 0
    pending: int = 0
    started: int = 0
    finished: int = 0
    removed: int = 0
    failed_runs: int = 0
    runs: int = 0
    abandoned: int = 0


@dataclass(frozen=True)
class RunStatus:
    """One node's run."""

    state: str  # idle, starting, running, finished, stopping
    scenario: str | None = None
    since: float | None = None
    comment: str = ""
    users: UserCounts = field(default_factory=UserCounts)
    next_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A plain map (JSON, msgpack, the console)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunStatus:
        """Back from `to_dict` (a heartbeat); unknown keys are ignored, missing ones zero."""
        users = data.get("users")
        known = UserCounts.__dataclass_fields__
        counts = {k: int(v) for k, v in (users or {}).items() if k in known}
        since = data.get("since")
        next_id = data.get("next_id")
        return cls(
            state=str(data.get("state") or "idle"),
            scenario=_text_or_none(data.get("scenario")),
            since=float(since) if isinstance(since, int | float) else None,
            comment=str(data.get("comment") or ""),
            users=UserCounts(**counts),
            next_id=next_id if isinstance(next_id, int) else None,
        )


@dataclass(frozen=True)
class NodeView:
    """A slave as the master knows it."""

    name: str
    host: str
    pid: int
    up: bool
    capacity: float
    last_heartbeat_s: float
    state: str | None
    scenario: str | None
    placed: int
    running: int
    pending: int
    errors: int
    downs: int
    clock_offset_ms: float | None = None  # its clock minus the master's (None: not measured)
    clock_error_ms: float | None = None  # the bound of that estimate's error


@dataclass(frozen=True)
class ClusterUsers:
    """The cluster's users: placed by the master, running as the slaves report."""

    placed: int = 0
    lost: int = 0
    running: int = 0
    pending: int = 0
    finished: int = 0
    errors: int = 0


@dataclass(frozen=True)
class NodeCounts:
    """How many slaves are up and down."""

    up: int = 0
    down: int = 0


@dataclass(frozen=True)
class ClusterStatus:
    """The cluster's run, its totals and every node."""

    state: str
    scenario: str | None = None
    comment: str = ""
    since: float | None = None
    users: ClusterUsers = field(default_factory=ClusterUsers)
    next_id: int | None = None
    nodes: NodeCounts = field(default_factory=NodeCounts)
    node: tuple[NodeView, ...] = ()
    strategy: str | None = None
    rebalance: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A plain map (JSON, the console); `node` is a list."""
        out = asdict(self)
        out["node"] = list(out["node"])
        return out


Status = RunStatus | ClusterStatus


@dataclass(frozen=True)
class Removal:
    """What `remove` took away (ids, or node -> ids on a cluster) and the status after."""

    removed: list[int] | dict[str, list[int]]
    force: bool
    status: Status

    @property
    def count(self) -> int:
        """How many users were removed."""
        if isinstance(self.removed, dict):
            return sum(len(ids) for ids in self.removed.values())
        return len(self.removed)

    def to_dict(self) -> dict[str, Any]:
        """The status's map with `removed` and `force` added."""
        return {"removed": self.removed, "force": self.force, **self.status.to_dict()}


class Runner(Protocol):
    """Runs one scenario's users: on this node (Controller) or over a cluster (Master)."""

    async def do(
        self,
        scenario: str,
        first: int,
        last: int,
        settings: Mapping[str, Any] | None = None,
        comment: str = "",
    ) -> Status:
        """Start users `first`..`last` of `scenario` with run-time `settings`."""
        ...

    async def add(self, count: int) -> Status:
        """Start `count` more users with the next ids."""
        ...

    async def remove(self, count: int, force: bool = False) -> Removal:
        """Remove the `count` newest users; `force` kills them now."""
        ...

    async def stop(self) -> Status:
        """Stop the scenario and every user; the final figures."""
        ...

    def status(self) -> Status:
        """The run now (call it in the runner's event loop)."""
        ...


def check_count(count: Any, verb: str) -> None:
    """Refuse a count for `add` / `remove` that is not an integer >= 1 (any runner)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise RunnerError(f"{verb}: count must be an integer >= 1, got {count!r}")


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
