"""amoc.xmpp: XMPP users for scenarios, in the spirit of escalus.

Two clients with one API, chosen by `xmpp_client`: "lean" (the default; amoc.xmpp.lean, an
asyncio Protocol and expat, a fraction of the memory and CPU) or "slixmpp" (amoc.xmpp.client).

    client = await amoc.xmpp.connect(user_id)      # login, or LoginError(reason)
    await client.send_presence()                   # returns once the server echoed it
    client.send_chat(other_id)                     # stamped for time to delivery
    msg = await client.wait_message(timeout_ms=5000)
    await client.stop()

Declare `amoc.xmpp.PARAMETERS` in a scenario's `PARAMETERS` to make the xmpp_* settings
visible in the console; they resolve with their defaults either way.

Metrics: counters xmpp.connections.ok / .failed, xmpp.logins.ok / .failed and
xmpp.logins.failed.<reason>, xmpp.disconnects (unexpected only), xmpp.messages.sent /
.received / .timeouts / .errors / .dropped; gauge xmpp.connected (sessions online);
histograms xmpp.login_time_ms and xmpp.ttd_ms (receiver side, see `amoc.xmpp.stamp`).
"""

from amoc.xmpp.client import Client
from amoc.xmpp.errors import ConnectionLost, LoginError, Reason, ReceiveTimeout, XmppError
from amoc.xmpp.inbox import Message
from amoc.xmpp.lean import LeanClient
from amoc.xmpp.naming import jid, password, username
from amoc.xmpp.session import Session, connect
from amoc.xmpp.settings import PARAMETERS, Settings, settings

__all__ = [
    "PARAMETERS",
    "Client",
    "ConnectionLost",
    "LeanClient",
    "LoginError",
    "Message",
    "Reason",
    "ReceiveTimeout",
    "Session",
    "Settings",
    "XmppError",
    "connect",
    "jid",
    "password",
    "settings",
    "username",
]
