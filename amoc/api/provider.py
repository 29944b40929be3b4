"""What the API drives: a ClusterProvider, made by `RunnerProvider` over any `Runner`.

A node alone gets `local_provider` (its controller), a master `master_provider` (the
cluster); the API's routes do not change.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from amoc import __version__
from amoc.metrics.events import ADDED, REMOVED, marked
from amoc.runner import Controller
from amoc.status import Runner

if TYPE_CHECKING:
    from amoc.cluster.master import Master


class ClusterProvider(Protocol):
    """The verbs behind /api/status, /api/cluster, /api/run, add, remove and stop."""

    async def status(self) -> dict[str, Any]:
        """State, scenario, users and since when, with the node's identity and version."""
        ...

    async def nodes(self) -> list[dict[str, Any]]:
        """One entry per load-generating node."""
        ...

    async def do(
        self, scenario: str, first: int, last: int, settings: dict[str, Any], comment: str
    ) -> dict[str, Any]:
        """Start users `first`..`last` of `scenario` with run-time `settings`."""
        ...

    async def add(self, count: int) -> dict[str, Any]:
        """Start `count` more users with the next ids."""
        ...

    async def remove(self, count: int, force: bool) -> dict[str, Any]:
        """Remove the `count` newest users, at once when `force`."""
        ...

    async def stop(self) -> dict[str, Any]:
        """Stop the scenario and every user."""
        ...


class RunnerProvider:
    """The REST API's adapter over a `Runner` (runs in the runner's loop): a node's own
    controller (`role` "standalone") or a cluster's master ("master")."""

    def __init__(
        self,
        runner: Runner,
        name: str,
        role: str,
        nodes: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.runner = runner
        self.name = name
        self.role = role
        self._nodes = nodes

    def _identity(self) -> dict[str, Any]:
        return {"node": self.name, "role": self.role, "pid": os.getpid(), "version": __version__}

    async def status(self) -> dict[str, Any]:
        """The run now, with this node's identity."""
        return {**self._identity(), **self.runner.status().to_dict()}

    async def nodes(self) -> list[dict[str, Any]]:
        """The load-generating nodes (this one alone, unless `nodes` says otherwise)."""
        return self._nodes() if self._nodes is not None else [await self.status()]

    async def do(
        self, scenario: str, first: int, last: int, settings: dict[str, Any], comment: str
    ) -> dict[str, Any]:
        """Start users `first`..`last` of `scenario`."""
        status = await self.runner.do(scenario, first, last, settings, comment)
        return {**self._identity(), **status.to_dict()}

    async def add(self, count: int) -> dict[str, Any]:
        """Add users."""
        status = await marked(self.runner.add(count), ADDED, count=count)
        return {**self._identity(), **status.to_dict()}

    async def remove(self, count: int, force: bool) -> dict[str, Any]:
        """Remove the newest users."""
        removal = await marked(self.runner.remove(count, force), REMOVED, count=count, force=force)
        return {**self._identity(), **removal.to_dict()}

    async def stop(self) -> dict[str, Any]:
        """Stop the run: its final figures, and the state it is in now."""
        final = await self.runner.stop()
        return {**self._identity(), **final.to_dict(), "state": self.runner.status().state}


def local_provider(controller: Controller, name: str) -> RunnerProvider:
    """This node alone, driving its own controller."""
    return RunnerProvider(controller, name, "standalone")


def master_provider(master: Master, name: str) -> RunnerProvider:
    """A cluster master: the verbs go to the Master (fanned out to the slaves)."""
    return RunnerProvider(
        master, name, "master", lambda: [dataclasses.asdict(v) for v in master.node_views()]
    )
