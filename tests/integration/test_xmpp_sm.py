"""XEP-0198 stream management of the lean client against the real servers, with network
failures made by a TCP relay between client and server that the test cuts: a dropped
connection is resumed and every message arrives exactly once; a resumption the server
refuses (it restarted) counts what was lost, and the user goes on in a new session."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from amoc import metrics, xmpp
from amoc.xmpp import sm
from tests.integration.xmpp_fixture import XmppServer, count, own_server
from tests.wait import until

pytestmark = pytest.mark.integration

FIXTURES = {"ejabberd": "xmpp_server", "prosody": "prosody_server"}
_ids = itertools.count(47_001, 2)


class Relay:
    """A TCP relay to one server port, for one client: it can drop what a direction
    carries (packets lost) and cut the connection (both ends reset), as a network can."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.listen_port = 0
        self.drop_up = False  # client -> server bytes vanish
        self.drop_down = False  # server -> client bytes vanish
        self.dropped_up = 0  # bytes that vanished, per direction
        self.dropped_down = 0
        self.connections = 0
        self._open = asyncio.Event()  # cleared: new connections wait (the network is down)
        self._open.set()
        self._server: asyncio.Server | None = None
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self.listen_port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(30):
                await self._open.wait()
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self.connections += 1
        self._pairs.append((writer, up_writer))
        for task in (
            asyncio.ensure_future(self._pump(reader, up_writer, up=True)),
            asyncio.ensure_future(self._pump(up_reader, writer, up=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if up and self.drop_up:
                    self.dropped_up += len(data)
                elif not up and self.drop_down:
                    self.dropped_down += len(data)
                else:
                    writer.write(data)
        except OSError:
            pass
        finally:
            writer.transport.abort()

    def hold(self) -> None:
        """New connections wait until `release()`: the network stays down."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def cut(self) -> None:
        """Reset every relayed connection at both ends."""
        pairs, self._pairs = self._pairs, []
        for client, server in pairs:
            client.transport.abort()
            server.transport.abort()
        self.drop_up = self.drop_down = False

    async def close(self) -> None:
        self.release()
        self.cut()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture(params=sorted(FIXTURES))
def server(request: pytest.FixtureRequest) -> XmppServer:
    """Each kind's session server (Prosody with STARTTLS required)."""
    got: XmppServer = request.getfixturevalue(FIXTURES[request.param])
    return got


def through(relay: Relay, server: XmppServer, **extra: Any) -> dict[str, Any]:
    """connect() overrides that reach `server` through `relay`, with resumption on."""
    return {
        "client": "lean",
        "host": "127.0.0.1",
        "port": relay.listen_port,
        "domain": server.domain,
        "tls": server.tls,
        "tls_verify": False,
        "stream_management": "resume",
        "sm_ack_every": 5,
        **extra,
    }


def direct(server: XmppServer, **extra: Any) -> dict[str, Any]:
    """connect() overrides that reach `server` directly, without stream management."""
    return {
        "client": "lean",
        "host": server.host,
        "port": server.port,
        "domain": server.domain,
        "tls": server.tls,
        "tls_verify": False,
        **extra,
    }


def lean(client: xmpp.Session) -> xmpp.LeanClient:
    assert isinstance(client, xmpp.LeanClient)
    return client


def state(client: xmpp.Session) -> sm.StreamManagement:
    found = lean(client).stream_management
    assert found is not None, "the server did not enable stream management"
    return found


async def with_relays(
    server: XmppServer, count_: int, body: Callable[[list[Relay]], Awaitable[None]]
) -> None:
    """Run `body` with `count_` relays to the server's client port, closed at the end."""
    await with_relays_of([Relay(server.host, server.port) for _ in range(count_)], body)


async def with_relays_of(
    relays: list[Relay], body: Callable[[list[Relay]], Awaitable[None]]
) -> None:
    try:
        for relay in relays:
            await relay.start()
        async with asyncio.timeout(40):
            await body(relays)
    finally:
        for relay in relays:
            await relay.close()


def test_dropped_connections_resume_and_every_message_arrives_once(server: XmppServer) -> None:
    first = next(_ids)
    server.register(first, first + 1)
    names = ("xmpp.sm.resumed", "xmpp.sm.resent", "xmpp.disconnects", "xmpp.sm.lost")
    before = {n: count(n) for n in names}
    bodies = [f"sm {first} #{i}" for i in range(1, 41)]

    async def body(relays: list[Relay]) -> None:
        ra, rb = relays
        a = await xmpp.connect(first, **through(ra, server))
        b = await xmpp.connect(first + 1, **through(rb, server))
        try:
            assert state(a).resumable and state(b).resumable
            await a.send_presence()
            await b.send_presence()
            sent = iter(bodies)

            def send(n: int) -> None:
                for _ in range(n):
                    a.send_chat(first + 1, next(sent))

            send(10)
            await b.wait_received(10, timeout_ms=5000)
            # A's next messages vanish on the way, then its connection is cut: they are
            # only in A's queue, which the resumption writes again.
            await lean(a).request_ack()
            ra.drop_up = True
            send(10)
            lost = sum(map(len, state(a).queue))  # (TLS makes them longer on the wire)
            await until(lambda: ra.dropped_up >= lost, "A's ten messages lost on the way")
            ra.hold()
            ra.cut()
            await until(lambda: lean(a).resuming, "A resuming")
            send(5)  # during the outage: kept
            ra.release()
            await until(lambda: not lean(a).resuming, "A resumed")
            await b.wait_received(25, timeout_ms=5000)
            # Now the server's messages to B vanish before B's connection is cut: the
            # server keeps them unacknowledged and sends them again after the resumption.
            rb.drop_down = True
            send(10)
            await until(lambda: rb.dropped_down >= 1500, "messages to B lost on the way")
            assert b.received == 25
            rb.cut()
            await until(lambda: not lean(b).resuming and b.received >= 35, "B resumed", 15)
            send(5)
            await b.wait_received(40, timeout_ms=10_000)
            got = [m.body for m in b.take_messages()]
            assert sorted(got) == sorted(bodies) and len(got) == 40  # all, and once each
            assert b.received == a.sent == 40
            # The server's count of A's stanzas is A's own: nothing lost, nothing twice.
            h = await lean(a).request_ack(timeout_ms=5000)
            assert a.unacked == 0 and h == state(a).sent % sm.MOD
            assert state(a).acked == state(a).sent
            assert ra.connections == 2 and rb.connections == 2  # one resumption each
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(with_relays(server, 2, body))
    assert count("xmpp.sm.resumed") == before["xmpp.sm.resumed"] + 2
    assert count("xmpp.sm.resent") >= before["xmpp.sm.resent"] + 10
    assert count("xmpp.disconnects") == before["xmpp.disconnects"]
    assert count("xmpp.sm.lost") == before["xmpp.sm.lost"]
    assert metrics.histogram("xmpp.sm.resume_time_ms").count >= 2


def test_a_resumption_refused_by_a_restarted_server_counts_the_lost_and_goes_on() -> None:
    names = ("xmpp.sm.resume_failed", "xmpp.sm.lost", "xmpp.messages.lost", "xmpp.sm.resumed")
    before = {n: count(n) for n in names}

    with own_server("pytest_sm_restart", 2, kind="prosody") as server:

        async def body(relays: list[Relay]) -> None:
            (ra,) = relays
            a = await xmpp.connect(1, **through(ra, server, sm_resume_timeout=20_000))
            b = await xmpp.connect(2, **direct(server))
            try:
                await a.send_presence()
                await b.send_presence()
                a.send_chat(2, "before")
                await b.wait_received(1, timeout_ms=5000)
                await lean(a).request_ack()  # everything so far acknowledged
                ra.drop_up = True
                for i in range(7):
                    a.send_chat(2, f"lost {i}")  # written, and vanishing
                lost = sum(map(len, state(a).queue))
                await until(lambda: ra.dropped_up >= lost, "the seven lost on the way")
                assert a.unacked == 7
                ra.hold()
                ra.cut()
                await until(lambda: lean(a).resuming, "A resuming")
                await asyncio.to_thread(server.stop)
                await asyncio.to_thread(server.start)
                ra.release()
                old_id = state(a).id
                await until(lambda: not lean(a).resuming, "A in a new session", 20)
                assert a.connected and state(a).resumable and state(a).id != old_id
                # The new session counts from zero: its initial presence, sent again.
                assert await lean(a).request_ack(timeout_ms=5000) == state(a).sent == 1
                # B, without stream management, lost its session in the restart.
                await until(lambda: not b.connected, "B's session ended")
                with pytest.raises(xmpp.ConnectionLost):
                    b.send_chat(1)
                b2 = await xmpp.connect(2, **direct(server))
                try:
                    await b2.send_presence()
                    a.send_chat(2, "after")  # the user goes on
                    msg = await b2.wait_message(timeout_ms=5000)
                    assert msg.body == "after"
                finally:
                    await b2.stop()
            finally:
                await a.stop()
                await b.stop()

        asyncio.run(with_relays(server, 1, body))
    assert count("xmpp.sm.resume_failed") == before["xmpp.sm.resume_failed"] + 1
    assert count("xmpp.sm.lost") == before["xmpp.sm.lost"] + 7
    assert count("xmpp.messages.lost") == before["xmpp.messages.lost"] + 7
    assert count("xmpp.sm.resumed") == before["xmpp.sm.resumed"]


def test_drop_connection_on_slixmpp_ends_the_session(xmpp_server: XmppServer) -> None:
    first = next(_ids)
    xmpp_server.register(first, first)
    before = count("xmpp.disconnects")

    async def run() -> None:
        client = await xmpp.connect(
            first,
            client="slixmpp",
            host=xmpp_server.host,
            port=xmpp_server.port,
            domain=xmpp_server.domain,
        )
        client.drop_connection()
        with pytest.raises(xmpp.ConnectionLost):
            await client.wait_message(timeout_ms=5000)
        await client.stop()

    asyncio.run(run())
    assert count("xmpp.disconnects") == before + 1


WEBSOCKET = {"ejabberd_tls_server": "/ws", "prosody_server": "/xmpp-websocket"}


@pytest.mark.parametrize("fixture", sorted(WEBSOCKET))
def test_a_websocket_session_resumes_with_one_stanza_per_message(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    server: XmppServer = request.getfixturevalue(fixture)
    first = next(_ids)
    server.register(first, first + 1)
    bodies = [f"ws {first} #{i}" for i in range(1, 21)]

    async def body(relays: list[Relay]) -> None:
        (ra,) = relays  # to the HTTP port: A speaks XMPP over WebSocket through it
        relay_url = f"ws://127.0.0.1:{ra.listen_port}{WEBSOCKET[fixture]}"
        a = await xmpp.connect(
            first, **through(ra, server, transport=relay_url, tls=False, sm_ack_every=3)
        )
        b = await xmpp.connect(first + 1, **direct(server))
        try:
            await a.send_presence()
            await b.send_presence()
            for text in bodies[:5]:
                a.send_chat(first + 1, text)
            await b.wait_received(5, timeout_ms=5000)
            await lean(a).request_ack()
            ra.drop_up = True
            for text in bodies[5:15]:
                a.send_chat(first + 1, text)
            lost = sum(map(len, state(a).queue))
            await until(lambda: ra.dropped_up >= lost, "A's messages lost on the way")
            ra.cut()
            await until(lambda: ra.connections == 2 and not lean(a).resuming, "A resumed")
            for text in bodies[15:]:
                a.send_chat(first + 1, text)
            await b.wait_received(20, timeout_ms=10_000)
            got = [m.body for m in b.take_messages()]
            assert sorted(got) == sorted(bodies)
            assert await lean(a).request_ack(timeout_ms=5000) == state(a).sent % sm.MOD
            assert a.unacked == 0
        finally:
            await a.stop()
            await b.stop()

    resumed = count("xmpp.sm.resumed")
    relay = Relay(server.host, server.http_port)
    asyncio.run(with_relays_of([relay], body))
    assert count("xmpp.sm.resumed") == resumed + 1
