"""`amoc_local`: the runner's verbs for a console, callable from any thread.

The controller belongs to the node's event loop: every verb, reads included, runs there
through `call` (`Node.call`), never on the console's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from amoc.runner import Controller


class Reply(dict[str, Any]):
    """A command's answer: a plain dict that prints as one readable line."""

    def __repr__(self) -> str:
        users = self.get("users", {})
        text = f"{self.get('state')}"
        if self.get("scenario"):
            text += f" {self['scenario']}"
        text += (
            f": {users.get('running', 0)} running, {users.get('pending', 0)} pending, "
            f"{users.get('started', 0)} started, {users.get('finished', 0)} finished, "
            f"{users.get('removed', 0)} removed, {users.get('failed_runs', 0)} failed runs"
        )
        if "removed" in self and isinstance(self["removed"], list):
            text = (
                f"removed {len(self['removed'])} users ({'force' if self['force'] else 'gentle'}); "
                + text
            )
        return text


Call = Callable[[Coroutine[Any, Any, Any]], Any]


class AmocLocal:
    """Run a scenario on this node: do, add, remove, stop, status."""

    def __init__(self, controller: Controller, call: Call) -> None:
        self._ctl = controller
        self._call = call

    def do(
        self,
        scenario: str,
        first: int,
        last: int,
        settings: dict[str, Any] | None = None,
        comment: str = "",
    ) -> Reply:
        """Start users `first`..`last` of `scenario`, one every `interarrival` ms."""
        return Reply(self._call(self._ctl.do(scenario, first, last, settings, comment)))

    def add(self, count: int) -> Reply:
        """Start `count` more users with the next ids."""
        return Reply(self._call(self._ctl.add(count)))

    def remove(self, count: int, force: bool = False) -> Reply:
        """Remove the `count` newest users; `force=True` kills them now."""
        return Reply(self._call(self._ctl.remove(count, force)))

    def stop(self) -> Reply:
        """Stop the scenario and every user."""
        return Reply(self._call(self._ctl.stop()))

    def status(self) -> Reply:
        """What runs on this node."""
        return Reply(self._call(_status(self._ctl)))

    def users(self) -> list[int]:
        """Ids of the users alive here."""
        result: list[int] = self._call(_users(self._ctl))
        return result

    def __repr__(self) -> str:
        return (
            "amoc_local: do(scenario, first, last, settings=None, comment=''), add(count), "
            "remove(count, force=False), stop(), status(), users()"
        )


async def _users(ctl: Controller) -> list[int]:
    return ctl.user_ids()


async def _status(ctl: Controller) -> dict[str, Any]:
    return ctl.status()
