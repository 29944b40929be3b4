"""A slave's end of the control plane: dial the master, beat, run what it asks.

The link lives in the node's event loop next to the controller. It dials the master (and
re-dials after the master restarts: ZeroMQ reconnects by itself), sends a heartbeat every
`cluster_heartbeat` ms with its status and metrics, and runs the master's requests on the
controller. Without the master, users keep running: a master restart loses no user.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from amoc import __version__, coordinator, metrics, throttle
from amoc import scenario as scenario_mod
from amoc.cluster import keys
from amoc.cluster.protocol import (
    MAX_FRAME,
    Op,
    ProtocolError,
    Verb,
    decode,
    encode,
    field,
    sent,
)
from amoc.config import Config
from amoc.errors import AmocError
from amoc.runner import Controller

log = logging.getLogger("amoc.cluster.slave")


class SlaveLink:
    """Connects one node to its master."""

    def __init__(
        self,
        name: str,
        controller: Controller,
        config: Config,
        keys_dir: Path,
        uploaded_dir: Path,
    ) -> None:
        self.name = name
        self.controller = controller
        self.config = config
        self.keys_dir = keys_dir
        self.uploaded_dir = uploaded_dir
        self.master = config.get("cluster_master")
        self.interval = config.get("cluster_heartbeat") / 1000.0
        self.silent_after = config.get("cluster_down_after") / 1000.0
        self.capacity = config.get("cluster_capacity")
        self.master_seen = 0.0
        self.master_up = False
        self._sock: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._serial = asyncio.Lock()  # requests run one after the other, in arrival order

    async def start(self) -> None:
        """Dial the master and start beating."""
        own = keys.load(self.keys_dir, "node", secret=True)
        master = keys.load(self.keys_dir, "master", secret=False)
        ctx = zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, self.name.encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for a master that is not there
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
        sock.setsockopt(zmq.RECONNECT_IVL, 200)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.curve_secretkey = own.secret
        sock.curve_publickey = own.public
        sock.curve_serverkey = master.public
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        sock.connect(self.master)
        self._sock = sock
        coordinator.use_master(self._coordinate)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._beat(), name="cluster-heartbeat"),
            loop.create_task(self._receive(), name="cluster-receive"),
            loop.create_task(self._watch(monitor), name="cluster-auth"),
        ]
        log.info("slave %s dials the master at %s", self.name, self.master)

    def _coordinate(
        self, name: str, sizes: list[int | None], timeout_ms: float, user: int, data: Any
    ) -> None:
        """coordinator.add on this node: the master groups the cluster's users."""
        try:
            frame = encode(
                Op.COORDINATE, name=name, sizes=sizes, timeout=timeout_ms, user=user, data=data
            )
        except (TypeError, ValueError) as exc:
            raise coordinator.CoordinatorError(
                f"coordinator {name!r}: data of user {user} cannot travel to the master: {exc}"
            ) from None
        if not self._send(frame):
            log.warning("coordinator %s: user %d not sent, no master connected", name, user)

    async def stop(self) -> None:
        """Stop beating and close the socket."""
        coordinator.use_master(None)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
            self._sock.close(0)
            self._sock = None

    # -- sending ------------------------------------------------------------------------

    def _send(self, frame: bytes) -> bool:
        assert self._sock is not None
        try:
            return sent(self._sock.send(frame, zmq.NOBLOCK))
        except (zmq.Again, zmq.ZMQError):
            return False  # no master connected: the next heartbeat says it all again

    def heartbeat(self) -> bytes:
        """This node as the master sees it."""
        status = self.controller.status()
        return encode(
            Op.HEARTBEAT,
            name=self.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            capacity=self.capacity,
            status=status,
            metrics=metrics.REGISTRY.local_snapshot(),
            time=time.time(),
        )

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._send(self.heartbeat())
            if self.master_up and loop.time() - self.master_seen > self.silent_after:
                self.master_up = False
                log.warning(
                    "the master at %s is silent; users keep running, re-dialing", self.master
                )
            await asyncio.sleep(self.interval)

    # -- receiving ----------------------------------------------------------------------

    async def _receive(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            frame = await self._sock.recv()
            try:
                msg = decode(frame)
            except ProtocolError as exc:
                log.warning("dropped a control message from the master: %s", exc)
                continue
            self.master_seen = loop.time()
            if not self.master_up:
                self.master_up = True
                log.info("the master at %s answers", self.master)
            if msg["op"] is Op.PING:
                self._apply_config(msg.get("config"))
                slaves = msg.get("slaves")
                if isinstance(slaves, int) and slaves >= 1:
                    throttle.set_share(1 / slaves)
            elif msg["op"] is Op.BATCH:
                self._batch(msg)
            elif msg["op"] is Op.REQUEST:
                task = loop.create_task(self._serve(msg))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            else:
                log.warning("dropped a %s message: not for a slave", msg["op"].value)

    async def _serve(self, msg: dict[str, Any]) -> None:
        request_id = msg.get("id")
        try:
            async with self._serial:
                result = await self._run(msg)
            reply = encode(Op.REPLY, id=request_id, ok=True, result=result)
        except (AmocError, ProtocolError) as exc:
            reply = encode(Op.REPLY, id=request_id, ok=False, error=str(exc))
        except Exception as exc:  # a bug must not kill the link: say it to the master
            log.exception("request %r failed", msg.get("verb"))
            reply = encode(Op.REPLY, id=request_id, ok=False, error=f"{type(exc).__name__}: {exc}")
        self._send(reply)

    async def _run(self, msg: dict[str, Any]) -> Any:
        try:
            verb = Verb(msg.get("verb") or "")
        except ValueError:
            raise ProtocolError(f"unknown verb {msg.get('verb')!r}") from None
        ctl = self.controller
        if verb is Verb.DO:
            self._apply_config(msg.get("config"))
            loaded = self._scenario(msg)
            ids = _ids(msg)
            settings = msg.get("settings") or {}
            if not isinstance(settings, dict):
                raise ProtocolError("do: settings must be a map")
            comment = msg.get("comment") or ""
            return await ctl.do_loaded(loaded, ids, settings, str(comment))
        if verb is Verb.ADD:
            ids = _ids(msg)
            return await ctl.add(len(ids), ids=ids) if ids else ctl.status()
        if verb is Verb.REMOVE:
            alive = set(ctl.user_ids())
            ids = [i for i in _ids(msg) if i in alive]
            force = bool(msg.get("force"))
            if not ids or ctl.scenario is None:
                return {"removed": [], "force": force, **ctl.status()}
            return await ctl.remove(len(ids), force, ids=ids)
        if verb is Verb.STOP:
            return await ctl.stop()
        if verb is Verb.USERS:
            return {"ids": ctl.user_ids(), **ctl.status()}
        if verb is Verb.THROTTLE:
            action = msg.get("action")
            args = msg.get("args") or []
            allowed: dict[str, Callable[..., Any]] = {
                "change_rate": throttle.change_rate,
                "change_rate_gradually": throttle.change_rate_gradually,
                "pause": throttle.pause,
                "resume": throttle.resume,
            }
            if action not in allowed or not isinstance(args, list):
                raise ProtocolError(f"throttle: unknown action {action!r}")
            allowed[action](*args)
            return {"throttles": throttle.info()}
        if verb is Verb.CONFIG:
            self._apply_config({field(msg, "name", str): msg.get("value")})
            return {"ok": True}
        raise ProtocolError(f"verb {verb.value!r} is not handled")  # pragma: no cover

    def _batch(self, msg: dict[str, Any]) -> None:
        members = msg.get("members")
        if not isinstance(members, list) or not all(
            isinstance(m, list) and len(m) == 3 for m in members
        ):
            raise ProtocolError("batch: members must be [user, data, node] lists")
        coordinator.deliver(
            str(msg.get("name")),
            str(msg.get("event")),
            int(msg.get("index") or 0),
            [coordinator.Member(int(u), d, str(n)) for u, d, n in members],
            bool(msg.get("run_action")),
        )

    def _apply_config(self, values: Any) -> None:
        if not values:
            return
        if not isinstance(values, dict):
            raise ProtocolError("config must be a map of name to value")
        for name, value in values.items():
            try:
                self.config.set(str(name), value, strict=False)
            except AmocError as exc:
                log.warning("config %s from the master refused: %s", name, exc)

    def _scenario(self, msg: dict[str, Any]) -> scenario_mod.Scenario:
        """The scenario the master runs: ours if its source hashes the same, else its copy."""
        name = scenario_mod.check_name(field(msg, "scenario", str))
        source = field(msg, "source", str)
        digest = hashlib.sha256(source.encode()).hexdigest()
        if msg.get("hash") not in (None, digest):
            raise ProtocolError(f"do: the source of {name!r} does not match its hash")
        target = self.uploaded_dir / f"{name}.py"
        try:
            path = scenario_mod.find(name, [self.uploaded_dir, *self.controller.scenario_dirs])
            same = hashlib.sha256(path.read_bytes()).hexdigest() == digest
        except AmocError:
            path, same = target, False
        if not same:
            _write_atomically(target, source)
            path = target
            log.info("scenario %s (sha256 %s) received from the master", name, digest[:12])
        return scenario_mod.load_source(name, source, path)

    async def _watch(self, monitor: zmq.asyncio.Socket) -> None:
        try:
            while True:
                event = await recv_monitor_message(monitor)
                if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    log.error(
                        "the master at %s refused this node's key (%s): "
                        "this node does not hold the cluster's keys",
                        self.master,
                        self.keys_dir,
                    )
        finally:
            monitor.close(0)


def _ids(msg: dict[str, Any]) -> list[int]:
    ids = msg.get("ids")
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    ):
        raise ProtocolError("ids must be a list of integers")
    return ids


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
