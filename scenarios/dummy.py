"""Dummy: needs no server; each user waits a little and counts its runs.

    amoc_local.do("dummy", 1, 10)

Useful to try the runner (interarrival, repeats, add / remove) and to measure
amoc's own overhead per user.
"""

import asyncio

from amoc import metrics
from amoc.config import amoc_config, param

PARAMETERS = [
    param("dummy_wait", 1000, "ms each run of start waits"),
]

_runs = metrics.counter("dummy.runs")


async def start(user_id: int) -> None:
    """Wait `dummy_wait` ms, then count one run."""
    await asyncio.sleep(amoc_config.get("dummy_wait") / 1000)
    _runs.inc()
