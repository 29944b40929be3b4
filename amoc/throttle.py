"""Named rate limits shared by every user of a node, and of a cluster.

    from amoc import throttle

    def init():
        throttle.start("messages", 600)            # 600 per minute (interval 60 000 ms)
        throttle.start("logins", 10, interval=0)   # interval 0: at most 10 at a time

    async def start(user_id):
        await throttle.wait("messages")           # returns when this user may go
        await throttle.run("logins", login, user_id)

A rate is `rate` executions per `interval` ms, released one at a time at even spacing
(never in bursts, never above the rate). In a cluster every slave calls `start` with the
cluster's rate; the master tells each slave its share (1/n of the slaves that are up), so the
cluster as a whole holds the rate. `change_rate` and `change_rate_gradually` change it at run
time (`amoc_dist.change_rate(...)` does it on every slave from the master's console).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from amoc import metrics
from amoc.errors import AmocError

log = logging.getLogger("amoc.throttle")

DEFAULT_INTERVAL = 60_000


class ThrottleError(AmocError):
    """A throttle that does not exist, or a bad rate or interval."""


def _check(name: str, rate: float, interval: float) -> None:
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ThrottleError(f"throttle name {name!r} must be a word without spaces")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
        raise ThrottleError(f"throttle {name!r}: rate must be a number > 0, got {rate!r}")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval < 0:
        raise ThrottleError(f"throttle {name!r}: interval must be >= 0 ms, got {interval!r}")
    if math.isinf(rate) or math.isinf(interval):
        raise ThrottleError(f"throttle {name!r}: rate and interval must be finite")


class Throttle:
    """One named limit on this node: a pacer releasing waiters one by one, or a semaphore."""

    def __init__(self, name: str, rate: float, interval: float, share: float) -> None:
        self.name = name
        self.rate = float(rate)
        self.interval = float(interval)
        self.share = share
        self.paused = False
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._pacer: asyncio.Task[None] | None = None
        self._running = 0  # parallelism mode: holders now
        self._last = -math.inf  # loop time of the last release
        self._wake = asyncio.Event()
        self._m_requests = metrics.counter(f"throttle.{name}.requests")
        self._m_executions = metrics.counter(f"throttle.{name}.executions")
        self._m_rate = metrics.gauge(f"throttle.{name}.rate")
        self._m_rate.set(self.rate * self.share)

    @property
    def parallel(self) -> bool:
        """Interval 0: a limit on executions at once, not on their rate."""
        return self.interval == 0

    @property
    def spacing(self) -> float:
        """Seconds between two releases on this node."""
        return self.interval / 1000.0 / (self.rate * self.share)

    @property
    def slots(self) -> int:
        """Parallelism mode: holders allowed at once on this node (at least 1)."""
        return max(1, math.floor(self.rate * self.share))

    def changed(self) -> None:
        """Rate, interval, share or pause changed: let the pacer and waiters see it."""
        self._m_rate.set(self.rate * self.share)
        self._wake.set()
        self._release_slots()

    async def wait(self) -> None:
        """Return when this caller may go."""
        self._m_requests.inc()
        if self.parallel:
            await self._acquire()
            self._release()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        if self._pacer is None or self._pacer.done():
            self._pacer = asyncio.get_running_loop().create_task(
                self._pace(), name=f"throttle-{self.name}"
            )
        try:
            await future
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                self._waiters.remove(future)
            raise

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Wait for the throttle, then call `fn(*args)` (awaited if async), holding a slot in
        parallelism mode until it returns."""
        if not self.parallel:
            await self.wait()
            return await _call(fn, *args)
        self._m_requests.inc()
        await self._acquire()
        try:
            return await _call(fn, *args)
        finally:
            self._release()

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiters:
            if self.paused:
                self._wake.clear()
                await self._wake.wait()
                continue
            due = self._last + self.spacing
            now = loop.time()
            if now < due:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    # A rate change wakes us early to recompute `due`.
                    await asyncio.wait_for(self._wake.wait(), due - now)
                continue
            future = self._waiters.popleft()
            if future.done():
                continue
            future.set_result(None)
            self._m_executions.inc()
            # Keep the cadence through small loop delays; after idling, start afresh
            # (unused time is not saved up into a burst).
            self._last = due if now - due < self.spacing else now

    async def _acquire(self) -> None:
        while self.paused or self._running >= self.slots:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            try:
                await future
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(future)
        self._running += 1
        self._m_executions.inc()

    def _release(self) -> None:
        self._running -= 1
        self._release_slots()

    def _release_slots(self) -> None:
        if not self.parallel:
            return
        free = 0 if self.paused else self.slots - self._running
        for future in list(self._waiters)[: max(0, free)]:
            if not future.done():
                future.set_result(None)

    def view(self) -> dict[str, Any]:
        """Name, rate, interval, this node's share, waiting callers."""
        return {
            "name": self.name,
            "rate": self.rate,
            "interval": self.interval,
            "share": self.share,
            "paused": self.paused,
            "waiting": len(self._waiters),
            "running": self._running,
        }

    def close(self) -> None:
        """Stop: waiting callers get ThrottleError."""
        if self._pacer is not None:
            self._pacer.cancel()
        for future in self._waiters:
            if not future.done():
                future.set_exception(ThrottleError(f"throttle {self.name!r} was stopped"))
        self._waiters.clear()


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        return await result
    return result


