"""Group users as they arrive, on one node or over the whole cluster.

    from amoc import coordinator

    def init():
        coordinator.start("pairs", [(2, chat_pair), ("all", report)], timeout=30_000)

    async def start(user_id):
        batch = await coordinator.add("pairs", user_id, data=my_jid)   # [(id, data), ...]

A plan is a list of (size, action): every `size` users added, `action` runs with that
batch; "all" items run with every user added so far when `timeout` ms pass without a new
user (event "timeout") or when the coordinator stops (event "stop"), and so do the
left-overs of the sized items. An action takes (event), (event, users) or
(event, user_a, user_b): the last form runs once for each distinct pair of the batch. Users
are (user_id, data) tuples. `add` returns an awaitable of the batch of the first plan item
that took the user (await it, or not).

In a cluster the grouping happens on the master, so batches mix users of every slave; each
batch's action runs once, on the node of its first user, and every member's `add` resolves
on its own node.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from amoc import metrics
from amoc.errors import AmocError

log = logging.getLogger("amoc.coordinator")

COORDINATE, TIMEOUT, STOP = "coordinate", "timeout", "stop"
DEFAULT_TIMEOUT = 30_000

User = tuple[int, Any]


class CoordinatorError(AmocError):
    """A bad plan, or a coordinator that does not exist."""


@dataclass(frozen=True)
class Member:
    """A user added to a coordinator, and the node it runs on."""

    user: int
    data: Any
    node: str


Emit = Callable[[str, int, str, list[Member]], None]


class Hub:
    """The grouping: batches by plan item, the timeout. Lives where the users meet."""

    def __init__(
        self, name: str, sizes: Sequence[int | None], timeout_s: float, emit: Emit
    ) -> None:
        self.name = name
        self.sizes = list(sizes)
        self.timeout_s = timeout_s
        self.emit = emit
        self.buffers: list[list[Member]] = [[] for _ in self.sizes]
        self.everyone: list[Member] = []
        self._timer: asyncio.TimerHandle | None = None
        self._m_batches = metrics.counter(f"coordinator.{name}.batches")
        self._m_users = metrics.counter(f"coordinator.{name}.users")

    def add(self, member: Member) -> None:
        """A user arrives: fill every sized item, fire the full ones, restart the timeout."""
        self._m_users.inc()
        self.everyone.append(member)
        for index, size in enumerate(self.sizes):
            if size is None:
                continue
            buffer = self.buffers[index]
            buffer.append(member)
            if len(buffer) == size:
                self.buffers[index] = []
                self._fire(index, COORDINATE, buffer)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self.flush, TIMEOUT)

    def flush(self, event: str) -> None:
        """Timeout or stop: the left-overs of sized items, and everyone to "all" items."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for index, size in enumerate(self.sizes):
            if size is None:
                if self.everyone:
                    self._fire(index, event, list(self.everyone))
            elif self.buffers[index]:
                batch, self.buffers[index] = self.buffers[index], []
                self._fire(index, event, batch)
        self.everyone = []

    def _fire(self, index: int, event: str, batch: list[Member]) -> None:
        self._m_batches.inc()
        try:
            self.emit(event, index, self.name, batch)
        except Exception:
            log.exception("coordinator %s: delivering a batch failed", self.name)


