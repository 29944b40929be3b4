"""The floor: the least a Python asyncio client can spend on bench_tsung's workload.

Bench-only, never part of amoc. The same logins (SASL PLAIN, bind, presence and its echo)
and the same message bytes as amoc's lean client (the full JID of the neighbour, the id,
the body, the TTD stamp), at the same schedule (the first message at a random point of
the second interval, then one every interval), over uvloop, but with no XML parser: a
login step waits for a byte pattern, a received message is found with `bytes.find` and its
stamp read by slicing. No per-user task either: every send is a `loop.call_at` callback
that arms the timer of the next one, as a client that runs for as long as it is asked must
(amoc.pacing does the same); `--prearm` sets every send's timer at login instead, which
moves their cost out of the steady window and holds them all in memory.
What amoc's lean client costs above this is what parsing, metrics and the scenario API
cost; `bench_tsung.py` prints every row's ratio to it.

    .venv/bin/python bench/floor_client.py --users 1000 --messages 20 --interval 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import random
import time
from typing import Any

_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
_STAMP_NS = "urn:amoc:ttd"  # amoc.xmpp.stamp.NAMESPACE, spelled out: nothing of amoc here
_MESSAGE = b"<message"
_US = b" us='"


def header(domain: str) -> bytes:
    return (
        f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        f"xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
    ).encode()


class Floor:
    """Totals of the whole run, shared by every user (one process, one loop)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.logins_ok = 0
        self.logins_failed = 0
        self.sent = 0
        self.received = 0
        self.ttd_ms: list[float] = []  # every delivery, in arrival order
        self.ttd_at: list[int] = []  # when each arrived (wall clock, µs)
        self.done = 0


class User(asyncio.Protocol):
    """One user: a byte-pattern login, then timed sends and counted receipts."""

    def __init__(self, floor: Floor, user_id: int) -> None:
        self.floor = floor
        self.user_id = user_id
        self.buffer = b""
        self.waiting: bytes | None = None  # a login step's pattern
        self.step: asyncio.Future[bytes] | None = None
        self.online = False
        self.got = 0
        self.complete: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        a = floor.args
        peer = user_id + 1 if user_id % 2 else user_id - 1
        self.name = f"{a.user_prefix}{user_id}"
        to = f"{a.user_prefix}{peer}@{a.domain}" + (f"/{a.resource}" if a.to == "full" else "")
        self.head = f"<message to='{to}' type='chat' id='{user_id}-".encode()
        self.tail = b"'/></message>" if a.stamp else b"</message>"
        self.sent = 0
        self.schedule: list[float] = []  # the times of the sends still to come, last first

    # -- the connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.online:
            self._messages(data)
            return
        self.buffer += data
        if self.waiting is not None and self.waiting in self.buffer:
            self.waiting = None
            assert self.step is not None
            self.step.set_result(self.buffer)
            self.buffer = b""

    def connection_lost(self, exc: Exception | None) -> None:
        if self.step is not None and not self.step.done():
            self.step.set_exception(ConnectionError(f"user {self.user_id}: connection lost"))

    def _messages(self, data: bytes) -> None:
        """Count each message, read its stamp (a split message counts when it completes)."""
        data = self.buffer + data if self.buffer else data
        now_us = time.time_ns() // 1000
        floor = self.floor
        at = data.find(_MESSAGE)
        while at >= 0:
            end = data.find(b"</message>", at)
            if end < 0:
                self.buffer = data[at:]
                return
            us = data.find(_US, at, end)
            if us >= 0:
                start = us + len(_US)
                floor.ttd_ms.append((now_us - int(data[start : data.find(b"'", start)])) / 1000)
                floor.ttd_at.append(now_us)
            floor.received += 1
            self.got += 1
            at = data.find(_MESSAGE, end)
        self.buffer = b""
        if self.got >= floor.args.messages and not self.complete.done():
            self.complete.set_result(None)

    # -- the login ------------------------------------------------------------------------

    async def expect(self, data: bytes, pattern: bytes) -> bytes:
        assert self.transport is not None
        self.step = asyncio.get_running_loop().create_future()
        self.waiting = pattern
        self.transport.write(data)
        return await asyncio.wait_for(self.step, self.floor.args.timeout)

    async def login(self) -> None:
        a = self.floor.args
        await self.expect(header(a.domain), b"</stream:features>")
        token = base64.b64encode(f"\0{self.name}\0{a.password_prefix}{self.user_id}".encode())
        auth = f"<auth xmlns='{_SASL}' mechanism='PLAIN'>{token.decode()}</auth>".encode()
        answer = await self.expect(auth, b"<success")
        if b"<failure" in answer:
            raise ConnectionError(f"user {self.user_id}: PLAIN refused")
        await self.expect(header(a.domain), b"</stream:features>")
        bind = (f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                f"<resource>{a.resource}</resource></bind></iq>").encode()  # fmt: skip
        await self.expect(bind, b"</iq>")
        await self.expect(b"<presence/>", b"<presence")
        self.online = True

    # -- the chat -------------------------------------------------------------------------

    def send_and_arm(self) -> None:
        """Send, and set the timer of the next send (if any is left)."""
        self.send()
        if self.schedule:
            asyncio.get_running_loop().call_at(self.schedule.pop(), self.send_and_arm)

    def send(self) -> None:
        """One message, as the lean client writes it."""
        if self.transport is None or self.transport.is_closing():
            return
        self.sent = n = self.sent + 1
        body = f"{n}'><body>message {n} from {self.name}</body>"
        if self.floor.args.stamp:
            body += f"<stamp xmlns='{_STAMP_NS}' us='{time.time_ns() // 1000}"
        self.transport.write(self.head + body.encode() + self.tail)
        self.floor.sent += 1


