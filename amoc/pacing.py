"""One user's timed actions without a wake-up of its task for each: sends on a schedule.

    from amoc import pacing

    async def start(user_id):
        client = await xmpp.connect(user_id)
        # 20 messages, one every 5 s on average, the gaps drawn from an exponential law
        await pacing.every(5.0, lambda: client.send_chat(peer), 20, process="poisson")

`await asyncio.sleep(interval)` between two sends wakes the user's task every time: a timer,
a future, and a step of the task and its coroutine. `every` runs the calls from the event
loop's timers instead and wakes the task once, when the last call has run: 7% less CPU per
message for xmpp_one_to_one at 10 000 users (bench_tsung). The schedules of a loop share
one loop timer, armed for the earliest of them: a pending call is an entry in a heap (about
120 bytes) where a loop timer of its own took about 540 (uvloop's handle, its libuv timer,
a context and a bound method; at 100 000 users, 40 MiB).

The arrival process of the calls (`ARRIVALS`):
- `even`: exactly `interval` apart. Repeatable, and the smoothest load a server can get.
- `poisson`: the `count` calls at random times over the span of the even schedule
  (`count * interval` from `start`), in order: given how many calls fall in a span, that is
  where a Poisson process puts them (gaps of mean `interval`, bunches included). Many
  independent people each doing something now and then add up to a Poisson process: this
  is what a server meets from real clients. Drawing each gap from an exponential law
  instead would let one user's last call drift far past another's (the spread grows with
  the square root of `count`), and a peer waiting a bounded time for it would give up.
- `burst`: `even`, with each time rounded up to a grid of `burst` seconds: every user due
  in the same grid cell acts at once (a timer tick, a synchronised client, a batch job).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import weakref
from collections.abc import Callable
from typing import Any

ARRIVALS = ("even", "poisson", "burst")

# A timer that fires this early runs what is due then: libuv's timers are in milliseconds.
_RESOLUTION_S = 0.001


class _Timers:
    """The pending calls of one loop's schedules: a heap of (time, sequence, schedule) and
    one loop timer, armed for the heap's earliest time."""

    __slots__ = ("handle", "heap", "loop", "order", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, _Schedule]] = []
        self.order = itertools.count()  # the order of two calls due at the same time
        self.handle: asyncio.TimerHandle | None = None
        self.when = math.inf  # the time the loop timer is armed for

    def add(self, at: float, schedule: _Schedule) -> None:
        heapq.heappush(self.heap, (at, next(self.order), schedule))
        if at < self.when:
            self._arm(at)

    def _arm(self, at: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.when = at
        self.handle = self.loop.call_at(at, self._fire)

    def _fire(self) -> None:
        # While the calls due run, what they add is not armed (-inf): the timer is armed
        # once, afterwards, for whatever is earliest then.
        self.handle, self.when = None, -math.inf
        heap = self.heap
        due = self.loop.time() + _RESOLUTION_S
        try:
            while heap and heap[0][0] <= due:
                heapq.heappop(heap)[2]._call()
        finally:  # a call that raised past Exception leaves the others due
            self.when = math.inf
            if heap:
                self._arm(heap[0][0])


_TIMERS: weakref.WeakKeyDictionary[Any, _Timers] = weakref.WeakKeyDictionary()  # per loop


def _timers(loop: asyncio.AbstractEventLoop) -> _Timers:
    found = _TIMERS.get(loop)
    if found is None:
        found = _TIMERS[loop] = _Timers(loop)
    return found


class _Schedule:
    """The calls left of one `every`, each run from a loop timer."""

    __slots__ = ("burst", "count", "done", "done_share", "fn", "interval", "next_at",
                 "poisson", "ran", "span", "start", "timers")  # fmt: skip

    def __init__(self, fn: Callable[[], Any], count: int, interval: float, start: float,
                 process: str, burst: float) -> None:  # fmt: skip
        loop = asyncio.get_running_loop()
        self.timers = _timers(loop)
        self.fn = fn
        self.count = count
        self.interval = interval
        self.poisson = process == "poisson"
        self.burst = burst if process == "burst" else 0.0
        self.ran = 0
        self.start = start
        self.span = count * interval  # poisson: where the calls fall
        self.done_share = 0.0  # poisson: the share of the span behind the last call
        self.next_at = start  # the time of the next call
        self.done: asyncio.Future[int] = loop.create_future()
        if self.poisson:
            self.next_at = self._next_uniform()

    def arm(self) -> None:
        """Set the timer of the next call (or end, when none is left)."""
        if self.ran >= self.count:
            if not self.done.done():
                self.done.set_result(self.ran)
            return
        at = self.next_at
        if self.burst:
            at = math.ceil(at / self.burst) * self.burst
        self.timers.add(at, self)

    def _call(self) -> None:
        if self.done.done():  # ended (failed, or cancelled with its user): no call is left
            return
        self.ran += 1
        try:
            self.fn()
        except BaseException as exc:  # the user's failure ends the schedule and its await
            self.done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if self.poisson:
            self.next_at = self._next_uniform()
        else:
            self.next_at += self.interval
        self.arm()

    def _next_uniform(self) -> float:
        """The next of `count` sorted uniform times over the span (drawn one at a time: the
        smallest of the `left` still to come is above `done` by a Beta(1, left) share)."""
        left = self.count - self.ran
        if left <= 0:
            return self.next_at
        self.done_share += (1.0 - self.done_share) * (1.0 - random.random() ** (1.0 / left))
        return self.start + self.done_share * self.span


def every(
    interval: float,
    fn: Callable[[], Any],
    count: int,
    *,
    start: float | None = None,
    process: str = "even",
    burst: float = 0.1,
) -> asyncio.Future[int]:
    """Call `fn()` `count` times, `interval` s apart on average, from `start` (the loop's
    clock; default one interval from now), spaced by `process` (`ARRIVALS`): the first call
    is at `start` for `even` (on the grid after it for `burst`), within the span for
    `poisson`.

    Await the future it returns: it ends with the number of calls once the last has run, or
    with what `fn` raised (no call follows). Cancelling it (a cancelled await does) cancels
    the calls left.
    """
    if process not in ARRIVALS:
        raise ValueError(f"process {process!r}: one of {', '.join(ARRIVALS)}")
    if not interval >= 0 or math.isinf(interval):
        raise ValueError(f"interval {interval!r}: a finite number of seconds >= 0")
    if process == "poisson" and interval == 0:
        raise ValueError("a poisson process needs an interval > 0")
    if process == "burst" and not burst > 0:
        raise ValueError(f"burst {burst!r}: a number of seconds > 0")
    loop = asyncio.get_running_loop()
    first = loop.time() + interval if start is None else start
    schedule = _Schedule(fn, max(0, int(count)), interval, first, process, burst)
    schedule.arm()
    return schedule.done
