"""The console's adapter over a `Runner`, and `amoc_local`, this node's runner.

A runner belongs to the node's event loop: every verb, reads included, runs there
through `call` (`Node.call`), never on the console's thread. `amoc_dist` (amoc.dist) is
the same adapter over the cluster's master.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from amoc.metrics.events import ADDED, REMOVED, marked
from amoc.runner import Controller
from amoc.status import Runner


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


class RunnerConsole:
    """The verbs every runner has (add, remove, stop, status), for a console: each runs in
    the runner's loop through `call`; answers print as `reply` does."""

    def __init__(
        self,
        runner: Runner,
        call: Call,
        reply: type[dict[str, Any]],
        search: Callable[..., Any] | None = None,
    ) -> None:
        self._runner = runner
        self._call = call
        self._reply = reply
        self._search = search  # the node's capacity search over this runner (amoc.capacity)

    def add(self, count: int) -> dict[str, Any]:
        """Start `count` more users with the next ids."""
        return self._reply(
            self._call(marked(self._runner.add(count), ADDED, count=count)).to_dict()
        )

    def remove(self, count: int, force: bool = False) -> dict[str, Any]:
        """Remove the `count` newest users; `force=True` kills them now."""
        verb = marked(self._runner.remove(count, force), REMOVED, count=count, force=force)
        return self._reply(self._call(verb).to_dict())

    def stop(self) -> dict[str, Any]:
        """Stop the scenario and every user."""
        return self._reply(self._call(self._runner.stop()).to_dict())

    def status(self) -> dict[str, Any]:
        """The run now."""
        return self._reply(self._call(in_loop(self._runner.status)).to_dict())

    def find_capacity(self, scenario: str, thresholds: str | list[str], **options: Any) -> Any:
        """Raise the load step by step, hold, bisect: the largest load that held, the first
        limit, the table. Options as `bin/amoc find-capacity`'s: users="100:100:1000" or
        rate="5:5:50", hold="60s", settle="2s", ramp="10s", resolution=..., arrival=...,
        first=1, settings={...}. Ctrl+C stops it (the run too)."""
        if self._search is None:
            raise RuntimeError("this console has no capacity search")
        return self._search(scenario, thresholds, **options)


class AmocLocal(RunnerConsole):
    """Run a scenario on this node: do, add, remove, stop, status."""

    def __init__(
        self, controller: Controller, call: Call, search: Callable[..., Any] | None = None
    ) -> None:
        super().__init__(controller, call, Reply, search)
        self._ctl = controller

    def do(
        self,
        scenario: str,
        first: int,
        last: int,
        settings: dict[str, Any] | None = None,
        comment: str = "",
    ) -> dict[str, Any]:
        """Start users `first`..`last` of `scenario`, one every `interarrival` ms."""
        return Reply(self._call(self._ctl.do(scenario, first, last, settings, comment)).to_dict())

    def users(self) -> list[int]:
        """Ids of the users alive here."""
        result: list[int] = self._call(in_loop(self._ctl.user_ids))
        return result

    def __repr__(self) -> str:
        return (
            "amoc_local: do(scenario, first, last, settings=None, comment=''), add(count), "
            "remove(count, force=False), stop(), status(), users(), "
            "find_capacity(scenario, thresholds, users='START:STEP:MAX', hold='60s')"
        )


async def in_loop(read: Callable[[], Any]) -> Any:
    """Run a read of a runner's state inside its loop (the only thread that changes it)."""
    return read()