# -- the node's throttles -------------------------------------------------------------------

_throttles: dict[str, Throttle] = {}
_plans: dict[str, asyncio.Task[None]] = {}
_share = 1.0


def start(name: str, rate: float, interval: float = DEFAULT_INTERVAL) -> None:
    """Create throttle `name` (`rate` per `interval` ms; interval 0: `rate` at once).

    Starting an existing throttle again with other figures changes its rate."""
    _check(name, rate, interval)
    found = _throttles.get(name)
    if found is not None:
        if (found.rate, found.interval) != (rate, interval):
            change_rate(name, rate, interval)
        return
    _throttles[name] = Throttle(name, rate, interval, _share)
    log.info("throttle %s: %s per %s ms", name, rate, interval)


def _get(name: str) -> Throttle:
    try:
        return _throttles[name]
    except KeyError:
        known = ", ".join(sorted(_throttles)) or "none"
        raise ThrottleError(
            f"no throttle {name!r}: throttle.start it first (known: {known})"
        ) from None


async def wait(name: str) -> None:
    """Return when the throttle lets this caller go."""
    await _get(name).wait()


async def run(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call `fn(*args)` when the throttle allows; its result."""
    return await _get(name).run(fn, *args)


async def send_and_wait(name: str, fn: Callable[..., Awaitable[Any] | Any], *args: Any) -> Any:
    """The Erlang amoc's name for `run`."""
    return await run(name, fn, *args)


def change_rate(name: str, rate: float, interval: float | None = None) -> None:
    """Set a new rate (and interval) now; waiting callers follow it at once."""
    throttle = _get(name)
    interval = throttle.interval if interval is None else interval
    _check(name, rate, interval)
    if (interval == 0) != throttle.parallel:
        raise ThrottleError(f"throttle {name!r}: cannot switch between a rate and a parallelism")
    throttle.rate, throttle.interval = float(rate), float(interval)
    throttle.changed()
    log.info("throttle %s: rate now %s per %s ms", name, rate, interval)


def change_rate_gradually(
    name: str, from_rate: float, to_rate: float, step_interval: float, steps: int
) -> None:
    """Go from `from_rate` to `to_rate` in `steps` equal steps, one every `step_interval` ms."""
    throttle = _get(name)
    _check(name, from_rate, throttle.interval)
    _check(name, to_rate, throttle.interval)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ThrottleError(f"throttle {name!r}: steps must be an integer >= 1, got {steps!r}")
    if not step_interval > 0:
        raise ThrottleError(f"throttle {name!r}: step_interval must be > 0 ms")
    old = _plans.pop(name, None)
    if old is not None:
        old.cancel()

    async def plan() -> None:
        for k in range(steps + 1):
            change_rate(name, from_rate + (to_rate - from_rate) * k / steps)
            metrics.counter(f"throttle.{name}.steps").inc()
            if k < steps:
                await asyncio.sleep(step_interval / 1000.0)

    _plans[name] = asyncio.get_running_loop().create_task(plan(), name=f"throttle-plan-{name}")


def pause(name: str) -> None:
    """Hold every caller until `resume`."""
    throttle = _get(name)
    throttle.paused = True
    throttle.changed()


def resume(name: str) -> None:
    """Let callers go again."""
    throttle = _get(name)
    throttle.paused = False
    throttle.changed()


def stop(name: str) -> None:
    """Remove the throttle; its waiting callers get ThrottleError."""
    plan = _plans.pop(name, None)
    if plan is not None:
        plan.cancel()
    throttle = _throttles.pop(name, None)
    if throttle is not None:
        throttle.close()


def stop_all() -> None:
    """Remove every throttle (a scenario stops)."""
    for name in list(_throttles):
        stop(name)


def set_share(share: float) -> None:
    """This node's part of every throttle (1 / the slaves up; the master sets it)."""
    global _share
    if not 0 < share <= 1:
        raise ThrottleError(f"share must be within (0, 1], got {share!r}")
    if share == _share:
        return
    _share = share
    for throttle in _throttles.values():
        throttle.share = share
        throttle.changed()


def info() -> list[dict[str, Any]]:
    """Every throttle of this node."""
    return [t.view() for t in _throttles.values()]
