"""Sets of user ids as arithmetic runs: what placement messages and heartbeats carry.

Round-robin placement gives each node every n-th id, so a node's ids are a few runs of a
constant step: `[first, step, count]` triples. 20 000 ids placed by one `do` over five
nodes travel as one triple per node, not 20 000 integers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from amoc.cluster.protocol import ProtocolError

# No message may make a node build a larger set than this (a bad frame is not a malloc).
MAX_IDS = 10_000_000

Runs = list[list[int]]


def to_runs(ids: Iterable[int]) -> Runs:
    """The ascending, distinct `ids` as `[first, step, count]` runs, greedily."""
    ordered = sorted(set(ids))
    runs: Runs = []
    k = 0
    while k < len(ordered):
        first = ordered[k]
        if k + 1 == len(ordered):
            runs.append([first, 1, 1])
            break
        step = ordered[k + 1] - first
        count = 2
        while k + count < len(ordered) and ordered[k + count] - ordered[k + count - 1] == step:
            count += 1
        runs.append([first, step, count])
        k += count
    return runs


def from_runs(runs: Any) -> list[int]:
    """The ids of `runs` (ascending), or ProtocolError naming what is wrong."""
    out: list[int] = []
    for first, step, count in checked(runs):
        out.extend(range(first, first + step * count, step))
    out.sort()
    return out


def checked(runs: Any) -> Runs:
    """`runs` if they are [first, step, count] runs of at most MAX_IDS ids in all, or
    ProtocolError naming what is wrong; in time of the runs, not of the ids."""
    if not isinstance(runs, list):
        raise ProtocolError("ids must be a list of [first, step, count] runs")
    total = 0
    for run in runs:
        if (
            not isinstance(run, list)
            or len(run) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in run)
        ):
            raise ProtocolError(f"id run {run!r} is not [first, step, count]")
        first, step, count = run
        if first < 1 or step < 1 or count < 1:
            raise ProtocolError(f"id run {run!r}: first, step and count must be >= 1")
        total += count
        if total > MAX_IDS:
            raise ProtocolError(f"more than {MAX_IDS} ids in one message")
    return runs
