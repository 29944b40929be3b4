"""What the API drives: a ClusterProvider. A single node supplies LocalProvider.

A master plugs in its own provider (same methods, fanned out to its nodes); the
API's routes do not change.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from amoc import __version__
from amoc.runner import Controller


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


class LocalProvider:
    """This node alone, driving its own controller (runs in the controller's loop)."""

    role = "standalone"

    def __init__(self, controller: Controller, name: str) -> None:
        self.controller = controller
        self.name = name

    def _identity(self) -> dict[str, Any]:
        return {"node": self.name, "role": self.role, "pid": os.getpid(), "version": __version__}

    async def status(self) -> dict[str, Any]:
        """This node's identity and its controller's status."""
        return {**self._identity(), **self.controller.status()}

    async def nodes(self) -> list[dict[str, Any]]:
        """Just this node."""
        return [await self.status()]

    async def do(
        self, scenario: str, first: int, last: int, settings: dict[str, Any], comment: str
    ) -> dict[str, Any]:
        """Run `scenario` on this node's controller."""
        return {
            **self._identity(),
            **await self.controller.do(scenario, first, last, settings, comment),
        }

    async def add(self, count: int) -> dict[str, Any]:
        """Add users on this node."""
        return {**self._identity(), **await self.controller.add(count)}

    async def remove(self, count: int, force: bool) -> dict[str, Any]:
        """Remove users from this node."""
        return {**self._identity(), **await self.controller.remove(count, force)}

    async def stop(self) -> dict[str, Any]:
        """Stop this node's scenario: its final figures, and the state it is in now (idle)."""
        final = await self.controller.stop()
        return {**self._identity(), **final, "state": self.controller.state.value}


class MasterProvider:
    """A cluster master: the verbs go to amoc_dist's Master (fanned out to the slaves)."""

    role = "master"

    def __init__(self, master: Any, name: str) -> None:
        self.master = master
        self.name = name

    def _identity(self) -> dict[str, Any]:
        return {"node": self.name, "role": self.role, "pid": os.getpid(), "version": __version__}

    async def status(self) -> dict[str, Any]:
        """The cluster's run and totals, with this master's identity."""
        return {**self._identity(), **self.master.status()}

    async def nodes(self) -> list[dict[str, Any]]:
        """Every slave: up or down, users, errors, last heartbeat."""
        views: list[dict[str, Any]] = self.master.node_views()
        return views

    async def do(
        self, scenario: str, first: int, last: int, settings: dict[str, Any], comment: str
    ) -> dict[str, Any]:
        """Spread users `first`..`last` over the slaves (the source is shipped to them)."""
        result = await self.master.do(scenario, first, last, None, comment, settings)
        return {**self._identity(), **result}

    async def add(self, count: int) -> dict[str, Any]:
        """Add users over the run's slaves."""
        return {**self._identity(), **await self.master.add(count)}

    async def remove(self, count: int, force: bool) -> dict[str, Any]:
        """Remove the newest users wherever they run."""
        return {**self._identity(), **await self.master.remove(count, force)}

    async def stop(self) -> dict[str, Any]:
        """Stop the run on every slave."""
        final = await self.master.stop()
        return {**self._identity(), **final, "state": "idle"}
