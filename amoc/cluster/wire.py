"""The master's socket: CURVE, the ROUTER, requests and their replies, a table of ops.

Slaves dial the master's ROUTER socket; CURVE authenticates them (only the cluster's node
key is accepted) and encrypts everything. Refusals are logged: a wrong node key by the
ZAP handler, a failed handshake (a node of another cluster, which does not even know this
master's key) by the socket monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import recv_monitor_message

from amoc import metrics
from amoc.cluster import keys
from amoc.cluster.protocol import MAX_FRAME, Op, ProtocolError, Verb, decode, encode, sent
from amoc.errors import AmocError

log = logging.getLogger("amoc.cluster.master")

REQUEST_TIMEOUT = 15.0
# Handshake failures are logged at most this often (a misconfigured node retries fast).
_HANDSHAKE_LOG_S = 30.0

Handler = Callable[[str, dict[str, Any]], None]  # (the sender's route, the message)

_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class _KeyCheck:
    """ZAP credentials provider: the cluster's node key only; refusals logged."""

    def __init__(self, allowed: bytes) -> None:
        self.allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        if key == self.allowed:
            return True
        log.warning(
            "refused a node with an unknown CURVE key %s: it does not hold the cluster's keys",
            key.decode(errors="replace"),
        )
        metrics.counter("cluster.refused").inc()
        return False


class MasterWire:
    """The ROUTER socket and what goes over it; `handlers` maps each op to a function."""

    def __init__(self, bind: str, keys_dir: Path, handlers: Mapping[Op, Handler]) -> None:
        self.bind = bind
        self.keys_dir = keys_dir
        self.handlers = dict(handlers)
        # Slaves dial as "name/instance": node name -> the instance that holds the name.
        self.routes: dict[str, str] = {}
        self._sock: zmq.asyncio.Socket | None = None
        self._auth: AsyncioAuthenticator | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._handshake_logged = 0.0
        self._m_out = metrics.counter("cluster.control.bytes_out")
        self._m_in = metrics.counter("cluster.control.bytes_in")

    async def start(self) -> None:
        """Authenticate with CURVE, bind, start receiving."""
        own = keys.load(self.keys_dir, "master", secret=True)
        node = keys.load(self.keys_dir, "node", secret=False)
        ctx = zmq.asyncio.Context.instance()
        self._auth = await _authenticator(ctx)
        self._auth.configure_curve_callback("*", _KeyCheck(node.public))
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a slave that re-dials takes its route back
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a gone slave raises
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
        sock.curve_server = True
        sock.curve_secretkey = own.secret
        sock.curve_publickey = own.public
        monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        try:
            sock.bind(self.bind)
        except zmq.ZMQError as exc:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            self._auth.stop()
            raise AmocError(
                f"the master cannot listen on {self.bind} (cluster_bind): {exc}"
            ) from None
        self._sock = sock
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._receive(), name="cluster-receive"),
            loop.create_task(self._watch(monitor), name="cluster-handshakes"),
        ]

    async def close(self) -> None:
        """Close the socket; pending requests fail."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(AmocError("the master is closing"))
        if self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
            self._sock.close(0)
            self._sock = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def send(self, name: str, op: Op, /, **fields: Any) -> bool:
        """Send a message to slave `name` (its current instance) now; False if it is not
        connected."""
        return self.send_route(self.routes.get(name, name), op, **fields)

    def send_route(self, route: str, op: Op, /, **fields: Any) -> bool:
        """Send a message to the slave instance that dials as `route`."""
        if self._sock is None:
            return False
        frame = encode(op, **fields)
        try:
            ok = sent(self._sock.send_multipart([route.encode(), frame], zmq.NOBLOCK))
        except (zmq.Again, zmq.ZMQError):
            ok = False
        if ok:
            self._m_out.inc(len(frame))
        return ok

    async def request(self, node: str, verb: Verb, **fields: Any) -> Any:
        """Run `verb` on slave `node`; its result, or AmocError with the slave's error."""
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            if not self.send(node, Op.REQUEST, id=request_id, verb=verb.value, **fields):
                raise AmocError(f"node {node} is not connected")
            try:
                reply = await asyncio.wait_for(future, REQUEST_TIMEOUT)
            except TimeoutError:
                raise AmocError(
                    f"node {node} did not answer {verb.value} within {REQUEST_TIMEOUT:.0f} s"
                ) from None
        finally:
            self._waiting.pop(request_id, None)
        if not reply.get("ok"):
            raise AmocError(f"node {node}: {reply.get('error')}")
        return reply.get("result")

    def _reply(self, sender: str, msg: dict[str, Any]) -> None:
        future = self._waiting.get(msg.get("id"))  # type: ignore[arg-type]
        if future is not None and not future.done():
            future.set_result(msg)

    async def _receive(self) -> None:
        assert self._sock is not None
        while True:
            try:
                frames = await self._sock.recv_multipart()
            except zmq.ZMQError as exc:
                log.warning("control socket error: %s", exc)
                continue
            if len(frames) != 2:
                log.warning("dropped a control message of %d frames", len(frames))
                continue
            self._m_in.inc(len(frames[1]))
            self._dispatch(frames[0].decode(errors="replace"), frames[1])

    def _dispatch(self, sender: str, frame: bytes) -> None:
        try:
            msg = decode(frame)
            if msg["op"] is Op.REPLY:
                self._reply(sender, msg)
                return
            handler = self.handlers.get(msg["op"])
            if handler is None:
                raise ProtocolError(f"{msg['op'].value} is not for a master")
            handler(sender, msg)
        except ProtocolError as exc:
            log.warning("dropped a control message from %s: %s", sender, exc)
        except Exception:  # a bad message must never stop the master
            log.exception("control message from %s failed", sender)

    async def _watch(self, monitor: zmq.asyncio.Socket) -> None:
        try:
            while True:
                event = await recv_monitor_message(monitor)
                now = time.monotonic()
                if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    continue  # the ZAP handler logged it, with the key
                if now - self._handshake_logged < _HANDSHAKE_LOG_S:
                    continue
                self._handshake_logged = now
                metrics.counter("cluster.refused").inc()
                log.warning(
                    "a node failed the CURVE handshake on %s: it holds another cluster's "
                    "keys (or is not an amoc node); copy this cluster's keys to it",
                    self.bind,
                )
        finally:
            monitor.close(0)


async def _authenticator(ctx: zmq.asyncio.Context) -> AsyncioAuthenticator:
    """The context's ZAP handler, started; a handler closed a moment ago (a master
    restarted in this process) may still hold its endpoint for a while."""
    for _ in range(40):
        auth = AsyncioAuthenticator(ctx)
        try:
            auth.start()
            return auth
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE:
                raise
            auth.stop()
            await asyncio.sleep(0.05)
    raise AmocError("the ZAP handler of this process is still in use by a closed master")


def route_of(name: str, instance: str) -> str:
    """The ZeroMQ routing id a slave dials with: its name and its instance token."""
    return f"{name}/{instance}"


def split_route(route: str) -> tuple[str, str]:
    """(name, instance) of a routing id."""
    name, _, instance = route.rpartition("/")
    return name, instance
