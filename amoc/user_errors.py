"""Users' failures in the log and on the terminal: each user's first at once, then sums.

A user that raises on every run must not flood the console and the log. The first failure
of each user in a run is logged at once, with its traceback (the log file shows it, the
terminal one line), for up to FEW users an interval. After that a failure is only counted,
a dict update, and the counts are logged once per `user_error_interval` ms: one line per
failing user, or one line for all of them when more than FEW failed in that interval. The
sums are written by the first failure after the interval and when the run's last user ends
(`ended`), so that the last counts are not lost. Metrics count every failure as before:
only the log lines are limited.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from amoc.config import Config, Param, non_negative_ms
from amoc.errors import ConfigError

INTERVAL = Param(
    "user_error_interval",
    30_000,
    "ms between two log lines about a failing user (its first failure is logged at once); "
    "0 logs every failure",
    non_negative_ms,
)
PARAMETERS: tuple[Param, ...] = (INTERVAL,)

# Up to this many failing users get a line each per interval; more get one line together.
# As many first failures are logged at once per interval: 10 000 users failing their first
# run (a server down) make five tracebacks and a sum, not 10 000 tracebacks.
FEW = 5
# Runs whose last user never ended (abandoned by a stop) are summed up and forgotten
# beyond this many.
_MAX_RUNS = 8
# An exception's text is cut to this length in a sum's line.
_TEXT_MAX = 200


@dataclass(eq=False, slots=True)
class _Tally:
    """One user's failures not yet logged."""

    failures: int = 0
    last: str = ""


@dataclass(eq=False, slots=True)
class _Run:
    """One run's failures: who has failed, and what the current interval counted."""

    run: object  # held, so that its id stays its own while it is a key
    interval: float  # s; 0: no limit
    opened: float  # when the current interval began
    seen: set[int] = field(default_factory=set)  # users that have failed in this run
    firsts: int = 0  # first failures logged at once in the current interval
    pending: dict[int, _Tally] = field(default_factory=dict)
    failures: int = 0  # failures in `pending`, all users together
    last: str = ""  # the text of the last of them


class FailureLog:
    """Writes users' failures to `logger`, at most one line per user per interval.

    Called from the node's event loop only. `clock` (seconds, monotonic) is for tests.
    """

    def __init__(
        self,
        logger: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        few: int = FEW,
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._few = few
        self._runs: dict[int, _Run] = {}

    def failed(
        self, run: object, user_id: int, run_no: int, exc: BaseException, config: Config
    ) -> None:
        """Count failure `run_no` of `user_id` in `run` (a key, one per run); log what is due."""
        now = self._clock()
        state = self._runs.get(id(run))
        if state is None:
            state = self._open(run, now, config)
        elif now - state.opened >= state.interval:
            self._log_sums(state, now)
            state.interval = self._interval(config)
            state.opened = now
            state.firsts = 0
        first = user_id not in state.seen
        if state.interval <= 0 or (first and state.firsts < self._few):
            state.seen.add(user_id)
            state.firsts += 1
            self._logger.error("user %d: start raised (run %d)", user_id, run_no, exc_info=exc)
            return
        if first:
            state.seen.add(user_id)
        text = _describe(exc)
        tally = state.pending.get(user_id)
        if tally is None:
            state.pending[user_id] = _Tally(1, text)
        else:
            tally.failures += 1
            tally.last = text
        state.failures += 1
        state.last = text

    def ended(self, run: object) -> None:
        """The last user of `run` has ended: log its counts now and forget it."""
        state = self._runs.pop(id(run), None)
        if state is not None:
            self._log_sums(state, self._clock())

    def _open(self, run: object, now: float, config: Config) -> _Run:
        if len(self._runs) >= _MAX_RUNS:
            oldest = self._runs.pop(next(iter(self._runs)))
            self._log_sums(oldest, now)
        state = _Run(run, self._interval(config), now)
        self._runs[id(run)] = state
        return state

    def _interval(self, config: Config) -> float:
        try:
            value = INTERVAL.check(config.get(INTERVAL.name, INTERVAL.default), "config")
        except ConfigError as exc:
            self._logger.warning("%s; using %d ms", exc, INTERVAL.default)
            value = INTERVAL.default
        return float(value) / 1000.0

    def _log_sums(self, state: _Run, now: float) -> None:
        """Log the current interval's counts, one line per user or one for all; reset them."""
        pending = state.pending
        if not pending:
            return
        elapsed = _seconds(now - state.opened)
        if len(pending) <= self._few:
            for uid in sorted(pending):
                tally = pending[uid]
                self._logger.error(
                    "user %d failed %s in %s s; last: %s",
                    uid,
                    _times(tally.failures),
                    elapsed,
                    tally.last,
                )
        else:
            self._logger.error(
                "%d users failed %d runs in the last %s s; first ids: %s; last: %s",
                len(pending),
                state.failures,
                elapsed,
                ", ".join(str(i) for i in heapq.nsmallest(self._few, pending)),
                state.last,
            )
        state.pending = {}
        state.failures = 0
        state.last = ""


def _describe(exc: BaseException) -> str:
    """`RuntimeError: text`, on one line and not too long."""
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    text = " ".join(text.split())
    if len(text) > _TEXT_MAX:
        text = text[: _TEXT_MAX - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _times(n: int) -> str:
    return "1 time" if n == 1 else f"{n} times"


def _seconds(s: float) -> str:
    """30 for 30.004, 12.3 for 12.34, 0.25 for 0.25: what a reader needs."""
    return f"{s:.3g}" if s < 100 else f"{s:.0f}"
