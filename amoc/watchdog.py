"""A thread that tells when the node's event loop is blocked, and by what.

A blocking call inside the loop (`time.sleep` in an async `start`) stops every user and
the console socket at once. The watchdog posts a beat into the loop every half second;
when none has come back for `loop_block_warn` ms it logs the loop thread's stack (at most
every `loop_block_log_every` ms) and writes the time the loop last turned to the node's
busy file, so that `amoc status` can say "running, not answering (busy for N s)".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import traceback
from pathlib import Path

from amoc.config import Config, Param, non_negative_ms

log = logging.getLogger("amoc.watchdog")

PARAMETERS: tuple[Param, ...] = (
    Param(
        "loop_block_warn",
        2000,
        "ms without a turn of the event loop before the watchdog says it is blocked",
        non_negative_ms,
    ),
    Param(
        "loop_block_log_every",
        5000,
        "ms between two warnings of the watchdog about one blocked loop",
        non_negative_ms,
    ),
)

_TICK_S = 0.5


class Watchdog:
    """Watch `loop`, run by `thread`; `busy_file` holds since when it is blocked."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        busy_file: Path,
        config: Config,
    ) -> None:
        self.loop = loop
        self.thread = thread
        self.busy_file = busy_file
        self.warn_after = float(config.get("loop_block_warn")) / 1000.0
        self.log_every = float(config.get("loop_block_log_every")) / 1000.0
        self.blocked_since: float | None = None  # time.time() of the last turn, when blocked
        self._posted_at: float | None = None  # when the beat now in the loop's queue was sent
        self._done = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        """Start watching (from any thread but the loop's)."""
        self._watcher = threading.Thread(target=self._watch, name="amoc-watchdog", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop watching and remove the busy file."""
        self._done.set()
        if self._watcher is not None:
            self._watcher.join(2 * _TICK_S)
        with contextlib.suppress(FileNotFoundError):
            self.busy_file.unlink()

    def _beat(self) -> None:
        self._posted_at = None

    def _watch(self) -> None:
        last_log = 0.0
        while not self._done.wait(_TICK_S):
            if self.loop.is_closed():
                return
            posted = self._posted_at
            if posted is None:
                self._posted_at = posted = time.monotonic()
                try:
                    self.loop.call_soon_threadsafe(self._beat)
                except RuntimeError:  # the loop closed meanwhile
                    return
            now = time.monotonic()
            lag = now - posted  # how long the loop has not taken the beat
            if lag < self.warn_after:
                if self.blocked_since is not None:
                    log.warning("the event loop turns again after %.1f s blocked", lag)
                    self.blocked_since = None
                    with contextlib.suppress(FileNotFoundError):
                        self.busy_file.unlink()
                continue
            if self.blocked_since is None:
                self.blocked_since = time.time() - lag
                with contextlib.suppress(OSError):
                    self.busy_file.write_text(f"{self.blocked_since}\n")
            if now - last_log >= self.log_every:
                last_log = now
                log.warning(
                    "the event loop has been blocked for %.1f s (a blocking call in async "
                    "code? run it in an executor); it is running:\n%s",
                    lag,
                    self.running(),
                )

    def running(self) -> str:
        """What the loop thread runs now: its task and its stack."""
        frame = sys._current_frames().get(self.thread.ident or -1)
        if frame is None:
            return "(the loop thread has ended)"
        task = None
        with contextlib.suppress(RuntimeError):
            task = asyncio.current_task(self.loop)
        head = f"task {task.get_name()!r}\n" if task is not None else ""
        return head + "".join(traceback.format_stack(frame)).rstrip()
