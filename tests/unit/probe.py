"""Shared state between runner tests and the scenarios they write (same process)."""

import collections
import threading

runs: collections.Counter[int] = collections.Counter()
finished: collections.Counter[int] = collections.Counter()
threads: set[str] = set()
events: list[tuple[str, object]] = []
gate = threading.Event()


def reset() -> None:
    runs.clear()
    finished.clear()
    threads.clear()
    events.clear()
    gate.clear()
