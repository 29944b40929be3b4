"""The stanza toolkit on both clients against the managed ejabberd and Prosody, each with
STARTTLS required: IQ requests timed per kind, IQ errors by condition, roster pushes,
presence subscriptions answered by the setting, wait_for timeouts, in-band registration."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from amoc import metrics, xmpp
from amoc.xmpp import pred, stanza
from tests.integration.xmpp_fixture import XmppServer, count

pytestmark = pytest.mark.integration

FIXTURES = {"ejabberd": "ejabberd_tls_server", "prosody": "prosody_server"}
_ids = itertools.count(30_001, 2)


@pytest.fixture(params=sorted(FIXTURES))
def server(request: pytest.FixtureRequest) -> XmppServer:
    """Each kind's session server (STARTTLS required)."""
    got: XmppServer = request.getfixturevalue(FIXTURES[request.param])
    return got


def kw(server: XmppServer, client: str, **extra: Any) -> dict[str, Any]:
    """connect() overrides for `server` over STARTTLS, verifying its certificate."""
    return {
        "host": server.host,
        "port": server.port,
        "domain": server.domain,
        "tls": True,
        "client": client,
        **extra,
    }


@pytest.mark.parametrize("client", ["lean", "slixmpp"])
def test_iq_roster_and_subscriptions_work_alike_on_both_clients(
    server: XmppServer, client: str
) -> None:
    first = next(_ids)
    server.register(first, first + 1)
    a_jid, b_jid = (f"user_{i}@{server.domain}" for i in (first, first + 1))
    pings = metrics.histogram("xmpp.iq.ping.time_ms").count
    accepted = count("xmpp.subscriptions.accepted")

    async def run() -> None:
        a = await xmpp.connect(first, **kw(server, client))
        b = await xmpp.connect(first + 1, **kw(server, client))
        try:
            await a.send_presence()
            await b.send_presence()
            assert (await a.iq(stanza.ping())).get("type") == "result"
            with pytest.raises(xmpp.IqError) as caught:
                await a.iq(stanza.iq("get", "<query xmlns='urn:amoc:nothing'/>", to=server.domain))
            assert caught.value.condition in ("service-unavailable", "feature-not-implemented")
            assert caught.value.condition in str(caught.value)
            # Roster: get (which makes a an "interested resource", RFC 6121 §2.1.6), set,
            # then the push; a subscription that b accepts by the setting.
            await a.iq(stanza.roster_get())
            await a.iq(stanza.roster_set(b_jid, name="B"))
            push = await a.wait_for(pred.iq(type="set", xmlns=stanza.ROSTER_NS), timeout_ms=5000)
            assert any(e.get("jid") == b_jid for e in push.iter())
            a.send(stanza.subscribe(b_jid))
            await a.wait_for(pred.presence("subscribed", sender=b_jid), timeout_ms=5000)
            await a.wait_for(pred.presence("available", sender=b_jid), timeout_ms=5000)
            roster = await a.iq(stanza.roster_get())
            items = {e.get("jid"): e.get("subscription") for e in roster.iter() if e.name == "item"}
            assert items.get(b_jid) in ("to", "both")
            with pytest.raises(xmpp.ReceiveTimeout, match="no groupchat message"):
                await a.wait_for(pred.groupchat("nowhere@" + server.muc_domain), timeout_ms=200)
        finally:
            for me, other in ((a, b_jid), (b, a_jid)):
                if me.connected:
                    try:
                        await me.iq(stanza.roster_remove(other))
                    except xmpp.IqError as exc:  # a's removal may have removed b's item
                        assert exc.condition == "item-not-found"
            await a.stop()
            await b.stop()

    asyncio.run(run())
    assert metrics.histogram("xmpp.iq.ping.time_ms").count == pings + 1
    assert count("xmpp.subscriptions.accepted") >= accepted + 1


def test_in_band_registration_then_login(server: XmppServer) -> None:
    user = next(_ids)
    ok = count("xmpp.registrations.ok")
    conflicts = count("xmpp.registrations.failed.conflict")

    async def run() -> None:
        prefix = {"username_prefix": "ibr_", "password_prefix": "ibrpw_"}
        fresh = await xmpp.connect(user, register=True, **kw(server, "lean", **prefix))
        await fresh.send_presence()
        await fresh.stop()
        again = await xmpp.connect(user, register=True, **kw(server, "lean", **prefix))
        await again.iq(stanza.unregister())
        await again.stop()
        with pytest.raises(xmpp.LoginError, match="auth"):
            await xmpp.connect(user, **kw(server, "lean", **prefix))

    asyncio.run(run())
    assert count("xmpp.registrations.ok") == ok + 1
    assert count("xmpp.registrations.failed.conflict") == conflicts + 1
