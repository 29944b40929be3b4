"""A slave's end of the control plane: dial the master, beat, apply what it places here.

The link lives in the node's event loop next to the controller. It dials the master (and
re-dials after the master restarts: ZeroMQ reconnects by itself) and sends a heartbeat
every `cluster_heartbeat` ms: its status, its metrics, the run it carries (with the
version of its set of ids) and those ids, as runs. The master places users by sending the
whole set of ids this node should run; the link applies only the difference. Without
the master, users keep running: a master restart loses no user.
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
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from amoc import __version__, clock, coordinator, metrics, throttle
from amoc import scenario as scenario_mod
from amoc.cluster import ids as id_runs
from amoc.cluster import keys
from amoc.cluster.placement import RunMeta
from amoc.cluster.protocol import MAX_FRAME, Op, ProtocolError, Verb, decode, encode, field, sent
from amoc.cluster.wire import route_of
from amoc.config import Config
from amoc.errors import AmocError
from amoc.runner import Controller

log = logging.getLogger("amoc.cluster.slave")

# Without any answer from the master for this long, say what may be wrong (at least 5 s).
ANSWER_WAIT_INTERVALS = 10
# What else a heartbeat carries besides its metrics, at most (kept free in a frame).
_HEADROOM = 64 << 10
_REPEAT_WARNING_S = 300.0


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
        self.instance = uuid.uuid4().hex
        self.controller = controller
        self.config = config
        self.keys_dir = keys_dir
        self.uploaded_dir = uploaded_dir
        self.master = config.get("cluster_master")
        self.interval = config.get("cluster_heartbeat") / 1000.0
        self.silent_after = config.get("cluster_down_after") / 1000.0
        self.answer_wait = max(5.0, ANSWER_WAIT_INTERVALS * self.interval)
        self.capacity = config.get("cluster_capacity")
        self.frame_limit = MAX_FRAME
        self.master_seen = 0.0
        self.master_up = False
        self.refused: str | None = None
        # The run the master placed here: its meta, the version of this node's set, the set.
        self.meta: RunMeta | None = None
        self.version = 0
        self.placed: set[int] = set()
        self._placed_runs: id_runs.Runs = []  # `placed` as runs, made once per placement
        self.source = ""
        self._sock: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._inflight: set[asyncio.Task[Any]] = set()
        self._serial = asyncio.Lock()  # requests run one after the other, in arrival order
        self._warned: dict[str, float] = {}
        self._since = 0.0
        self._dialed = 0.0
        # The master's last ping: its send time (master clock) and when it came (ours).
        self._probe: tuple[float, float] | None = None
        self._m_offset = metrics.gauge("cluster.clock_offset_ms")
        clock.set_skew_ms(config.get("cluster_clock_skew"))
        self._ops: dict[Op, Callable[[dict[str, Any]], None]] = {
            Op.PING: self._ping,
            Op.BATCH: self._batch,
            Op.REQUEST: self._request,
            Op.REFUSE: self._refuse,
        }
        self._verbs: dict[Verb, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            Verb.PLACE: self._place,
            Verb.STOP: self._stop_run,
            Verb.SOURCE: self._source,
            Verb.CONFIG: self._config,
            Verb.THROTTLE: self._throttle,
        }

    async def start(self) -> None:
        """Dial the master and start beating."""
        own = keys.load(self.keys_dir, "node", secret=True)
        master = keys.load(self.keys_dir, "master", secret=False)
        ctx = zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, route_of(self.name, self.instance).encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for a master that is not there
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
        sock.setsockopt(zmq.RECONNECT_IVL, 200)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.curve_secretkey = own.secret
        sock.curve_publickey = own.public
        sock.curve_serverkey = master.public
        monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        sock.connect(self.master)
        self._sock = sock
        coordinator.use_master(self._coordinate)
        loop = asyncio.get_running_loop()
        self._since = loop.time()
        self._tasks = [
            loop.create_task(self._beat(), name="cluster-heartbeat"),
            loop.create_task(self._receive(), name="cluster-receive"),
            loop.create_task(self._watch(monitor), name="cluster-auth"),
        ]
        log.info("slave %s dials the master at %s", self.name, self.master)

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

    # -- sending ------------------------------------------------------------------------

    def _send(self, frame: bytes) -> bool:
        if self._sock is None:
            return False
        try:
            return sent(self._sock.send(frame, zmq.NOBLOCK))
        except (zmq.Again, zmq.ZMQError):
            return False  # no master connected: the next heartbeat says it all again

    def heartbeat(self) -> dict[str, Any]:
        """This node as the master sees it (the metrics apart)."""
        beat: dict[str, Any] = {
            "name": self.name,
            "instance": self.instance,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "capacity": self.capacity,
            "status": self.controller.status().to_dict(),
            "time": clock.local_s(),
        }
        if self._probe is not None:  # for the master's offset measurement
            beat["clock"] = [*self._probe, beat["time"]]
        if self.meta is not None:
            beat.update(
                run=self.meta.to_dict(),
                run_version=self.version,
                ids=self._placed_runs,
            )
        return beat

    def frames(self) -> Iterator[bytes]:
        """This heartbeat as frames: one, or the heartbeat and its metrics in parts when
        the snapshot does not fit in one (each part within the frame limit)."""
        beat = self.heartbeat()
        snap = metrics.REGISTRY.local_snapshot()
        whole = encode(Op.HEARTBEAT, **beat, metrics=snap)
        if len(whole) <= self.frame_limit:
            yield whole
            return
        yield encode(Op.HEARTBEAT, **beat)
        parts = list(self._parts(snap))
        self._warn(
            "split",
            "the metrics snapshot (%d bytes) is larger than a control frame (%d): sent in %d "
            "parts",
            len(whole), self.frame_limit, len(parts),
        )  # fmt: skip
        for k, part in enumerate(parts):
            yield encode(Op.METRICS, name=self.name, instance=self.instance, first=k == 0,
                         snapshot=part)  # fmt: skip

    def _parts(self, snap: dict[str, Any]) -> Iterator[dict[str, Any]]:
        budget = self.frame_limit - 1024
        part: dict[str, Any] = {"time": snap.get("time")}
        size = 0
        for kind in ("counters", "gauges", "histograms"):
            for name, value in snap.get(kind, {}).items():
                cost = len(msgpack.packb([name, value], use_bin_type=True))
                if cost > budget:
                    self._warn("drop", "metric %s (%d bytes) exceeds a frame: not sent", name, cost)
                    continue
                if size + cost > budget:
                    yield part
                    part, size = {"time": snap.get("time")}, 0
                part.setdefault(kind, {})[name] = value
                size += cost
        yield part

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while self.refused is None:
            try:
                for frame in self.frames():
                    self._send(frame)
            except Exception as exc:  # never stop beating: say it, try again
                self._warn("beat", "a heartbeat could not be sent (trying again): %s", exc)
            now = loop.time()
            if self.master_seen and now - max(self.master_seen, self._dialed) > self.silent_after:
                if self.master_up:
                    log.warning(
                        "the master at %s is silent; users keep running, re-dialing", self.master
                    )
                self.master_up = False
                self._redial(now)
            if not self.master_seen and now - self._since > self.answer_wait:
                self._warn(
                    "answer",
                    "no answer from the master at %s for %.0f s: is it running there, and does "
                    "this node hold the cluster's keys (wrong keys?) from %s",
                    self.master, now - self._since, self.keys_dir,
                )  # fmt: skip
            await asyncio.sleep(self.interval)

    def _redial(self, now: float) -> None:
        """Dial again (tcp re-dials by itself; an inproc peer that went away does not)."""
        self._dialed = now
        if self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disconnect(self.master)
            self._sock.connect(self.master)

    def _warn(self, key: str, text: str, *args: Any) -> None:
        """Log a warning, once per `_REPEAT_WARNING_S` for the same `key`."""
        now = time.monotonic()
        if now - self._warned.get(key, -_REPEAT_WARNING_S) >= _REPEAT_WARNING_S:
            self._warned[key] = now
            log.warning(text, *args)

    # -- receiving ----------------------------------------------------------------------

    async def _receive(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            frame = await self._sock.recv()
            try:
                msg = decode(frame)
                handler = self._ops.get(msg["op"])
                if handler is None:
                    raise ProtocolError(f"{msg['op'].value} is not for a slave")
            except ProtocolError as exc:
                log.warning("dropped a control message from the master: %s", exc)
                continue
            self.master_seen = loop.time()
            if not self.master_up:
                self.master_up = True
                log.info("the master at %s answers", self.master)
            try:
                handler(msg)
            except ProtocolError as exc:
                log.warning("dropped a %s message from the master: %s", msg["op"].value, exc)

    def _ping(self, msg: dict[str, Any]) -> None:
        sent_at = msg.get("time")
        if isinstance(sent_at, int | float):
            self._probe = (float(sent_at), clock.local_s())
        offset = msg.get("clock_offset_us")
        if isinstance(offset, int) and not isinstance(offset, bool):
            clock.set_offset_us(offset)
            self._m_offset.set(offset / 1000)
        self._apply_config(msg.get("config"))
        slaves = msg.get("slaves")
        if isinstance(slaves, int) and slaves >= 1:
            throttle.set_share(1 / slaves)

    def _request(self, msg: dict[str, Any]) -> None:
        if self.refused is not None:
            return
        task = asyncio.get_running_loop().create_task(self._serve(msg))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _refuse(self, msg: dict[str, Any]) -> None:
        if msg.get("instance") != self.instance or self.refused is not None:
            return
        self.refused = str(msg.get("reason") or "refused by the master")
        log.error("the master at %s refused this node: %s", self.master, self.refused)
        if self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disconnect(self.master)
        task = asyncio.get_running_loop().create_task(self._stop_run({}))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _serve(self, msg: dict[str, Any]) -> None:
        request_id = msg.get("id")
        try:
            try:
                verb = Verb(msg.get("verb") or "")
            except ValueError:
                raise ProtocolError(f"unknown verb {msg.get('verb')!r}") from None
            async with self._serial:
                result = await self._verbs[verb](msg)
            reply = encode(Op.REPLY, id=request_id, ok=True, result=result)
        except (AmocError, ProtocolError) as exc:
            reply = encode(Op.REPLY, id=request_id, ok=False, error=str(exc))
        except Exception as exc:  # a bug must not kill the link: say it to the master
            log.exception("request %r failed", msg.get("verb"))
            reply = encode(Op.REPLY, id=request_id, ok=False, error=f"{type(exc).__name__}: {exc}")
        self._send(reply)

    # -- verbs --------------------------------------------------------------------------

    async def _place(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Run exactly the ids the master places here: start the new, remove the extra."""
        meta = RunMeta.from_dict(msg.get("run"))
        version = field(msg, "version", int)
        wanted = set(id_runs.from_runs(msg.get("ids")))
        force = bool(msg.get("force"))
        self._apply_config(msg.get("config"))
        ctl = self.controller
        same = self.meta is not None and self.meta.run_id == meta.run_id
        if same and ctl.scenario is not None:
            if version < self.version:  # an older placement overtaken by a newer one
                return {"removed": [], "started": 0, "stale": True}
            removed, started = await self._apply(wanted, force)
        else:
            source = field(msg, "source", str)
            if ctl.scenario is not None:
                log.info("run %s replaces the one running here", meta.run_id[:8])
                await ctl.stop()
            if wanted:
                loaded = self._scenario(meta.scenario, source, meta.digest)
                await ctl.do_loaded(loaded, sorted(wanted), meta.settings, meta.comment)
            removed, started = [], len(wanted)
            self.source = source
        self.meta, self.version, self.placed = meta, version, wanted
        self._placed_runs = id_runs.to_runs(wanted)  # not at every heartbeat: 100 000 users
        return {"removed": removed, "started": started, "status": ctl.status().to_dict()}

    async def _apply(self, wanted: set[int], force: bool) -> tuple[list[int], int]:
        ctl = self.controller
        alive = set(ctl.user_ids())
        extra = sorted(i for i in self.placed - wanted if i in alive)
        removed: list[int] = []
        if extra:
            removal = await ctl.remove(len(extra), force, ids=extra)
            removed = list(removal.removed)  # type: ignore[arg-type]
        known = ctl.known_ids()
        new = sorted(i for i in wanted - self.placed if i not in known)
        if new:
            await ctl.add(len(new), ids=new)
        return removed, len(new)

    async def _stop_run(self, msg: dict[str, Any]) -> dict[str, Any]:
        final = await self.controller.stop()
        self.meta, self.version, self.placed, self.source = None, 0, set(), ""
        self._placed_runs = []
        return final.to_dict()

    async def _source(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The source of the run carried here, and the run-time config (for adoption)."""
        if self.meta is None or msg.get("run_id") != self.meta.run_id:
            raise AmocError("this node carries no such run")
        return {"source": self.source, "config": self.config.runtime_values()}

    async def _config(self, msg: dict[str, Any]) -> dict[str, Any]:
        self._apply_config({field(msg, "name", str): msg.get("value")})
        return {"ok": True}

    async def _throttle(self, msg: dict[str, Any]) -> dict[str, Any]:
        action = msg.get("action")
        args = msg.get("args") or []
        allowed: dict[str, Callable[..., Any]] = {
            "change_rate": throttle.change_rate,
            "change_rate_gradually": throttle.change_rate_gradually,
            "pause": throttle.pause,
            "resume": throttle.resume,
        }
        if not isinstance(action, str) or action not in allowed or not isinstance(args, list):
            raise ProtocolError(f"throttle: unknown action {action!r}")
        allowed[action](*args)
        return {"throttles": throttle.info()}

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
        for name, why in self.config.take(values).items():
            log.warning("config %s from the master refused: %s", name, why)

    def _scenario(self, name: str, source: str, digest: str) -> scenario_mod.Scenario:
        """The scenario the master runs: ours if its source hashes the same, else its copy."""
        name = scenario_mod.check_name(name)
        if hashlib.sha256(source.encode()).hexdigest() != digest:
            raise ProtocolError(f"place: the source of {name!r} does not match its hash")
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
                else:
                    self._warn(
                        "handshake",
                        "the CURVE handshake with the master at %s failed: the master's key in "
                        "%s is not this master's (another cluster's keys?)",
                        self.master, self.keys_dir,
                    )  # fmt: skip
        finally:
            monitor.close(0)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
