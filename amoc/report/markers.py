"""What the report marks on its time axes, from the node's annotations (amoc.metrics.events)."""

from __future__ import annotations

from typing import Any

from amoc.metrics.events import ADDED, REMOVED


def text(event: dict[str, Any]) -> str | None:
    """The marker of an annotation in the report (None: not a load change)."""
    tags = event.get("tags", {})
    if event["what"] == ADDED:
        return f"add {tags.get('count')}"
    if event["what"] == REMOVED:
        return f"remove {tags.get('count')}" + (" (force)" if tags.get("force") else "")
    if event["what"] == "node_down":
        return f"node {tags.get('node')} down"
    return None
