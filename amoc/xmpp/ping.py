"""Client-side ping (XEP-0199): the round trip to the server, or to any entity.

    rtt_ms = await ping.ping(client)                 # to the user's server
    rtt_ms = await ping.ping(client, to=other_jid)   # through the server to another entity

The round trip is recorded once, as every IQ is, in xmpp.iq.ping.time_ms (with
xmpp.iq.ping.timeouts and .errors beside it): a second histogram (xmpp.ping.rtt_ms) would
hold the same samples under another name, and pings sent with `client.iq(stanza.ping())`
would land in one but not the other. An error answer (service-unavailable from an entity
that does not do XEP-0199) is an `IqError`; the round trip is recorded all the same.
"""

from __future__ import annotations

import asyncio

from amoc.xmpp import stanza
from amoc.xmpp.session import Session


async def ping(client: Session, to: str | None = None, timeout_ms: float | None = None) -> float:
    """Ping the server (or `to`); the round-trip time in ms. `ReceiveTimeout`, `IqError`."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await client.iq(stanza.ping(to), timeout_ms)
    return (loop.time() - started) * 1000.0
