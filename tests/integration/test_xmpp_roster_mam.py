"""Roster, subscriptions, presence fan-out and MAM lookups against the managed ejabberd and
Prosody, each with STARTTLS required: the helpers on both clients, then the scenarios
xmpp_presence_roster and xmpp_mam_lookup through the runner, whose counts must add up."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from amoc import metrics, xmpp
from amoc.xmpp import mam, ping, roster
from tests.integration.xmpp_fixture import XmppServer, count, run_scenario, server_settings

pytestmark = pytest.mark.integration

FIXTURES = {"ejabberd": "ejabberd_tls_server", "prosody": "prosody_server"}
# Ids of our own on the session servers (other test files use other ranges).
_pairs = itertools.count(61_001, 2)


@pytest.fixture(params=sorted(FIXTURES))
def server(request: pytest.FixtureRequest) -> XmppServer:
    """Each kind's session server (STARTTLS required; Prosody with SCRAM storage)."""
    got: XmppServer = request.getfixturevalue(FIXTURES[request.param])
    return got


def kw(server: XmppServer, client: str = "lean") -> dict[str, Any]:
    """connect() overrides for `server` over STARTTLS (its certificate is self-signed)."""
    return {
        "host": server.host,
        "port": server.port,
        "domain": server.domain,
        "tls": "starttls",
        "tls_verify": False,
        "client": client,
    }


def jid(server: XmppServer, user: int) -> str:
    return f"{server.user_prefix}{user}@{server.domain}"


async def pair(server: XmppServer, client: str) -> tuple[xmpp.Session, xmpp.Session, int]:
    """Two fresh users of `server`, online with presence; the first one's id."""
    first = next(_pairs)
    server.register(first, first + 1)
    a = await xmpp.connect(first, **kw(server, client))
    b = await xmpp.connect(first + 1, **kw(server, client))
    await a.send_presence()
    await b.send_presence()
    return a, b, first


def available_with(sender: str, status: str) -> xmpp.pred.Pred:
    """An available presence from `sender` with `status`."""
    with_status = xmpp.pred.Pred(
        lambda e: e.findtext(f"{xmpp.stanza.CLIENT_NS} status") == status, f"status {status!r}"
    )
    return xmpp.pred.presence("available", sender) & with_status


# -- the helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["lean", "slixmpp"])
def test_roster_round_trip_subscriptions_both_ways_and_versioning(
    server: XmppServer, client: str
) -> None:
    completed = count("xmpp.subscriptions.completed")
    unchanged = count("xmpp.roster.unchanged")

    async def run() -> None:
        a, b, first = await pair(server, client)
        a_jid, b_jid = jid(server, first), jid(server, first + 1)
        try:
            live = await roster.follow(a)  # also makes a an "interested resource"
            plain = await roster.get(b)
            assert len(live.roster) == 0 and len(plain) == 0
            assert live.roster.version is not None and plain.version is not None  # both version
            await roster.add(a, b_jid, name="Bee", groups=("amoc",))
            added = await live.refresh()
            item = added.get(b_jid)
            assert item is not None and (item.name, item.groups) == ("Bee", ("amoc",))
            assert item.subscription == "none"
            # b accepts by the setting (accept, the default), then a by the same.
            assert await roster.subscribe(a, b_jid, timeout_ms=5000) >= 0
            assert await roster.subscribe(b, a_jid, timeout_ms=5000) >= 0
            both = await live.refresh()
            assert both.get(b_jid).subscription == "both"  # type: ignore[union-attr]
            again = await live.refresh()
            assert again.unchanged and again.items == both.items
            fetched = await roster.get(a, versioning=False)  # a full answer agrees
            assert fetched.items == both.items
            live.close()
            # Presence now flows: a broadcast update and a directed one reach b (a stanza
            # that arrives before wait_for asks is found in the client's buffer).
            roster.presence(a, status="hello", stamped=True)
            roster.presence(a, to=f"{b_jid}/{b.settings.resource}", status="just you")
            for status in ("hello", "just you"):
                await b.wait_for(available_with(a_jid, status), timeout_ms=5000)
            assert await roster.remove(a, b_jid) is True
            assert b_jid not in await roster.get(a)
            await roster.remove(b, a_jid)  # b's item (subscription none now) too
            assert a_jid not in await roster.get(b, versioning=False)
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(run())
    assert count("xmpp.subscriptions.completed") == completed + 2
    # At least the last refresh; the others too when the pushes carried the new version.
    assert count("xmpp.roster.unchanged") >= unchanged + 1


