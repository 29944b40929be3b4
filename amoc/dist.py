"""`amoc_dist` and `nodes()`: the console's face of the master (the same verbs as amoc_local)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from amoc.cluster.master import Master
from amoc.local import Call, RunnerConsole, in_loop


class ClusterReply(dict[str, Any]):
    """A cluster command's answer: a plain dict that prints as a few readable lines."""

    def __repr__(self) -> str:
        users = self.get("users", {})
        nodes = self.get("nodes", {})
        text = f"{self.get('state')}"
        if self.get("scenario"):
            text += f" {self['scenario']}"
        text += (
            f": {users.get('placed', 0)} placed, {users.get('running', 0)} running, "
            f"{users.get('pending', 0)} pending, {users.get('lost', 0)} lost, "
            f"{users.get('errors', 0)} errors; nodes {nodes.get('up', 0)} up, "
            f"{nodes.get('down', 0)} down"
        )
        if isinstance(self.get("removed"), dict):
            count = sum(len(ids) for ids in self["removed"].values())
            text = f"removed {count} users ({'force' if self['force'] else 'gentle'}); " + text
        return text + "\n" + repr(NodeTable(self.get("node", [])))


def _clock(offset_ms: float | None, error_ms: float | None) -> str:
    """A node's clock offset to the master's, as the nodes table shows it."""
    if offset_ms is None:
        return "?"
    return f"{offset_ms:+.1f}ms" + (f" +-{error_ms:.1f}" if error_ms is not None else "")


class NodeTable(list[dict[str, Any]]):
    """Nodes as a table."""

    def __repr__(self) -> str:
        if not self:
            return "no slave node has joined yet"
        rows = [
            ("node", "host", "up", "placed", "running", "pending", "errors", "heartbeat", "clock",
             "state")
        ]  # fmt: skip
        for n in self:
            rows.append(
                (
                    n["name"],
                    n["host"],
                    "up" if n["up"] else "DOWN",
                    str(n.get("placed", "")),
                    str(n["running"]),
                    str(n["pending"]),
                    str(n["errors"]),
                    f"{n['last_heartbeat_s']:.1f}s ago",
                    _clock(n.get("clock_offset_ms"), n.get("clock_error_ms")),
                    f"{n['state'] or ''} {n['scenario'] or ''}".strip(),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
        )


class AmocDist(RunnerConsole):
    """Run a scenario over the slave nodes: do, add, remove, stop, status, placement."""

    def __init__(
        self, master: Master, call: Call, search: Callable[..., Any] | None = None
    ) -> None:
        super().__init__(master, call, ClusterReply, search)
        self._master = master

    def do(
        self,
        scenario: str,
        first: int,
        last: int,
        nodes: list[str] | None = None,
        comment: str = "",
        settings: dict[str, Any] | None = None,
        strategy: str = "round_robin",
        rebalance: bool = False,
    ) -> ClusterReply:
        """Start users first..last spread over `nodes` (default: every slave that is up)."""
        run = self._master.do(scenario, first, last, settings, comment, nodes=nodes,
                              strategy=strategy, rebalance=rebalance)  # fmt: skip
        return ClusterReply(self._call(run).to_dict())

    def change_rate(self, name: str, rate: float, interval: float | None = None) -> dict[str, Any]:
        """Change throttle `name` on every slave (each applies its share of `rate`)."""
        result: dict[str, Any] = self._call(
            self._master.throttle("change_rate", name, rate, interval)
        )
        return result

    def change_rate_gradually(
        self, name: str, from_rate: float, to_rate: float, step_interval: float, steps: int
    ) -> dict[str, Any]:
        """Go from one rate to another in `steps` steps, one every `step_interval` ms."""
        result: dict[str, Any] = self._call(
            self._master.throttle(
                "change_rate_gradually", name, from_rate, to_rate, step_interval, steps
            )
        )
        return result

    def placement(self) -> dict[str, list[int]]:
        """Node -> ids placed on it."""
        result: dict[str, list[int]] = self._call(in_loop(self._master.placement))
        return result

    def nodes(self) -> NodeTable:
        """Every slave the master knows: up or down, users, errors, last heartbeat."""
        views = self._call(in_loop(self._master.node_views))
        return NodeTable(dataclasses.asdict(v) for v in views)

    def wait(self, running: int, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until `running` users run over the cluster (or `timeout` s); the status."""
        deadline = time.monotonic() + timeout
        status = self.status()
        while status["users"]["running"] < running and time.monotonic() < deadline:
            time.sleep(0.1)
            status = self.status()
        return status

    def __repr__(self) -> str:
        return (
            "amoc_dist: do(scenario, first, last, nodes=None, comment='', settings=None, "
            "strategy='round_robin', rebalance=False), add(count), remove(count, force=False), "
            "stop(), status(), placement(), nodes(), wait(running), change_rate(name, rate), "
            "change_rate_gradually(name, from_rate, to_rate, step_interval, steps), "
            "find_capacity(scenario, thresholds, users='START:STEP:MAX', hold='60s')"
        )
