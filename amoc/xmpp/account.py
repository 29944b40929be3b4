"""Accounts over XMPP (XEP-0077): registration happens in `connect(user_id, register=True)`
(the lean client, on the stream it then logs in on); removing the account is here.

    client = await xmpp.connect(user_id, register=True)   # xmpp.registrations.ok / .failed.<c>
    ...
    await account.unregister(client)                      # the account is gone, the client stopped

Both servers answer the removal with a result and then end the stream (ejabberd with the
stream error conflict "User removed", Prosody with not-authorized "Account deleted"): the
client is stopped as soon as the result comes, so that end is not counted as a lost
connection (xmpp.disconnects).

Metrics: xmpp.unregistrations.ok, xmpp.unregistrations.failed.<condition> (timeout: no
answer; closed: the session ended first); the IQ is timed as xmpp.iq.unregister.time_ms.
"""

from __future__ import annotations

from amoc import metrics
from amoc.xmpp import stanza
from amoc.xmpp.errors import ConnectionLost, IqError, ReceiveTimeout
from amoc.xmpp.session import Session


async def unregister(client: Session, timeout_ms: float | None = None) -> None:
    """Remove the logged-in account (XEP-0077 §3.2), then stop the client.

    `IqError` (with its condition) if the server refuses, `ReceiveTimeout` if it does not
    answer; the client is stopped in every case.
    """
    try:
        await client.iq(stanza.unregister(), timeout_ms)
    except IqError as exc:
        metrics.counter(f"xmpp.unregistrations.failed.{_safe(exc.condition)}").inc()
        raise
    except ReceiveTimeout:
        metrics.counter("xmpp.unregistrations.failed.timeout").inc()
        raise
    except ConnectionLost:
        metrics.counter("xmpp.unregistrations.failed.closed").inc()
        raise
    finally:
        await client.stop()
    metrics.counter("xmpp.unregistrations.ok").inc()


def _safe(condition: str) -> str:
    """A condition as a metric name part (RFC 6120 conditions are already lower-case words)."""
    return "".join(c if c.isalnum() or c == "-" else "_" for c in condition) or "undefined"