class Coordinator:
    """A node's side: the plan's actions and the users waiting for their batch."""

    def __init__(
        self, name: str, plan: list[tuple[int | None, Callable[..., Any]]], timeout_ms: float
    ) -> None:
        self.name = name
        self.plan = plan
        self.timeout_ms = timeout_ms
        self.waiting: dict[int, asyncio.Future[list[User]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def sizes(self) -> list[int | None]:
        return [size for size, _ in self.plan]

    def deliver(self, event: str, index: int, batch: list[Member], run_action: bool) -> None:
        """A batch formed: run its action here if asked, resolve the members waiting here."""
        users = [(m.user, m.data) for m in batch]
        if run_action:
            self._act(event, index, users)
        for m in batch:
            future = self.waiting.pop(m.user, None)
            if future is not None and not future.done():
                future.set_result(users)

    def _act(self, event: str, index: int, users: list[User]) -> None:
        action = self.plan[index][1]
        calls: list[tuple[Any, ...]]
        arity = _arity(action)
        if arity == 1:
            calls = [(event,)]
        elif arity == 2:
            calls = [(event, users)]
        else:
            calls = [(event, a, b) for a, b in itertools.combinations(users, 2)]
        for args in calls:
            try:
                result = action(*args)
            except Exception:
                log.exception("coordinator %s: action %d raised", self.name, index)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("coordinator %s: an action failed: %r", self.name, task.exception())


def _arity(action: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(action).parameters.values()
    except (TypeError, ValueError):
        return 2
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional)


# -- where batches are made: here, or on the master -----------------------------------------

Remote = Callable[[str, list[int | None], float, int, Any], None]
_coordinators: dict[str, Coordinator] = {}
_local_hubs: dict[str, Hub] = {}
_remote: Remote | None = None  # set by a slave: sends add() to the master
NODE = "local"


def use_master(send: Remote | None) -> None:
    """A slave routes add() to the master (None: group on this node)."""
    global _remote
    _remote = send


def start(
    name: str, plan: list[tuple[int | str, Callable[..., Any]]], timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Create coordinator `name` with `plan` [(size or "all", action), ...]."""
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise CoordinatorError(f"coordinator name {name!r} must be a word without spaces")
    if not plan:
        raise CoordinatorError(f"coordinator {name!r}: the plan is empty")
    checked: list[tuple[int | None, Callable[..., Any]]] = []
    for item in plan:
        if not (isinstance(item, tuple) and len(item) == 2 and callable(item[1])):
            raise CoordinatorError(f"coordinator {name!r}: plan items are (size or 'all', action)")
        size, action = item
        if size == "all":
            checked.append((None, action))
        elif isinstance(size, int) and not isinstance(size, bool) and size >= 1:
            checked.append((size, action))
        else:
            raise CoordinatorError(f"coordinator {name!r}: size must be an int >= 1 or 'all'")
        if _arity(action) not in (1, 2, 3):
            raise CoordinatorError(
                f"coordinator {name!r}: an action takes (event), (event, users) or "
                "(event, user_a, user_b)"
            )
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise CoordinatorError(f"coordinator {name!r}: timeout must be > 0 ms")
    _coordinators[name] = Coordinator(name, checked, timeout)


def add(name: str, user_id: int, data: Any = None) -> asyncio.Future[list[User]]:
    """Add a user; the returned future resolves with the batch that took it."""
    try:
        coordinator = _coordinators[name]
    except KeyError:
        raise CoordinatorError(f"no coordinator {name!r}: coordinator.start it first") from None
    future: asyncio.Future[list[User]] = asyncio.get_running_loop().create_future()
    coordinator.waiting[user_id] = future
    if _remote is not None:
        _remote(name, coordinator.sizes, coordinator.timeout_ms, user_id, data)
        return future
    hub = _local_hubs.get(name)
    if hub is None:
        hub = _local_hubs[name] = Hub(
            name, coordinator.sizes, coordinator.timeout_ms / 1000, _local_emit
        )
    hub.add(Member(user_id, data, NODE))
    return future


def _local_emit(event: str, index: int, name: str, batch: list[Member]) -> None:
    deliver(name, event, index, batch, run_action=True)


def deliver(name: str, event: str, index: int, batch: list[Member], run_action: bool) -> None:
    """A batch for coordinator `name` (from this node's hub or from the master)."""
    coordinator = _coordinators.get(name)
    if coordinator is None:
        log.warning("a batch for unknown coordinator %s was dropped", name)
        return
    coordinator.deliver(event, index, batch, run_action)


def stop(name: str) -> None:
    """Fire the "stop" event (left-overs and "all" items) and remove the coordinator."""
    hub = _local_hubs.pop(name, None)
    if hub is not None:
        hub.flush(STOP)
    coordinator = _coordinators.pop(name, None)
    if coordinator is not None:
        for future in coordinator.waiting.values():
            if not future.done():
                future.set_exception(CoordinatorError(f"coordinator {name!r} was stopped"))
        for task in list(coordinator._tasks):
            with contextlib.suppress(Exception):
                task.cancel()


def stop_all() -> None:
    """Stop every coordinator of this node (the scenario stops)."""
    for name in list(_coordinators):
        stop(name)
