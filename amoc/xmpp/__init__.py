"""amoc.xmpp: XMPP users for scenarios, in the spirit of escalus.

Two clients with one API, chosen by `xmpp_client`: "lean" (the default; amoc.xmpp.lean, an
asyncio Protocol and expat, a fraction of the memory and CPU) or "slixmpp" (amoc.xmpp.client).

    client = await amoc.xmpp.connect(user_id)      # login, or LoginError(reason)
    await client.send_presence()                   # returns once the server echoed it
    client.send_chat(other_id)                     # stamped for time to delivery
    msg = await client.wait_message(timeout_ms=5000)
    client.send(stanza.presence(to=..., type="subscribe"))       # any stanza
    el = await client.wait_for(pred.presence("subscribed"), timeout_ms=5000)
    roster = await client.iq(stanza.roster_get())  # timed per kind; IqError(condition)
    await client.stop()

The toolkit: `amoc.xmpp.stanza` (builders), `amoc.xmpp.pred` (predicates), `client.send`,
`client.wait_for`, `client.add_handler`, `client.iq` (see `amoc.xmpp.router`). Feature
helpers over it, for both clients: `roster`, `muc`, `pubsub` (and PEP), `mam`, `ping`,
`account` (in-band registration).

Declare `amoc.xmpp.PARAMETERS` in a scenario's `PARAMETERS` to make the xmpp_* settings
visible in the console; they resolve with their defaults either way.

Metrics: counters xmpp.connections.ok / .failed, xmpp.logins.ok / .failed and
xmpp.logins.failed.<reason>, xmpp.disconnects (unexpected only), xmpp.messages.sent /
.received / .timeouts / .errors / .dropped; gauge xmpp.connected (sessions online);
histograms xmpp.login_time_ms and xmpp.ttd_ms (receiver side, see `amoc.xmpp.stamp`);
per IQ kind xmpp.iq.<kind>.time_ms / .timeouts / .errors; xmpp.muc.ttd_ms and
xmpp.pubsub.ttd_ms for stamped groupchat messages and PubSub items; xmpp.presences.received,
xmpp.stanzas.sent / .timeouts / .unclaimed. Stream management (XEP-0198, lean client,
`xmpp_stream_management`): xmpp.sm.* and xmpp.messages.lost, listed in `amoc.xmpp.sm`.
"""

from typing import TYPE_CHECKING, Any

from amoc.xmpp import account, mam, muc, ping, pred, pubsub, roster, stanza
from amoc.xmpp.errors import (
    ConnectionLost,
    IqError,
    LoginError,
    NotSupported,
    Reason,
    ReceiveTimeout,
    XmppError,
)
from amoc.xmpp.inbox import Message
from amoc.xmpp.lean import LeanClient
from amoc.xmpp.naming import jid, password, username
from amoc.xmpp.parser import Element
from amoc.xmpp.session import Session, connect
from amoc.xmpp.settings import PARAMETERS, Settings, settings

if TYPE_CHECKING:
    from amoc.xmpp.client import Client


def __getattr__(name: str) -> Any:
    # The slixmpp client is imported when first asked for: slixmpp (and what it imports)
    # is 10 MiB in every process that never uses it.
    if name == "Client":
        from amoc.xmpp.client import Client

        return Client
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PARAMETERS",
    "Client",
    "ConnectionLost",
    "Element",
    "IqError",
    "LeanClient",
    "LoginError",
    "Message",
    "NotSupported",
    "Reason",
    "ReceiveTimeout",
    "Session",
    "Settings",
    "XmppError",
    "account",
    "connect",
    "jid",
    "mam",
    "muc",
    "password",
    "ping",
    "pred",
    "pubsub",
    "roster",
    "settings",
    "stanza",
    "username",
]
