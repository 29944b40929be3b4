"""How users reach real servers: every SASL mechanism and TLS mode each managed server offers,
certificates verified against the test CA, several servers with one down, source addresses
seen by `ss`, the error when local ports run out, and accounts from a users file."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from amoc import metrics, xmpp
from amoc.errors import ConfigError
from tests.integration.xmpp_fixture import XmppServer, count, own_server
from tests.net import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
_ids = itertools.count(80_001, 2)  # ids of its own on the session servers

EJABBERD_MECHANISMS = [
    "PLAIN",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "SCRAM-SHA-512",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-512-PLUS",
    "AUTO",
]
PROSODY_MECHANISMS = ["PLAIN", "SCRAM-SHA-1", "AUTO"]  # with SCRAM-SHA-1 hashed storage
CASES = [
    *(("ejabberd_tls_server", m, t) for m in EJABBERD_MECHANISMS for t in ("starttls", "direct")),
    *(("prosody_server", m, t) for m in PROSODY_MECHANISMS for t in ("starttls", "direct")),
]


def verified(server: XmppServer, tls: str, **extra: Any) -> dict[str, Any]:
    """connect() overrides for `server`, the certificate checked against its own file."""
    return {
        "host": server.host,
        "port": server.tls_port if tls == "direct" else server.port,
        "domain": server.domain,
        "tls": tls,
        "tls_verify": True,
        "tls_ca_file": server.cert,
        "client": "lean",
        **extra,
    }


async def chat(a: xmpp.Session, b: xmpp.Session, messages: int) -> list[xmpp.Message]:
    """a sends `messages` chat messages to b; what b received."""
    await a.send_presence()
    await b.send_presence()
    for _ in range(messages):
        a.send_chat(b.jid + "/amoc")
    await b.wait_received(messages, timeout_ms=10_000)
    return b.take_messages()


@pytest.mark.parametrize(("fixture", "mechanism", "tls"), CASES)
def test_every_mechanism_and_tls_mode_the_server_offers(
    request: pytest.FixtureRequest, fixture: str, mechanism: str, tls: str
) -> None:
    server: XmppServer = request.getfixturevalue(fixture)
    first = next(_ids)
    server.register(first, first + 1)

    async def run() -> tuple[str, list[xmpp.Message]]:
        a = await xmpp.connect(first, sasl=mechanism, **verified(server, tls))
        b = await xmpp.connect(first + 1, sasl=mechanism, **verified(server, tls))
        try:
            used = getattr(a, "mechanism", "")
            return used, await chat(a, b, 5)
        finally:
            await a.stop()
            await b.stop()

    used, got = asyncio.run(run())
    assert len(got) == 5 and all(m.ttd_ms is not None for m in got)
    if mechanism == "AUTO":
        strongest = "SCRAM-SHA-512-PLUS" if fixture.startswith("ejabberd") else "SCRAM-SHA-1"
        assert used == strongest
    else:
        assert used == mechanism


def test_a_certificate_for_another_name_is_refused_naming_the_settings(
    ejabberd_tls_server: XmppServer,
) -> None:
    async def run() -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await xmpp.connect(
                1, tls_server_name="xmpp.example.net", **verified(ejabberd_tls_server, "starttls")
            )
        return caught.value

    err = asyncio.run(run())
    assert err.reason is xmpp.Reason.TLS and "xmpp_tls_server_name" in str(err)
    assert "xmpp.example.net" in str(err)


def test_a_mechanism_the_server_lacks_names_what_it_offers(prosody_server: XmppServer) -> None:
    async def run() -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await xmpp.connect(1, sasl="SCRAM-SHA-256", **verified(prosody_server, "starttls"))
        return caught.value

    err = asyncio.run(run())
    assert err.reason is xmpp.Reason.NO_MECHANISM
    offered = str(err).split("the server offers ", 1)[1].split(", not ", 1)[0]
    assert set(offered.split(", ")) == {"PLAIN", "SCRAM-SHA-1"} and "xmpp_sasl" in str(err)


def test_users_spread_over_servers_and_retries_reach_the_one_that_is_up() -> None:
    with own_server(f"pytest_up{free_port()}", users=0) as up:
        down_port = free_port()  # nothing listens there
        first = next(_ids)
        up.register(first, first + 5)
        retries = count("xmpp.connections.retries")
        failed = count("xmpp.logins.failed")
        servers = [f"127.0.0.1:{down_port}", f"{up.host}:{up.port}"]

        async def run() -> list[str]:
            clients = [
                await xmpp.connect(
                    i,
                    servers=servers,
                    connect_attempts=3,
                    port=up.port,
                    domain=up.domain,
                    sasl="PLAIN",
                )
                for i in range(first, first + 6)
            ]
            ports = [f"{c.settings.host}:{c.settings.port}" for c in clients]
            for c in clients:
                await c.stop()
            return ports

        ports = asyncio.run(run())
    assert set(ports) == {f"{up.host}:{up.port}"}
    # Users first, first + 2, ... pick the down server first (by id), then retry on the next.
    assert count("xmpp.connections.retries") == retries + 3
    assert count("xmpp.logins.failed") == failed


def test_a_node_connects_from_several_source_addresses(xmpp_server: XmppServer) -> None:
    first = next(_ids)
    xmpp_server.register(first, first + 5)

    async def run() -> set[str]:
        sources = ["127.0.0.2", "127.0.0.3"]
        clients = [
            await xmpp.connect(
                i,
                source_addresses=sources,
                host=xmpp_server.host,
                port=xmpp_server.port,
                sasl="PLAIN",
            )
            for i in range(first, first + 6)
        ]
        try:
            shown = subprocess.run(
                ["ss", "-tnH", "state", "established", "dst", f"127.0.0.1:{xmpp_server.port}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        finally:
            for c in clients:
                await c.stop()
        return {line.split()[-2].rsplit(":", 1)[0] for line in shown.splitlines() if line}

    assert {"127.0.0.2", "127.0.0.3"} <= asyncio.run(run())


EXHAUST = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, sys.argv[1])
    from amoc import xmpp

    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 5222)
        results = await asyncio.gather(
            *(xmpp.connect(i, connect_timeout=3000) for i in range(1, 6)),
            return_exceptions=True,
        )
        for r in results:
            print(type(r).__name__, r)
        server.close()

    asyncio.run(main())
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="network namespaces are Linux's")
def test_running_out_of_local_ports_names_the_setting(tmp_path: Path) -> None:
    name = f"amocports{free_port()}"
    script = tmp_path / "exhaust.py"
    script.write_text(EXHAUST)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        shell = (
            "ip link set lo up && echo '40000 40002' > /proc/sys/net/ipv4/ip_local_port_range"
            f" && exec {sys.executable} {script} {ROOT}"
        )
        done = subprocess.run(
            ["ip", "netns", "exec", name, "sh", "-c", shell],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    assert any("xmpp_source_addresses" in line for line in lines), lines


def test_accounts_come_from_a_users_file(xmpp_server: XmppServer, tmp_path: Path) -> None:
    first = next(_ids)
    xmpp_server.register(first, first + 1)
    users = tmp_path / "users.csv"
    users.write_text(
        "id,username,password,server\n"
        f"1,user_{first},password_{first}\n"
        f"2,user_{first + 1},password_{first + 1},{xmpp_server.host}:{xmpp_server.port}\n"
    )

    async def run() -> int:
        kw = {"users_file": str(users), "port": free_port(), "sasl": "PLAIN"}
        with pytest.raises(xmpp.LoginError):  # user 1 has no server column: xmpp_port
            await xmpp.connect(1, connect_timeout=2000, **kw)
        kw["port"] = xmpp_server.port
        a = await xmpp.connect(1, **kw)
        b = await xmpp.connect(2, **{**kw, "port": free_port()})  # its row names the server
        assert a.jid == f"user_{first}@localhost" and b.jid == f"user_{first + 1}@localhost"
        got = await chat(a, b, 2)
        await a.stop()
        await b.stop()
        return len(got)

    assert asyncio.run(run()) == 2
    with pytest.raises(ConfigError, match="user id 3 has no row"):
        asyncio.run(xmpp.connect(3, users_file=str(users)))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("1,user_1\n", "line 1: expected id,username,password"),
        ("id,username,password\nx,user_1,pw\n", "line 2: the id 'x'"),
        ("1,user 1,pw\n", "the username 'user 1'"),
        ("1,u1,pw\n1,u2,pw\n", "line 2: user id 1 appears twice"),
        ("1,u1,pw,host:99999\n", "the port must be a number"),
        ("", "no account rows"),
    ],
)
def test_a_bad_users_file_is_refused_naming_the_row(
    tmp_path: Path, content: str, expected: str
) -> None:
    users = tmp_path / "users.csv"
    users.write_text(content)
    with pytest.raises(ConfigError, match="xmpp_users_file") as caught:
        asyncio.run(xmpp.connect(1, users_file=str(users)))
    assert expected in str(caught.value)
    assert metrics.counter("xmpp.logins.ok").value >= 0


WEBSOCKET_PATHS = {"ejabberd_tls_server": "/ws", "prosody_server": "/xmpp-websocket"}


# Over WebSocket the TLS (if any) is the HTTP listener's: no -PLUS mechanism is offered.
FRAMED_CASES = [
    *(
        ("ejabberd_tls_server", m)
        for m in ["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512", "AUTO"]
    ),
    *(("prosody_server", m) for m in ["PLAIN", "SCRAM-SHA-1", "AUTO"]),
]


@pytest.mark.parametrize(("fixture", "mechanism"), FRAMED_CASES)
@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_websocket_logins_and_chat(
    request: pytest.FixtureRequest, fixture: str, mechanism: str, scheme: str
) -> None:
    server: XmppServer = request.getfixturevalue(fixture)
    first = next(_ids)
    server.register(first, first + 1)
    port = server.https_port if scheme == "wss" else server.http_port
    url = f"{scheme}://127.0.0.1:{port}{WEBSOCKET_PATHS[fixture]}"

    async def run() -> list[xmpp.Message]:
        kw = {
            "transport": url, "domain": server.domain, "sasl": mechanism,
            "tls_verify": True, "tls_ca_file": server.cert,
        }  # fmt: skip
        a = await xmpp.connect(first, **kw)
        b = await xmpp.connect(first + 1, **kw)
        try:
            got = await chat(a, b, 10)
            got += await chat(b, a, 10)
            return got
        finally:
            await a.stop()
            await b.stop()

    got = asyncio.run(run())
    assert len(got) == 20 and len({m.body for m in got}) == 20  # each message once


def test_a_transport_list_mixes_tcp_and_websocket_by_user_id(
    ejabberd_tls_server: XmppServer,
) -> None:
    server = ejabberd_tls_server
    first = 50_001  # odd: user first goes over the first transport
    server.register(first, first + 3)
    ws = f"ws://{server.host}:{server.http_port}/ws"

    async def run() -> tuple[list[str], list[xmpp.Message]]:
        kw = verified(server, "starttls", transport=["tcp", ws])
        clients = [await xmpp.connect(i, **kw) for i in range(first, first + 4)]
        kinds = [type(c._transport).__name__ for c in clients]  # type: ignore[attr-defined]
        got = await chat(clients[0], clients[1], 5) + await chat(clients[3], clients[2], 5)
        for c in clients:
            await c.stop()
        return kinds, got

    kinds, got = asyncio.run(run())
    assert kinds[1] == kinds[3] == "WebSocketLink" and "WebSocketLink" not in (kinds[0], kinds[2])
    assert len(got) == 10


def test_a_wrong_websocket_path_and_bad_transports_are_clear(
    ejabberd_tls_server: XmppServer,
) -> None:
    server = ejabberd_tls_server

    async def run() -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await xmpp.connect(1, transport=f"ws://{server.host}:{server.http_port}/nowhere")
        return caught.value

    err = asyncio.run(run())
    assert "HTTP 404" in str(err) and "/nowhere" in str(err)
    for bad, why in (
        ("smtp://host", "not a transport"),
        ("ws://:5280/ws", "has no host"),
        ("ws://host:99999/ws", "port must be a number"),
        ("pigeon", "not a transport"),
    ):
        with pytest.raises(ConfigError, match="xmpp_transport") as caught_config:
            asyncio.run(xmpp.connect(1, transport=bad))
        assert why in str(caught_config.value)
    with pytest.raises(xmpp.NotSupported, match="lean client"):
        asyncio.run(xmpp.connect(1, transport="websocket", client="slixmpp"))


def test_a_prosody_that_stores_sha256_hashes_is_logged_into_with_scram_sha256() -> None:
    name = f"pytest_p256_{free_port()}"
    with own_server(name, 4, kind="prosody", tls=True, scram=True, scram_hash="sha256") as server:

        async def run() -> list[str]:
            used = []
            for user, mechanism in ((1, "AUTO"), (2, "SCRAM-SHA-256"), (3, "PLAIN")):
                c = await xmpp.connect(user, sasl=mechanism, **verified(server, "starttls"))
                used.append(getattr(c, "mechanism", ""))
                await c.stop()
            with pytest.raises(xmpp.LoginError, match="offers") as caught:
                await xmpp.connect(4, sasl="SCRAM-SHA-1", **verified(server, "starttls"))
            assert caught.value.reason is xmpp.Reason.NO_MECHANISM
            return used

        assert asyncio.run(run()) == ["SCRAM-SHA-256", "SCRAM-SHA-256", "PLAIN"]