def test_a_refused_subscription_raises_and_ping_records_its_round_trip(
    server: XmppServer,
) -> None:
    refused = count("xmpp.subscriptions.refused")
    pings = metrics.histogram("xmpp.iq.ping.time_ms").count

    async def run() -> float:
        first = next(_pairs)
        server.register(first, first + 1)
        a = await xmpp.connect(first, **kw(server))
        b = await xmpp.connect(first + 1, subscription_requests="refuse", **kw(server))
        try:
            await a.send_presence()
            await b.send_presence()
            await roster.get(a)
            with pytest.raises(roster.SubscriptionRefused, match="refused"):
                await roster.subscribe(a, jid(server, first + 1), timeout_ms=5000)
            await roster.remove(a, jid(server, first + 1))
            rtts = [await ping.ping(a, timeout_ms=5000) for _ in range(3)]
            return max(rtts)
        finally:
            await a.stop()
            await b.stop()

    worst = asyncio.run(run())
    assert 0 < worst < 5000
    assert count("xmpp.subscriptions.refused") == refused + 1
    assert metrics.histogram("xmpp.iq.ping.time_ms").count == pings + 3


@pytest.mark.parametrize("client", ["lean", "slixmpp"])
def test_mam_pages_through_what_a_pair_exchanged(server: XmppServer, client: str) -> None:
    pages = count("xmpp.mam.pages")

    async def run() -> mam.Lookup:
        a, b, first = await pair(server, client)
        since = time.time() - 2
        try:
            # One message at a time, each sent when the last has arrived: ejabberd 23.01
            # numbers archived messages by its microsecond clock (mod_mam's make_id), so two
            # messages archived in the same microsecond, one each way, share an id.
            for i in range(5):
                a.send_chat(first + 1, body=f"a{i}")
                await b.wait_received(i + 1, timeout_ms=5000)
                b.send_chat(first, body=f"b{i}")
                await a.wait_received(i + 1, timeout_ms=5000)
            return await mam.lookup(
                a, with_jid=jid(server, first + 1), start=since, page_size=3, timeout_ms=5000
            )
        finally:
            await a.stop()
            await b.stop()

    found = asyncio.run(run())
    bodies = [m.body for m in found.messages]
    assert sorted(bodies) == sorted([f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)])
    assert bodies == [f"{who}{i}" for i in range(5) for who in "ab"]  # in order
    assert found.complete and found.pages in (4, 5)  # 10 messages, 3 a page (+ an empty one)
    assert len({m.id for m in found.messages}) == 10 and all(m.stamp for m in found.messages)
    assert all(m.sent_us is not None for m in found.messages)
    assert count("xmpp.mam.pages") == pages + found.pages


def test_mam_errors_name_their_condition(server: XmppServer) -> None:
    async def run() -> tuple[str, str | None, int]:
        a, b, first = await pair(server, "lean")
        try:
            a.send_chat(first + 1, body="one")
            a.send_chat(first + 1, body="two")
            await b.wait_received(2, timeout_ms=5000)
            with pytest.raises(xmpp.IqError) as bad_time:
                await mam.query(a, start="not-a-time")
            try:
                page = await mam.query(a, page_size=5, after="no-such-archive-id")
            except xmpp.IqError as exc:
                return bad_time.value.condition, exc.condition, 0
            return bad_time.value.condition, None, len(page.messages)
        finally:
            await a.stop()
            await b.stop()

    bad_time, bad_id, answered = asyncio.run(run())
    assert bad_time == "bad-request"
    if server.kind == "prosody":
        assert bad_id == "item-not-found"
    else:  # ejabberd 23.01 (mnesia) does not check RSM ids: an empty page, no error
        assert bad_id is None and answered == 0


# -- the scenarios --------------------------------------------------------------------------


def scenario_settings(server: XmppServer, **extra: Any) -> dict[str, Any]:
    """The runner's settings for `server` over STARTTLS, one run per user."""
    return {
        **server_settings(server, "lean"),
        "xmpp_tls": "starttls",
        "xmpp_tls_verify": False,
        "repeat_num": 1,
        **extra,
    }


