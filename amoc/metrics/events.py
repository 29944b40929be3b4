"""The events that change a run's load, annotated where the verbs are given.

The console's and the REST API's adapters wrap `add` and `remove` in `marked`, so every
exporter sees them (Graphite's events, Prometheus' amoc_last_event_timestamp_seconds) and
the report draws a marker for each; `do` and `stop` are annotated by the runners themselves
(scenario_start, scenario_stop), a lost node by the master (node_down).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from amoc import metrics

T = TypeVar("T")

ADDED = "users_added"
REMOVED = "users_removed"


async def marked(verb: Awaitable[T], what: str, **tags: Any) -> T:
    """The verb's answer, once it is given; then the node's annotation `what` with `tags`
    (none when the verb raised)."""
    answer = await verb
    metrics.annotate(what, tags=tags)
    return answer
