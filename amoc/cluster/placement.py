"""A cluster run and where its users belong: pure bookkeeping, no sockets.

The master owns the *desired* placement: node -> the absolute set of ids it should run.
Every change to a node's set (do, add, remove, a rebalance) bumps the run's version and
stamps the node with it; the slave is sent its whole set with that version and applies
only the difference. Slaves report the run and version they applied and their ids, so a
node that missed a change (it was away, or restarted) is told again until it agrees, and
a restarted master rebuilds this from the reports (`Plan.adopt`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from amoc.cluster import dispatch
from amoc.cluster.protocol import ProtocolError


@dataclass
class RunMeta:
    """Everything about a run but its users: it travels with every placement message, so
    that a restarted master adopts the whole run (comment, strategy, settings...)."""

    run_id: str
    scenario: str
    digest: str
    settings: dict[str, Any]
    comment: str
    strategy: str
    chosen: list[str] | None  # nodes named in do(); None: every slave, new ones included
    rebalance: bool
    since: float
    offset: int = 0  # ids placed so far: where the rotation goes on
    next_id: int = 1
    version: int = 0

    @classmethod
    def new(
        cls,
        scenario: str,
        digest: str,
        settings: Mapping[str, Any],
        comment: str,
        strategy: str,
        chosen: list[str] | None,
        rebalance: bool,
        next_id: int,
    ) -> RunMeta:
        """A run that starts now."""
        return cls(uuid.uuid4().hex, scenario, digest, dict(settings), comment, strategy,
                   chosen, rebalance, time.time(), next_id=next_id)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """A plain map for the wire."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> RunMeta:
        """Back from the wire, checked; ProtocolError names the bad field."""
        if not isinstance(data, dict):
            raise ProtocolError("run: not a map")
        kinds: dict[str, tuple[type, ...]] = {
            "run_id": (str,), "scenario": (str,), "digest": (str,), "settings": (dict,),
            "comment": (str,), "strategy": (str,), "chosen": (list, type(None)),
            "rebalance": (bool,), "since": (int, float), "offset": (int,), "next_id": (int,),
            "version": (int,),
        }  # fmt: skip
        for name, kind in kinds.items():
            value = data.get(name)
            if not isinstance(value, kind) or (isinstance(value, bool) and bool not in kind):
                raise ProtocolError(f"run: field {name!r} is missing or not {kind}")
        chosen = data["chosen"]
        if chosen is not None and not all(isinstance(n, str) for n in chosen):
            raise ProtocolError("run: chosen must be node names")
        return cls(**{name: data[name] for name in kinds})


@dataclass
class Plan:
    """A run's desired placement (node -> ids), its lost ids and per-node versions."""

    meta: RunMeta
    source: str
    desired: dict[str, set[int]] = field(default_factory=dict)
    lost: dict[int, str] = field(default_factory=dict)  # id -> the node it was lost with
    versions: dict[str, int] = field(default_factory=dict)  # node -> version of its set

    # -- changes ------------------------------------------------------------------------

    def place(self, ids: list[int], capacities: Mapping[str, float]) -> dict[str, list[int]]:
        """Spread `ids` over the nodes by the run's strategy; node -> its new ids."""
        strategy = dispatch.get(self.meta.strategy)
        placed = strategy(ids, capacities, self.meta.offset)
        self.meta.offset += len(ids)
        for node, node_ids in placed.items():
            if node_ids:
                self.desired.setdefault(node, set()).update(node_ids)
                self.touch(node)
        return {n: v for n, v in placed.items() if v}

    def take_newest(self, count: int, nodes: Iterable[str]) -> dict[str, list[int]]:
        """Take the `count` highest ids placed on `nodes` out of the plan; node -> ids."""
        pool = sorted(((uid, n) for n in nodes for uid in self.desired.get(n, ())), reverse=True)
        taken: dict[str, list[int]] = {}
        for uid, node in pool[:count]:
            self.desired[node].discard(uid)
            taken.setdefault(node, []).append(uid)
        for node in taken:
            taken[node].sort()
            self.touch(node)
        return taken

    def lose(self, node: str) -> list[int]:
        """A node went down: its ids are lost (kept by node, to be found again)."""
        gone = sorted(self.desired.pop(node, set()))
        for uid in gone:
            self.lost[uid] = node
        if gone:
            self.touch(node)
        return gone

    def take_lost(self, node: str) -> list[int]:
        """The lost ids of `node`, out of the lost set (to place them elsewhere)."""
        mine = sorted(uid for uid, n in self.lost.items() if n == node)
        for uid in mine:
            del self.lost[uid]
        return mine

    def restore(self, node: str) -> list[int]:
        """A node is back: the ids lost with it are its own again."""
        mine = self.take_lost(node)
        if mine:
            self.desired.setdefault(node, set()).update(mine)
            self.touch(node)
        return mine

    def touch(self, node: str) -> None:
        """The node's set changed: it needs the new version."""
        self.meta.version += 1
        self.versions[node] = self.meta.version

    # -- reading ------------------------------------------------------------------------

    def ids(self, node: str) -> list[int]:
        """What `node` should run, ascending."""
        return sorted(self.desired.get(node, ()))

    def placed(self) -> int:
        """How many ids are placed on some node."""
        return sum(len(ids) for ids in self.desired.values())

    def nodes(self) -> list[str]:
        """Nodes that have, or had, a share of this run."""
        return list(dict.fromkeys([*self.versions, *self.desired]))

    def behind(self, node: str, run_id: str | None, version: int) -> bool:
        """Whether a node that reports (`run_id`, `version`) misses a change of its set."""
        if node not in self.versions:
            return run_id is not None and run_id != self.meta.run_id
        return run_id != self.meta.run_id or version < self.versions[node]

    # -- a restarted master -------------------------------------------------------------

    @classmethod
    def adopt(cls, reports: Mapping[str, tuple[RunMeta, list[int], int]], source: str) -> Plan:
        """The plan the slaves' reports (node -> meta, ids, version) describe: the run most
        of them carry, with the newest meta any of them has."""
        counts: dict[str, int] = {}
        for meta, _, _ in reports.values():
            counts[meta.run_id] = counts.get(meta.run_id, 0) + 1
        run_id = max(counts, key=lambda r: counts[r])
        mine = {n: r for n, r in reports.items() if r[0].run_id == run_id}
        newest = max((r[0] for r in mine.values()), key=lambda m: m.version)
        plan = cls(RunMeta(**asdict(newest)), source)
        for node, (_, ids, version) in mine.items():
            plan.desired[node] = set(ids)
            plan.versions[node] = version
            plan.meta.next_id = max(plan.meta.next_id, max(ids, default=0) + 1)
        plan.meta.version = max([plan.meta.version, *plan.versions.values()])
        return plan
