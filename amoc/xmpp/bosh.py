"""XMPP over BOSH (XEP-0124, XEP-0206) for the lean client: not written yet."""

from __future__ import annotations

from typing import Any

from amoc.xmpp.errors import LoginError, Reason


async def open_link(client: Any, endpoint: Any, settings: Any) -> None:
    """Start a BOSH session for `client` at `endpoint`."""
    raise LoginError(
        f"{endpoint.url}: the BOSH transport is not available yet", Reason.CONNECTION_ERROR
    )
