"""BOSH (XEP-0206) on the real servers: ejabberd at /bosh, Prosody at /http-bind, both over
plain HTTP on their http port while c2s requires STARTTLS; logins, presence, chat both ways,
a clean stop, BOSH and TCP users mixed by id, xmpp_one_to_one through the runner, and a
wrong path refused clearly."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from amoc import metrics, xmpp
from amoc.xmpp import bosh
from tests.integration.xmpp_fixture import XmppServer, count, run_scenario, server_settings

pytestmark = pytest.mark.integration

BOSH_PATHS = {"ejabberd_tls_server": "/bosh", "prosody_server": "/http-bind"}
_ids = itertools.count(60_001, 2)  # odd: in a list of two transports, first goes first
MESSAGES = 20


def url(server: XmppServer, fixture: str) -> str:
    return f"http://{server.host}:{server.http_port}{BOSH_PATHS[fixture]}"


async def chat(a: xmpp.Session, b: xmpp.Session, messages: int) -> list[xmpp.Message]:
    """a sends `messages` stamped chat messages to b; what b received."""
    for _ in range(messages):
        a.send_chat(b.jid + "/amoc")
    await b.wait_received(messages, timeout_ms=10_000)
    return b.take_messages()


async def chat_both_ways(a: xmpp.Session, b: xmpp.Session) -> list[xmpp.Message]:
    await a.send_presence()
    await b.send_presence()
    return await chat(a, b, MESSAGES) + await chat(b, a, MESSAGES)


def kinds(*clients: Any) -> list[str]:
    return [type(c._transport).__name__ for c in clients]


@pytest.mark.parametrize(
    ("fixture", "mechanism"),
    [
        *(
            ("ejabberd_tls_server", m)
            for m in ["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"]
        ),
        *(("prosody_server", m) for m in ["PLAIN", "SCRAM-SHA-1"]),
    ],
)
def test_bosh_logins_presence_and_chat_both_ways(
    request: pytest.FixtureRequest, fixture: str, mechanism: str
) -> None:
    server: XmppServer = request.getfixturevalue(fixture)
    first = next(_ids)
    server.register(first, first + 1)
    disconnects = count("xmpp.disconnects")

    async def run() -> tuple[list[str], list[str], list[xmpp.Message]]:
        kw = {  # as a user would write it: the word, the http port and the path
            "transport": "bosh",
            "http_port": server.http_port,
            "bosh_path": BOSH_PATHS[fixture],
            "domain": server.domain,
            "sasl": mechanism,
        }
        a = await xmpp.connect(first, **kw)
        b = await xmpp.connect(first + 1, **kw)
        try:
            used = [getattr(c, "mechanism", "") for c in (a, b)]
            return used, kinds(a, b), await chat_both_ways(a, b)
        finally:
            await a.stop()
            await b.stop()
            assert not a.connected and not b.connected

    used, links, got = asyncio.run(run())
    assert used == [mechanism] * 2 and links == ["BoshLink"] * 2
    assert len(got) == 2 * MESSAGES and len({m.body for m in got}) == 2 * MESSAGES
    assert all(m.ttd_ms is not None and m.ttd_ms >= 0 for m in got)
    assert count("xmpp.disconnects") == disconnects  # a clean stop is no disconnect
    assert bosh.pools() == 0


@pytest.mark.parametrize("fixture", sorted(BOSH_PATHS))
def test_tcp_and_bosh_users_mixed_by_id_chat_with_each_other(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    server: XmppServer = request.getfixturevalue(fixture)
    first = next(_ids)
    server.register(first, first + 1)

    async def run() -> tuple[list[str], list[xmpp.Message]]:
        kw = {
            "transport": ["tcp", url(server, fixture)],
            "host": server.host,
            "port": server.port,
            "domain": server.domain,
            "tls": "starttls",  # for the TCP user; BOSH users take TLS from the URL
            "tls_verify": True,
            "tls_ca_file": server.cert,
        }
        tcp = await xmpp.connect(first, **kw)
        over_bosh = await xmpp.connect(first + 1, **kw)
        try:
            return kinds(tcp, over_bosh), await chat_both_ways(tcp, over_bosh)
        finally:
            await tcp.stop()
            await over_bosh.stop()

    links, got = asyncio.run(run())
    assert links[1] == "BoshLink" and links[0] != "BoshLink"
    assert len(got) == 2 * MESSAGES and len({m.body for m in got}) == 2 * MESSAGES


RUNNER_IDS = {"ejabberd_tls_server": 90_001, "prosody_server": 90_101}  # ids of its own


@pytest.mark.parametrize("fixture", sorted(BOSH_PATHS))
def test_one_to_one_over_bosh_through_the_runner(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    server: XmppServer = request.getfixturevalue(fixture)
    users, per_user, first = 40, 3, RUNNER_IDS[fixture]
    server.register(first, first + users - 1)
    names = ("xmpp.logins.ok", "xmpp.messages.sent", "one_to_one.received", "xmpp.disconnects")
    before = {n: count(n) for n in names}
    settings = {
        **server_settings(server, "lean"),
        "xmpp_transport": url(server, fixture),
        "xmpp_sasl": "PLAIN",
        "messages_per_user": per_user,
        "message_interval": 1000,  # the first message must not race the neighbour's login
        "receive_timeout": 15_000,
        "interarrival": 5,
        "repeat_num": 1,
    }
    status = asyncio.run(run_scenario(settings, first, first + users - 1, deadline_s=60))
    delta = {n: count(n) - before[n] for n in names}
    assert status["users"]["finished"] == users and status["users"]["failed_runs"] == 0
    assert delta["xmpp.logins.ok"] == users and delta["xmpp.disconnects"] == 0
    assert delta["xmpp.messages.sent"] == delta["one_to_one.received"] == users * per_user
    assert metrics.gauge("xmpp.connected").value == 0 and bosh.pools() == 0


@pytest.mark.parametrize(("fixture", "wrong"), [("ejabberd_tls_server", "/http-bind"),
                                                ("prosody_server", "/bosh")])  # fmt: skip
def test_the_other_servers_path_is_refused_naming_both(
    request: pytest.FixtureRequest, fixture: str, wrong: str
) -> None:
    server: XmppServer = request.getfixturevalue(fixture)
    where = f"http://{server.host}:{server.http_port}{wrong}"

    async def run() -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await xmpp.connect(1, transport=where, domain=server.domain)
        return caught.value

    err = asyncio.run(run())
    assert "HTTP 404" in str(err) and where in str(err)
    assert "ejabberd: /bosh" in str(err) and "Prosody: /http-bind" in str(err)


def test_an_unknown_domain_is_refused_by_the_server(ejabberd_tls_server: XmppServer) -> None:
    server = ejabberd_tls_server

    async def run() -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await xmpp.connect(1, transport=url(server, "ejabberd_tls_server"), domain="nope.net")
        return caught.value

    err = asyncio.run(run())
    assert "refused the BOSH session" in str(err) and "xmpp_domain" in str(err)


@pytest.mark.parametrize("fixture", sorted(BOSH_PATHS))
def test_bosh_over_https_verifies_the_certificate(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    server: XmppServer = request.getfixturevalue(fixture)
    first = next(_ids)
    server.register(first, first + 1)
    https = f"https://127.0.0.1:{server.https_port}{BOSH_PATHS[fixture]}"

    async def run() -> list[xmpp.Message]:
        kw = {"transport": https, "domain": server.domain, "tls_verify": True}
        a = await xmpp.connect(first, tls_ca_file=server.cert, **kw)
        b = await xmpp.connect(first + 1, tls_ca_file=server.cert, **kw)
        try:
            return await chat_both_ways(a, b)
        finally:
            await a.stop()
            await b.stop()

    assert len(asyncio.run(run())) == 2 * MESSAGES

    async def untrusted() -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await xmpp.connect(first, transport=https, domain=server.domain, tls_verify=True)
        return caught.value

    err = asyncio.run(untrusted())
    assert err.reason is xmpp.Reason.TLS or "certificate" in str(err)
