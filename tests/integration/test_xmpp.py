"""amoc.xmpp against a real ejabberd: the slixmpp client (xmpp_client = "slixmpp") with
the one-to-one scenario, a lost server and a wrong password, and the login failures that
need no server for both clients. The lean client's own tests are in test_xmpp_lean.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from amoc import metrics, xmpp
from tests.integration.xmpp_fixture import (
    TOOL,
    XmppServer,
    connect_kw,
    count,
    own_server,
    run_scenario,
    server_settings,
)
from tests.net import free_port

pytestmark = pytest.mark.integration

CLIENT = "slixmpp"


def ttd_count() -> int:
    return int(metrics.histogram("xmpp.ttd_ms").count)


# -- the scenario ---------------------------------------------------------------------------


def test_one_to_one_delivers_every_message(xmpp_server: Any) -> None:
    users, per_user, first = 300, 5, 10_001
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
    ttd_before = ttd_count()
    settings = {
        **server_settings(xmpp_server, CLIENT),
        "messages_per_user": per_user,
        # A first message must not race the neighbour's login (the scenario's premise: it
        # waits one interval; ejabberd can lose a message stored offline during a login).
        "message_interval": 1000,
        # PLAIN keeps the server's logins cheap: SCRAM-SHA-512 against plain storage costs
        # ejabberd ~8 ms each, and logins queued behind it race the first messages.
        "xmpp_sasl": "PLAIN",
        "receive_timeout": 15_000,
        "interarrival": 2,
        "repeat_num": 1,
    }
    status = asyncio.run(run_scenario(settings, first, first + users - 1, deadline_s=60))
    delta = {n: count(n) - before[n] for n in names}
    assert status["users"]["finished"] == users and status["users"]["failed_runs"] == 0
    assert delta["xmpp.logins.ok"] == users and delta["xmpp.logins.failed"] == 0
    assert delta["xmpp.messages.sent"] == users * per_user
    assert delta["one_to_one.received"] == users * per_user
    assert delta["xmpp.messages.received"] == users * per_user + delta["one_to_one.stale"]
    assert delta["one_to_one.incomplete"] == 0 and delta["xmpp.disconnects"] == 0
    assert ttd_count() - ttd_before == delta["xmpp.messages.received"]
    assert metrics.gauge("xmpp.connected").value == 0


# -- login failures -------------------------------------------------------------------------


def test_wrong_password_is_a_login_error_with_its_reason(xmpp_server: Any) -> None:
    xmpp_server.register(10_401, 10_401)
    before = (count("xmpp.logins.failed"), count("xmpp.logins.failed.auth"))

    async def run() -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await xmpp.connect(
                10_401, password="not-the-password", **connect_kw(xmpp_server, CLIENT)
            )
        return caught.value

    err = asyncio.run(run())
    assert err.reason is xmpp.Reason.AUTH and err.user_id == 10_401
    assert "not-authorized" in str(err) and "user_10401" in str(err)
    assert (count("xmpp.logins.failed"), count("xmpp.logins.failed.auth")) == (
        before[0] + 1,
        before[1] + 1,
    )


@pytest.mark.parametrize("client", ["slixmpp", "lean"])
def test_nothing_listening_is_refused_at_once(client: str) -> None:
    port = free_port()
    before = (count("xmpp.logins.failed.refused"), count("xmpp.connections.failed"))

    async def run() -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await xmpp.connect(1, client=client, port=port, connect_timeout=5000)
        return caught.value

    started = time.monotonic()
    err = asyncio.run(run())
    assert time.monotonic() - started < 2
    assert err.reason is xmpp.Reason.REFUSED and f"127.0.0.1:{port}" in str(err)
    assert (count("xmpp.logins.failed.refused"), count("xmpp.connections.failed")) == (
        before[0] + 1,
        before[1] + 1,
    )


@pytest.mark.parametrize("client", ["slixmpp", "lean"])
def test_a_silent_server_times_out_within_the_timeout(client: str) -> None:
    async def run() -> xmpp.LoginError:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(xmpp.LoginError) as caught:
                await xmpp.connect(1, client=client, port=port, connect_timeout=300)
            return caught.value
        finally:
            server.close()

    before = count("xmpp.logins.failed.timeout")
    started = time.monotonic()
    err = asyncio.run(run())
    assert 0.25 < time.monotonic() - started < 2
    assert err.reason is xmpp.Reason.TIMEOUT and "300 ms" in str(err)
    assert "connected but not logged in" in str(err)
    assert count("xmpp.logins.failed.timeout") == before + 1


# -- the server goes away mid-run -----------------------------------------------------------


@pytest.fixture
def dedicated_server() -> Iterator[XmppServer]:
    """A server of our own, so that stopping it disturbs no other test."""
    with own_server("amoc_test_xmpp_stop", users=100) as server:
        yield server


def test_server_stopping_mid_run_fails_users_cleanly(dedicated_server: XmppServer) -> None:
    users = 100
    before = {n: count(n) for n in ("xmpp.disconnects", "xmpp.logins.ok", "users.failed")}
    settings = {
        **server_settings(dedicated_server, CLIENT),
        "messages_per_user": 100,
        "message_interval": 100,
        "receive_timeout": 30_000,
        "interarrival": 0,
        "repeat_num": 1,
    }

    async def run() -> dict[str, Any]:
        scenario = asyncio.create_task(run_scenario(settings, 1, users, deadline_s=30))
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while count("xmpp.logins.ok") - before["xmpp.logins.ok"] < users:
            assert loop.time() < end and not scenario.done(), "users did not log in"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(dedicated_server.stop)
        return await scenario

    started = time.monotonic()
    status = asyncio.run(run())
    assert time.monotonic() - started < 30
    assert count("xmpp.disconnects") - before["xmpp.disconnects"] == users
    assert status["users"]["failed_runs"] == users
    assert metrics.gauge("xmpp.connected").value == 0

    # The server comes back: the same users log in again.
    dedicated_server.start()

    async def again() -> bool:
        client = await xmpp.connect(1, **connect_kw(dedicated_server, CLIENT))
        try:
            return client.connected
        finally:
            await client.stop()

    assert asyncio.run(again())


# -- the server tool's bad input ------------------------------------------------------------


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_server_tool_refuses_a_busy_port_and_a_public_host(xmpp_server: Any) -> None:
    busy = run_tool("start", "--name", "amoc_test_busy", "--port", str(xmpp_server.port))
    assert busy.returncode == 1
    assert f"127.0.0.1:{xmpp_server.port} (--port) is already in use" in busy.stderr
    public = run_tool("start", "--name", "amoc_test_busy", "--host", "8.8.8.8")
    assert public.returncode == 1 and "not a loopback address" in public.stderr
    missing = run_tool("register", "--name", "amoc_test_never_started")
    assert missing.returncode == 1 and "run `start` first" in missing.stderr
    bad = run_tool("register", "--name", xmpp_server.name, "--first", "5", "--last", "2")
    assert bad.returncode == 1 and "need 1 <= first <= last" in bad.stderr