async def user(floor: Floor, user_id: int) -> None:
    """Log in, send the scheduled messages, wait for the neighbour's, leave."""
    a = floor.args
    loop = asyncio.get_running_loop()
    try:
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: User(floor, user_id), a.host, a.port),
            a.timeout,
        )
        await proto.login()
    except (OSError, TimeoutError, ConnectionError):
        floor.logins_failed += 1
        return
    floor.logins_ok += 1
    began = loop.time() + a.interval * random.random()
    times = [began + (i + 1) * a.interval for i in range(a.messages)]
    if a.tick:
        times = [math.ceil(at / a.tick) * a.tick for at in times]
    if a.prearm:  # every send's timer now (the loop's timer heap holds them all)
        for at in times:
            loop.call_at(at, proto.send)
    elif times:  # one timer at a time, each send arming the next, as a running client does
        proto.schedule = times[::-1]
        loop.call_at(proto.schedule.pop(), proto.send_and_arm)
    await asyncio.sleep(max(0.0, (times[-1] if times else began) - loop.time()))
    deadline = began + (a.messages + 1) * a.interval + a.receive_timeout
    with contextlib.suppress(TimeoutError):  # counted: received < sent
        await asyncio.wait_for(proto.complete, max(0.0, deadline - loop.time()))
    assert proto.transport is not None
    proto.transport.write(b"</stream:stream>")
    proto.transport.close()
    floor.done += 1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    floor = Floor(args)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await asyncio.sleep(1.0)  # the parent takes its baseline now
    began = loop.time()
    tasks = []
    for k in range(args.users):  # users arrive at --arrival per second
        at = began + k / args.arrival
        if at > loop.time():
            await asyncio.sleep(at - loop.time())
        tasks.append(asyncio.create_task(user(floor, args.first + k)))
    # The steady window: every user online and chatting (two intervals after the last
    # arrival) until the first user's last message.
    w0 = time.time() + 2 * args.interval
    w1 = time.time() + (began + args.messages * args.interval - 0.5 - loop.time())
    await asyncio.wait(tasks, timeout=args.users / args.arrival + args.messages * args.interval
                       + args.receive_timeout + 60)  # fmt: skip
    steady = [t for t, at in zip(floor.ttd_ms, floor.ttd_at, strict=True)
              if w0 * 1e6 <= at <= w1 * 1e6]  # fmt: skip
    return {
        "logins_ok": floor.logins_ok,
        "logins_failed": floor.logins_failed,
        "sent": floor.sent,
        "received": floor.received,
        "finished": floor.done == args.users,
        "ttd_window_p50": percentile(steady, 50),
        "ttd_window_p99": percentile(steady, 99),
        "ttd_p50": percentile(floor.ttd_ms, 50),
        "ttd_p99": percentile(floor.ttd_ms, 99),
        "ttd_count": len(floor.ttd_ms),
    }


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank); NaN of nothing."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--first", type=int, default=1)
    p.add_argument("--messages", type=int, default=20)
    p.add_argument("--interval", type=float, required=True, help="s between two messages")
    p.add_argument("--arrival", type=float, default=1000.0, help="users per second")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5222)
    p.add_argument("--domain", default="localhost")
    p.add_argument("--user-prefix", default="user_")
    p.add_argument("--password-prefix", default="password_")
    p.add_argument("--resource", default="amoc")
    p.add_argument("--timeout", type=float, default=60.0, help="s per login step")
    p.add_argument("--receive-timeout", type=float, default=30.0)
    # What a message costs the server (bench_tsung.py --floor-variants): its address, its
    # stamp, and the send pattern: exact times, or bunched onto a grid of --tick seconds.
    p.add_argument("--to", choices=("full", "bare"), default="full", help="the neighbour's JID")
    p.add_argument("--stamp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--tick", type=float, default=0.0, help="send times rounded up to s")
    p.add_argument(
        "--prearm",
        action="store_true",
        help="set every send's timer at login (moves their cost out of the window)",
    )
    return p


def main() -> None:
    import uvloop

    print(json.dumps(uvloop.run(run(parser().parse_args()))), flush=True)


if __name__ == "__main__":
    main()
