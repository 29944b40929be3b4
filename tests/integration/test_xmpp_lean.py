"""The lean XMPP client (xmpp_client = "lean") against a real ejabberd."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from amoc import metrics, xmpp
from amoc.xmpp import lean as lean_mod
from tests.integration.xmpp_fixture import (
    XmppServer,
    connect_kw,
    count,
    own_server,
    run_scenario,
    server_settings,
)

pytestmark = pytest.mark.integration

CLIENT = "lean"


def server_kw(server: XmppServer) -> dict[str, Any]:
    """connect() overrides that reach `server` with the lean client."""
    return connect_kw(server, CLIENT)


# -- logins ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sasl", ["PLAIN", "SCRAM-SHA-1"])
def test_login_presence_and_chat(xmpp_server: Any, sasl: str) -> None:
    first = 20_001 if sasl == "PLAIN" else 20_003
    xmpp_server.register(first, first + 1)
    before = {n: count(n) for n in ("xmpp.logins.ok", "xmpp.connections.ok")}
    connected_before = metrics.gauge("xmpp.connected").value

    async def run() -> list[xmpp.Message]:
        a = await xmpp.connect(first, sasl=sasl, **server_kw(xmpp_server))
        b = await xmpp.connect(first + 1, sasl=sasl, **server_kw(xmpp_server))
        assert isinstance(a, xmpp.LeanClient) and a.connected
        assert a.bound_jid == f"user_{first}@localhost/amoc"
        assert metrics.gauge("xmpp.connected").value == connected_before + 2
        await a.send_presence()
        await b.send_presence()
        a.send_chat(first + 1)
        a.send_chat(first + 1, body="a < b & c, ünïcode €")
        await b.wait_received(2, timeout_ms=5000)
        got = b.take_messages()
        await a.stop()
        await b.stop()
        await a.stop()  # twice is fine
        assert not a.connected
        return got

    got = asyncio.run(run())
    assert [m.body for m in got] == [f"message 1 from user_{first}", "a < b & c, ünïcode €"]
    assert all(m.sender == f"user_{first}@localhost/amoc" for m in got)
    assert all(m.ttd_ms is not None and 0 <= m.ttd_ms < 5000 for m in got)
    assert count("xmpp.logins.ok") == before["xmpp.logins.ok"] + 2
    assert count("xmpp.connections.ok") == before["xmpp.connections.ok"] + 2
    assert metrics.gauge("xmpp.connected").value == connected_before


@pytest.mark.parametrize("sasl", ["PLAIN", "SCRAM-SHA-1"])
def test_wrong_password_is_an_auth_login_error(xmpp_server: Any, sasl: str) -> None:
    xmpp_server.register(20_401, 20_401)
    before = (count("xmpp.logins.failed"), count("xmpp.logins.failed.auth"))

    async def run() -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await xmpp.connect(
                20_401, password="not-the-password", sasl=sasl, **server_kw(xmpp_server)
            )
        return caught.value

    err = asyncio.run(run())
    assert err.reason is xmpp.Reason.AUTH and err.user_id == 20_401
    assert "not-authorized" in str(err) and "user_20401" in str(err)
    assert (count("xmpp.logins.failed"), count("xmpp.logins.failed.auth")) == (
        before[0] + 1,
        before[1] + 1,
    )


def test_waiting_for_a_message_that_never_comes_times_out(xmpp_server: Any) -> None:
    xmpp_server.register(20_501, 20_501)
    before = count("xmpp.messages.timeouts")

    async def run() -> None:
        client = await xmpp.connect(20_501, **server_kw(xmpp_server))
        try:
            await client.send_presence()
            with pytest.raises(xmpp.ReceiveTimeout, match="no message within 200 ms"):
                await client.wait_message(timeout_ms=200)
        finally:
            await client.stop()

    asyncio.run(run())
    assert count("xmpp.messages.timeouts") == before + 1


# -- the scenario ---------------------------------------------------------------------------


def scenario_settings(server: XmppServer, **extra: Any) -> dict[str, Any]:
    return {**server_settings(server, CLIENT), **extra}


def test_one_to_one_with_the_lean_client_delivers_every_message(xmpp_server: Any) -> None:
    users, per_user, first = 400, 5, 21_001
    xmpp_server.register(first, first + users - 1)
    names = (
        "xmpp.logins.ok",
        "xmpp.logins.failed",
        "xmpp.messages.sent",
        "xmpp.messages.received",
        "one_to_one.received",
        "one_to_one.stale",
        "one_to_one.incomplete",
        "xmpp.disconnects",
    )
    before = {n: count(n) for n in names}
    ttd_before = metrics.histogram("xmpp.ttd_ms").count
    settings = scenario_settings(
        xmpp_server,
        messages_per_user=per_user,
        message_interval=1000,  # the first message must not race the neighbour's login
        xmpp_sasl="PLAIN",  # cheap server logins, so that none queues behind the others
        receive_timeout=15_000,
        interarrival=1,
        repeat_num=1,
    )
    status = asyncio.run(run_scenario(settings, first, first + users - 1, deadline_s=50))
    delta = {n: count(n) - before[n] for n in names}
    assert status["users"]["finished"] == users and status["users"]["failed_runs"] == 0
    assert delta["xmpp.logins.ok"] == users and delta["xmpp.logins.failed"] == 0
    assert delta["xmpp.messages.sent"] == users * per_user
    assert delta["one_to_one.received"] == users * per_user
    assert delta["xmpp.messages.received"] == delta["xmpp.messages.sent"]
    assert delta["one_to_one.stale"] == 0
    assert delta["one_to_one.incomplete"] == 0 and delta["xmpp.disconnects"] == 0
    assert metrics.histogram("xmpp.ttd_ms").count - ttd_before == delta["xmpp.messages.received"]
    assert metrics.gauge("xmpp.connected").value == 0


# -- the receive path's shortcut ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ejabberd", "prosody"])
def test_chat_messages_as_the_servers_deliver_them_take_the_shortcut(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """ejabberd and Prosody (STARTTLS, SCRAM) deliver amoc's chat messages in the form that
    parser.stamped_chats reads without expat, and what it reads is what the parser reads."""
    server: XmppServer = request.getfixturevalue(
        "xmpp_server" if kind == "ejabberd" else "prosody_server"
    )
    first = 20_011 if kind == "ejabberd" else 20_013
    server.register(first, first + 1)
    kw = server_kw(server)
    if kind == "prosody":
        kw.update(port=server.port, tls="starttls", tls_verify=True, tls_ca_file=server.cert)
    taken: list[tuple[str, str, str]] = []

    def spy(data: bytes) -> Any:
        chats, rest = stamped_chats(data)
        taken.extend(chats)
        return chats, rest

    stamped_chats = lean_mod.stamped_chats
    monkeypatch.setattr(lean_mod, "stamped_chats", spy)

    async def run() -> tuple[list[xmpp.Message], list[xmpp.Message], str]:
        a = await xmpp.connect(first, **kw)
        b = await xmpp.connect(first + 1, **kw)
        await a.send_presence()
        await b.send_presence()
        for _ in range(3):
            a.send_chat(first + 1)
        await b.wait_received(3, timeout_ms=5000)
        short = b.take_messages()
        b.add_handler(xmpp.pred.chat(), lambda _stanza: False)  # watched: the parser's way
        a.send_chat(first + 1)
        await b.wait_received(4, timeout_ms=5000)
        parsed = b.take_messages()
        await a.stop()
        await b.stop()
        return short, parsed, a.bound_jid

    short, parsed, sender = asyncio.run(run())
    assert [m.body for m in short] == [f"message {n} from user_{first}" for n in (1, 2, 3)]
    assert [(f, b) for f, b, _us in taken] == [(sender, m.body) for m in short]
    assert all(m.sender == sender and m.ttd_ms is not None and m.ttd_ms >= 0 for m in short)
    assert [m.body for m in parsed] == [f"message 4 from user_{first}"]
    assert parsed[0].sender == sender and parsed[0].sent_us is not None


# -- the server goes away mid-session -------------------------------------------------------


@pytest.fixture
def lean_stop_server() -> Iterator[XmppServer]:
    """An ejabberd of our own, so that stopping it disturbs no other test."""
    with own_server("amoc_test_lean_stop", users=60) as server:
        yield server


def test_server_stopping_mid_session_raises_connection_lost(lean_stop_server: XmppServer) -> None:
    users = 60
    before = {n: count(n) for n in ("xmpp.disconnects", "xmpp.logins.ok")}
    connected_before = metrics.gauge("xmpp.connected").value

    async def run() -> list[BaseException]:
        clients = [
            await xmpp.connect(i, **server_kw(lean_stop_server)) for i in range(1, users + 1)
        ]
        for client in clients:
            await client.send_presence(wait=False)
        assert metrics.gauge("xmpp.connected").value == connected_before + users
        waiters = [
            asyncio.create_task(client.wait_message(timeout_ms=30_000)) for client in clients
        ]
        await asyncio.sleep(0.2)
        await asyncio.to_thread(lean_stop_server.stop)
        outcome = await asyncio.gather(*waiters, return_exceptions=True)
        for client in clients:
            assert not client.connected
            with pytest.raises(xmpp.ConnectionLost):
                client.send_chat(1)
            await client.stop()  # after a loss: a no-op
        return [o for o in outcome if isinstance(o, BaseException)]

    started = time.monotonic()
    errors = asyncio.run(run())
    assert time.monotonic() - started < 40
    assert len(errors) == users and all(isinstance(e, xmpp.ConnectionLost) for e in errors)
    reasons = {e.reason for e in errors if isinstance(e, xmpp.ConnectionLost)}
    assert reasons <= {xmpp.Reason.CLOSED, xmpp.Reason.STREAM_ERROR}
    assert count("xmpp.disconnects") - before["xmpp.disconnects"] == users
    assert count("xmpp.logins.ok") - before["xmpp.logins.ok"] == users
    assert metrics.gauge("xmpp.connected").value == connected_before

    # The server comes back: the same user logs in again.
    lean_stop_server.start()

    async def again() -> bool:
        client = await xmpp.connect(1, **server_kw(lean_stop_server))
        try:
            return client.connected
        finally:
            await client.stop()

    assert asyncio.run(again())