# Users per server: Prosody's logins cost it 7-12 ms each, ejabberd's MAM (mnesia, on disk)
# answers a page in 15 ms idle and in about half a second under this load.
PRESENCE_USERS = {"ejabberd": 200, "prosody": 150}
MAM_USERS = {"ejabberd": 200, "prosody": 150}
FIRST = {"ejabberd": 62_001, "prosody": 64_001}


def test_presence_roster_every_update_reaches_the_contact(server: XmppServer) -> None:
    users, updates = PRESENCE_USERS[server.kind], 4
    first = FIRST[server.kind]
    server.register(first, first + users - 1)
    names = [
        "presence_roster.subscribed",
        "presence_roster.updates_sent",
        "presence_roster.updates_received",
        "presence_roster.incomplete",
        "presence_roster.unpaired",
        "presence_roster.subscription_failed",
        "xmpp.subscriptions.completed",
        "xmpp.logins.ok",
        "xmpp.disconnects",
    ]
    before = {n: count(n) for n in names}
    ttd = metrics.histogram("xmpp.presences.ttd_ms").count
    settings = scenario_settings(
        server,
        presence_updates=updates,
        presence_interval=200,
        interarrival=5 if server.kind == "ejabberd" else 10,
    )
    status = asyncio.run(
        run_scenario(settings, first, first + users - 1, deadline_s=50, name="xmpp_presence_roster")
    )
    delta = {n: count(n) - before[n] for n in names}
    assert status["users"]["finished"] == users and status["users"]["failed_runs"] == 0
    assert delta["xmpp.logins.ok"] == users and delta["xmpp.disconnects"] == 0
    assert delta["presence_roster.subscribed"] == users
    assert delta["xmpp.subscriptions.completed"] == users
    assert delta["presence_roster.updates_sent"] == users * updates
    assert delta["presence_roster.updates_received"] == users * updates
    for name in ("incomplete", "unpaired", "subscription_failed"):
        assert delta[f"presence_roster.{name}"] == 0, name
    # Most updates arrive live and stamped (Prosody may hand one over as the contact's last
    # presence, with <delay/>, right after the subscription): those are timed.
    assert metrics.histogram("xmpp.presences.ttd_ms").count - ttd >= users * (updates - 1)

    async def rosters_left() -> int:  # the run removed what it added: a rerun starts clean
        sample = [first, first + users // 2, first + users - 1]
        total = 0
        for user in sample:
            c = await xmpp.connect(user, **kw(server))
            total += len(await roster.get(c))
            await c.stop()
        return total

    assert asyncio.run(rosters_left()) == 0


def test_mam_lookup_finds_every_message_exchanged(server: XmppServer) -> None:
    users, per_user = MAM_USERS[server.kind], 6
    first = FIRST[server.kind] + 1000
    server.register(first, first + users - 1)
    names = [
        "mam_lookup.found",
        "mam_lookup.missing",
        "mam_lookup.incomplete",
        "mam_lookup.truncated",
        "mam_lookup.receive_incomplete",
        "mam_lookup.late",
        "xmpp.mam.messages",
        "xmpp.messages.sent",
    ]
    before = {n: count(n) for n in names}
    lookups = metrics.histogram("xmpp.mam.lookup_time_ms").count
    settings = scenario_settings(
        server,
        messages_per_user=per_user,
        message_interval=100,
        page_size=5,
        interarrival=10,
        xmpp_reply_timeout=15_000,  # a MAM page on a busy ejabberd can take seconds
    )
    status = asyncio.run(
        run_scenario(settings, first, first + users - 1, deadline_s=60, name="xmpp_mam_lookup")
    )
    delta = {n: count(n) - before[n] for n in names}
    assert status["users"]["finished"] == users and status["users"]["failed_runs"] == 0
    assert delta["xmpp.messages.sent"] == users * per_user
    assert delta["mam_lookup.found"] == 2 * users * per_user
    for name in ("missing", "incomplete", "truncated", "receive_incomplete"):
        assert delta[f"mam_lookup.{name}"] == 0, name
    # Found at the second look (the archive lagging behind delivery) is allowed, not lost.
    assert 0 <= delta["mam_lookup.late"] <= delta["mam_lookup.found"]
    assert delta["xmpp.mam.messages"] >= 2 * users * per_user
    rechecks = 0 if delta["mam_lookup.late"] == 0 else users  # at most one more each
    assert users <= metrics.histogram("xmpp.mam.lookup_time_ms").count - lookups <= users + rechecks
