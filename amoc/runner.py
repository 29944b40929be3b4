"""The controller: one node's users, their pacing, repeats, add and remove.

Everything here runs in the node's event loop, and only there: other threads read it
through `Node.call`. The controller knows nothing of the cluster: the master sends it the
same verbs a local console does.

One run at a time: `do` takes the run (IDLE or FINISHED -> STARTING) before its first
await, so that of concurrent `do` calls exactly one is admitted; the others raise a
RunnerError naming the scenario that holds the run. Stops always end: cancelled users get
`stop_timeout` ms to go, then are abandoned (counted as `users.abandoned`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amoc import coordinator, metrics, throttle, user_errors
from amoc import scenario as scenario_mod
from amoc.config import BUILTINS, Config, Param, amoc_config, non_negative_ms
from amoc.errors import ConfigError, RunnerError, ScenarioError
from amoc.status import Removal, RunStatus, UserCounts, check_count

log = logging.getLogger("amoc.runner")
user_log = logging.getLogger("amoc.user")
# Users' failures go to user_log through this, at most a line per user per interval (see
# amoc.user_errors): one per process, as the terminal and the log file it keeps readable.
user_failures = user_errors.FailureLog(user_log)

# Users spawned back to back (interarrival 0) yield to the loop this often.
_SPAWN_BATCH = 200
# A spawner behind its schedule by less than this starts users without waiting, so that an
# interarrival shorter than the loop's latency still gives its rate; further behind (a
# stalled loop), it restarts the schedule rather than release a burst.
_CATCH_UP_S = 0.05
# The throttle that paces user starts when `user_rate` is set.
USER_RATE_THROTTLE = "amoc_user_rate"

PARAMETERS: tuple[Param, ...] = (
    Param(
        "stop_timeout",
        5000,
        "ms that stop() and remove(force=True) wait for cancelled users before abandoning them",
        non_negative_ms,
    ),
    Param(
        "init_timeout",
        60_000,
        "ms a scenario's init() may take; longer and the run fails to start",
        non_negative_ms,
    ),
)


class State(enum.Enum):
    """Where the controller is in a run."""

    IDLE = "idle"
    STARTING = "starting"  # do() admitted: loading the scenario, running its init
    RUNNING = "running"
    FINISHED = "finished"  # every user has done its repeats; add() may start more
    STOPPING = "stopping"


# While the run is in one of these states, a second do() is refused.
BUSY = (State.STARTING, State.RUNNING, State.STOPPING)


@dataclass(eq=False, slots=True)
class _User:
    id: int
    task: asyncio.Task[None] | None = None
    stopping: bool = False
    in_start: bool = False
    runs: int = 0
    errors: int = 0
    gone: bool = False  # forgotten by the controller: ended, or abandoned by a stop


class Controller:
    """Runs one scenario's users on this node."""

    def __init__(
        self,
        scenario_dirs: Sequence[Path] = (Path("scenarios"),),
        config: Config = amoc_config,
        sync_workers: int = 64,
    ) -> None:
        self.scenario_dirs = [Path(d) for d in scenario_dirs]
        self.config = config
        self.state = State.IDLE
        self.scenario: scenario_mod.Scenario | None = None
        self._state_value: Any = None
        self._users: dict[int, _User] = {}
        # Kept as users change, so that status() costs the same at 100 000 users as at 10.
        self._running = 0  # users in _users not stopping
        self._stopping = 0  # users in _users told to stop, not yet ended
        self._pending: deque[int] = deque()
        self._spawner: asyncio.Task[None] | None = None
        self._next_id = 1
        self._since = 0.0
        self._comment = ""
        self._counts = _new_counts()
        self._starting_name = ""
        self._start_aborted = False
        self._start_done: asyncio.Future[None] | None = None
        self._init_task: asyncio.Task[Any] | None = None
        self._stop_task: asyncio.Task[RunStatus] | None = None
        self.config.declare(PARAMETERS)
        self._executor = ThreadPoolExecutor(sync_workers, thread_name_prefix="amoc-sync-start")
        self._m_started = metrics.counter("users.started")
        self._m_running = metrics.gauge("users.running")
        self._m_failed = metrics.counter("users.failed")
        self._m_finished = metrics.counter("users.finished")
        self._m_runs = metrics.counter("scenario.runs")
        self._m_abandoned = metrics.counter("users.abandoned")

    # -- commands -----------------------------------------------------------------------

    async def do(
        self,
        name: str,
        first: int,
        last: int,
        settings: Mapping[str, Any] | None = None,
        comment: str = "",
        ids: Sequence[int] | None = None,
    ) -> RunStatus:
        """Load scenario `name`, run its init, then start users `first`..`last`."""
        user_ids = list(ids) if ids is not None else _id_range(first, last)
        _check_ids(user_ids)
        previous = self._admit(name)
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(
                None, scenario_mod.load, name, self.scenario_dirs
            )
            return await self._start(loaded, user_ids, settings or {}, comment)
        finally:
            self._end_start(previous)

    async def do_loaded(
        self,
        loaded: scenario_mod.Scenario,
        user_ids: Sequence[int],
        settings: Mapping[str, Any] | None = None,
        comment: str = "",
    ) -> RunStatus:
        """Like `do`, for a scenario already loaded (uploaded source, cluster)."""
        user_ids = list(user_ids)
        _check_ids(user_ids)
        previous = self._admit(loaded.name)
        try:
            return await self._start(loaded, user_ids, settings or {}, comment)
        finally:
            self._end_start(previous)

    async def add(self, count: int, ids: Sequence[int] | None = None) -> RunStatus:
        """Start `count` more users with the next ids (or exactly `ids`)."""
        if self.state is State.STARTING or self.state is State.STOPPING:
            raise RunnerError(self._busy_message())
        if self.scenario is None or self.state not in (State.RUNNING, State.FINISHED):
            raise RunnerError("no scenario is running: start one with do(scenario, first, last)")
        if ids is None:
            check_count(count, "add")
            ids = range(self._next_id, self._next_id + count)
        new_ids = list(ids)
        _check_ids(new_ids)
        taken = [i for i in new_ids if i in self._users or i in self._pending]
        if taken:
            raise RunnerError(f"user ids already running: {_short(taken)}")
        self._pending.extend(new_ids)
        self._next_id = max(self._next_id, max(new_ids, default=0) + 1)
        self.state = State.RUNNING
        self._ensure_spawner()
        return self.status()

    async def remove(
        self, count: int, force: bool = False, ids: Sequence[int] | None = None
    ) -> Removal:
        """Remove the `count` newest users (or exactly `ids`); force kills them at once."""
        if self.scenario is None:
            raise RunnerError("no scenario is running")
        alive = len(self._pending) + self._running
        if ids is None:
            check_count(count, "remove")
            if count > alive:
                raise RunnerError(f"cannot remove {count} users: only {alive} are running")
            chosen = self._newest(count)
        else:
            chosen = list(ids)
            unknown = [i for i in chosen if i not in self._users and i not in self._pending]
            if unknown:
                raise RunnerError(f"user ids not running on this node: {_short(unknown)}")
        removed = []
        pending = set(self._pending)
        for uid in chosen:
            if uid in pending:
                self._pending.remove(uid)
                self._counts["removed"] += 1
                removed.append(uid)
                continue
            user = self._users[uid]
            if not user.stopping:
                self._counts["removed"] += 1
            removed.append(uid)
            self._mark_stopping(user)
            if (force or not user.in_start) and user.task is not None:
                user.task.cancel()
        if force:
            await self._wait_users([self._users[u] for u in removed if u in self._users])
        return Removal(removed, force, self.status())

    async def stop(self) -> RunStatus:
        """Stop the scenario: kill every user, run `terminate`, go back to idle.

        Bounded: a start under way is called off, users that do not end within
        `stop_timeout` of being cancelled are abandoned, and so is a hanging `terminate`.
        Concurrent calls share one stop.
        """
        if self.state is State.STARTING:
            self._start_aborted = True
            if self._init_task is not None:
                self._init_task.cancel()
            if self._start_done is not None:
                await asyncio.wait({self._start_done}, timeout=self._stop_timeout())
            if self.state is State.STARTING:
                log.warning(
                    "stop: the start of scenario %r is still under way; it will start no user",
                    self._starting_name,
                )
                return self.status()
        if self.scenario is None:
            return self.status()
        if self._stop_task is None or self._stop_task.done():
            self._stop_task = asyncio.get_running_loop().create_task(self._stop(), name="stop")
        return await asyncio.shield(self._stop_task)

    async def _stop(self) -> RunStatus:
        assert self.scenario is not None
        self.state = State.STOPPING
        if self._spawner is not None:
            self._spawner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._spawner
        self._pending.clear()
        users = list(self._users.values())
        for user in users:
            self._mark_stopping(user)
            if user.task is not None:
                user.task.cancel()
        await self._wait_users(users)
        name = self.scenario.name
        if self.scenario.terminate is not None:
            args = (self._state_value,) if _takes_arg(self.scenario.terminate) else ()
            await self._bounded(
                scenario_mod.call(self.scenario.terminate, *args), f"terminate of scenario {name!r}"
            )
        coordinator.stop_all()
        throttle.stop_all()
        metrics.annotate("scenario_stop", comment=self._comment, tags={"scenario": name})
        final = self.status()
        self.scenario, self._state_value = None, None
        self._users.clear()
        self._running = self._stopping = 0
        self.state = State.IDLE
        log.info("scenario %s stopped", name)
        return final

    async def close(self) -> None:
        """Stop and release the worker threads (node shutdown)."""
        await self.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- reading ------------------------------------------------------------------------

    def status(self) -> RunStatus:
        """This node's run now."""
        starting = self.state is State.STARTING
        name = self._starting_name if starting else self.scenario.name if self.scenario else None
        return RunStatus(
            state=self.state.value,
            scenario=name,
            since=self._since if self.scenario and not starting else None,
            comment=self._comment,
            users=UserCounts(
                running=self._running,
                stopping=self._stopping,
                pending=len(self._pending),
                **self._counts,
            ),
            next_id=self._next_id,
        )

    def known_ids(self) -> set[int]:
        """Ids this node holds in any way: pending, running or stopping."""
        return set(self._users) | set(self._pending)

    def user_ids(self) -> list[int]:
        """Ids of the users alive on this node (pending ones included), ascending."""
        alive = [u.id for u in self._users.values() if not u.stopping]
        return sorted(alive + list(self._pending))

    # -- internals ----------------------------------------------------------------------

    def _admit(self, name: str) -> State:
        """Take the run for `name` (no await before this); the state to go back to."""
        if self.state in BUSY:
            raise RunnerError(self._busy_message())
        previous = self.state
        self.state = State.STARTING
        self._starting_name = name
        self._start_aborted = False
        self._start_done = asyncio.get_running_loop().create_future()
        return previous

    def _end_start(self, previous: State) -> None:
        if self.state is State.STARTING:  # the start failed or was called off
            self.state = previous
        if self._start_done is not None and not self._start_done.done():
            self._start_done.set_result(None)

    def _busy_message(self) -> str:
        if self.state is State.STARTING:
            return f"scenario {self._starting_name!r} is starting; wait for it, or stop() it first"
        name = self.scenario.name if self.scenario else "?"
        if self.state is State.STOPPING:
            return f"scenario {name!r} is stopping; try again once stop() has returned"
        return (
            f"scenario {name!r} is already running with "
            f"{self._running + len(self._pending)} users; stop() it first"
        )

    async def _start(
        self,
        loaded: scenario_mod.Scenario,
        user_ids: list[int],
        settings: Mapping[str, Any],
        comment: str,
    ) -> RunStatus:
        self._check_not_aborted(loaded)
        self.config.declare(loaded.params)
        self._apply_settings(loaded, settings)
        try:
            self.config.resolve((*BUILTINS, *loaded.params))
        except ConfigError as exc:
            raise ScenarioError(f"scenario {loaded.name!r} cannot start: {exc}") from None
        state = await self._init(loaded)
        self._check_not_aborted(loaded)
        self.scenario, self._state_value = loaded, state
        self._users.clear()
        self._running = self._stopping = 0
        self._pending = deque(user_ids)
        self._next_id = max(user_ids) + 1 if user_ids else 1
        self._since = time.time()
        self._comment = comment
        self._counts = _new_counts()
        self.state = State.RUNNING
        metrics.annotate(
            "scenario_start",
            comment=comment,
            tags={"scenario": loaded.name, "users": len(user_ids)},
        )
        log.info("scenario %s: starting %d users", loaded.name, len(user_ids))
        self._ensure_spawner()
        return self.status()

    def _check_not_aborted(self, loaded: scenario_mod.Scenario) -> None:
        if self._start_aborted:
            raise RunnerError(
                f"scenario {loaded.name!r} was stopped while starting; no user was started"
            )

    async def _init(self, loaded: scenario_mod.Scenario) -> Any:
        """Run the scenario's init, within `init_timeout`; a stop() cancels it."""
        if loaded.init is None:
            return None
        timeout = self.config.get("init_timeout") / 1000.0
        task = asyncio.get_running_loop().create_task(
            scenario_mod.call(loaded.init), name=f"init-{loaded.name}"
        )
        self._init_task = task
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        finally:
            self._init_task = None
        if not done:
            task.cancel()  # not awaited: an init that ignores cancellation is abandoned
            self._check_not_aborted(loaded)
            log.error("init of scenario %r did not return within %.1f s", loaded.name, timeout)
            raise ScenarioError(
                f"init of scenario {loaded.name!r} did not return within {timeout:g} s "
                "(init_timeout); no user was started"
            )
        if task.cancelled():
            self._check_not_aborted(loaded)
            raise ScenarioError(f"init of scenario {loaded.name!r} was cancelled")
        exc = task.exception()
        if exc is not None:
            log.error("init of scenario %r raised", loaded.name, exc_info=exc)
            raise ScenarioError(
                f"init of scenario {loaded.name!r} raised {type(exc).__name__}: {exc}; "
                "no user was started"
            ) from exc
        return task.result()

    async def _bounded(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        """Await a scenario callback for at most `stop_timeout`; log what it raised."""
        task = asyncio.get_running_loop().create_task(coro, name=what)
        done, _ = await asyncio.wait({task}, timeout=self._stop_timeout())
        if not done:
            task.cancel()
            log.warning("%s did not return within stop_timeout; abandoned", what)
        elif not task.cancelled() and task.exception() is not None:
            log.error("%s raised", what, exc_info=task.exception())

    def _stop_timeout(self) -> float:
        return float(self.config.get("stop_timeout")) / 1000.0

    def _mark_stopping(self, user: _User) -> None:
        if not user.stopping and not user.gone:
            self._running -= 1
            self._stopping += 1
        user.stopping = True

    def _forget(self, user: _User) -> bool:
        """Take an ended (or abandoned) user out of the books, once; False if already out."""
        if user.gone:
            return False
        user.gone = True
        if user.stopping:
            self._stopping -= 1
        else:
            self._running -= 1
        self._m_running.dec()
        if self._users.get(user.id) is user:
            del self._users[user.id]
        return True

    def _apply_settings(self, loaded: scenario_mod.Scenario, settings: Mapping[str, Any]) -> None:
        checked = {}
        known = self.config.known()
        for key, value in settings.items():
            p = known.get(key.lower())
            if p is None:
                raise ConfigError(self.config.unknown(key, f"for scenario {loaded.name!r}"))
            checked[p.name] = p.check(value, "do(settings=...)")
        for key, value in checked.items():
            self.config.set(key, value)

    def _newest(self, count: int) -> list[int]:
        chosen = list(reversed(self._pending))[:count]
        if len(chosen) < count:
            alive = sorted((u.id for u in self._users.values() if not u.stopping), reverse=True)
            chosen += alive[: count - len(chosen)]
        return chosen

    def _ensure_spawner(self) -> None:
        if self._spawner is None or self._spawner.done():
            self._spawner = asyncio.get_running_loop().create_task(self._spawn(), name="spawner")

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        burst = 0
        while self._pending:
            user_rate = self.config.get("user_rate")
            if user_rate is not None:
                # A rate shared with the cluster's other nodes (see amoc.throttle).
                throttle.start(USER_RATE_THROTTLE, user_rate)
                await throttle.wait(USER_RATE_THROTTLE)
                if self._pending:
                    self._start_user(self._pending.popleft())
                next_at = loop.time()
                continue
            uid = self._pending.popleft()
            self._start_user(uid)
            interarrival = self.config.get("interarrival") / 1000.0
            if interarrival <= 0:
                burst += 1
                if burst >= _SPAWN_BATCH:
                    burst = 0
                    await asyncio.sleep(0)
                next_at = loop.time()
                continue
            next_at += interarrival
            delay = next_at - loop.time()
            if delay > 0:
                burst = 0
                await asyncio.sleep(delay)
            elif delay < -max(interarrival, _CATCH_UP_S):
                # Far behind (a stalled loop): do not make up with a burst of users.
                next_at = loop.time()
            else:
                # A little behind (an interarrival below the loop's latency): keep the rate.
                burst += 1
                if burst >= _SPAWN_BATCH:
                    burst = 0
                    await asyncio.sleep(0)

    def _start_user(self, uid: int) -> None:
        user = _User(uid)
        self._users[uid] = user
        self._running += 1
        user.task = asyncio.get_running_loop().create_task(self._run_user(user), name=f"user-{uid}")
        self._counts["started"] += 1
        self._m_started.inc()
        self._m_running.inc()

    async def _run_user(self, user: _User) -> None:
        assert self.scenario is not None
        loaded = self.scenario
        args: tuple[Any, ...] = (
            (user.id, self._state_value) if loaded.start_takes_state else (user.id,)
        )
        start = loaded.start
        bare = loaded.bare_start  # guarded below as scenario_mod.contained guards `start`
        loop = asyncio.get_running_loop()
        finished = False
        try:
            while not user.stopping:
                user.in_start = True
                try:
                    if bare is not None:
                        await bare(*args)
                    else:
                        await loop.run_in_executor(self._executor, functools.partial(start, *args))
                except (asyncio.CancelledError, GeneratorExit):
                    raise
                except BaseException as raised:  # SystemExit too: the node stays up
                    exc = (raised if isinstance(raised, Exception)
                           else scenario_mod.crash(loaded.name, "start", raised))  # fmt: skip
                    user.errors += 1
                    self._counts["failed_runs"] += 1
                    self._m_failed.inc()
                    user_failures.failed(loaded, user.id, user.runs + 1, exc, self.config)
                finally:
                    user.in_start = False
                user.runs += 1
                self._counts["runs"] += 1
                self._m_runs.inc()
                if user.stopping or user.runs >= _repeat_num(self.config):
                    finished = not user.stopping
                    break
                await asyncio.sleep(self.config.get("repeat_interval") / 1000.0)
        except asyncio.CancelledError:
            pass
        finally:
            if self._forget(user):  # an abandoned user's end counts nowhere
                if finished:
                    self._counts["finished"] += 1
                    self._m_finished.inc()
                if not self._users and not self._pending:
                    user_failures.ended(loaded)  # the run's last user: its last counts now
                if self.state is State.RUNNING and not self._users and not self._pending:
                    self.state = State.FINISHED

    async def _wait_users(self, users: Sequence[_User]) -> None:
        """Wait for cancelled users to end, `stop_timeout` at most; abandon the others."""
        tasks = {u.task: u for u in users if u.task is not None and not u.task.done()}
        if not tasks:
            return
        timeout = self._stop_timeout()
        _, left = await asyncio.wait(tasks, timeout=timeout)
        abandoned = [tasks[t] for t in left if self._forget(tasks[t])]
        if abandoned:
            self._counts["abandoned"] += len(abandoned)
            self._m_abandoned.inc(len(abandoned))
            log.warning(
                "%d users did not end within stop_timeout (%g s) of being cancelled "
                "(their start swallows cancellation); abandoned: %s",
                len(abandoned),
                timeout,
                _short(sorted(u.id for u in abandoned)),
            )


def _new_counts() -> dict[str, int]:
    return dict(started=0, finished=0, removed=0, failed_runs=0, runs=0, abandoned=0)


def _repeat_num(config: Config) -> float:
    value = config.get("repeat_num")
    return math.inf if value == math.inf else float(value)


def _takes_arg(fn: Any) -> bool:
    try:
        return len(inspect.signature(fn).parameters) >= 1
    except (TypeError, ValueError):
        return False


def _id_range(first: int, last: int) -> list[int]:
    for label, value in (("first", first), ("last", last)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise RunnerError(f"{label} id must be an integer, got {value!r}")
    if first < 1:
        raise RunnerError(f"user ids start at 1; got first={first}")
    if last < first:
        raise RunnerError(f"ids out of order: first={first} is after last={last}")
    return list(range(first, last + 1))


def _check_ids(ids: Sequence[int]) -> None:
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in ids):
        raise RunnerError("user ids must be integers >= 1")
    if len(set(ids)) != len(ids):
        raise RunnerError("user ids must be distinct")


def _short(ids: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in list(ids)[:10])
    return shown + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
