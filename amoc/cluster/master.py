"""The master's end of the control plane: the node registry, id placement, fan-out.

Slaves dial the master's ROUTER socket; CURVE authenticates them (only the cluster's node
key is accepted, refusals are logged) and encrypts everything. A slave is known by its
heartbeats: the first one registers it, each one refreshes its status and metrics, and
silence for `cluster_down_after` ms marks it down (its users are counted as lost and, with
`rebalance=True`, started again on the nodes left). A restarted master learns its slaves
from their heartbeats and adopts the run they carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from amoc import coordinator, metrics
from amoc import scenario as scenario_mod
from amoc.cluster import dispatch, keys
from amoc.cluster.protocol import MAX_FRAME, Op, ProtocolError, Verb, decode, encode, sent
from amoc.config import Config
from amoc.errors import AmocError, RunnerError

log = logging.getLogger("amoc.cluster.master")

REQUEST_TIMEOUT = 15.0


@dataclass
class NodeInfo:
    """A slave as the master knows it."""

    name: str
    host: str = ""
    pid: int = 0
    version: str = ""
    capacity: float = 1.0
    up: bool = True
    last_seen: float = 0.0  # monotonic
    last_seen_wall: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)
    downs: int = 0

    def view(self, now: float) -> dict[str, Any]:
        """A plain picture for status() and the REST API."""
        users = self.status.get("users", {})
        return {
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "up": self.up,
            "capacity": self.capacity,
            "last_heartbeat_s": round(now - self.last_seen, 2),
            "state": self.status.get("state"),
            "scenario": self.status.get("scenario"),
            "running": users.get("running", 0),
            "pending": users.get("pending", 0),
            "errors": users.get("failed_runs", 0),
            "downs": self.downs,
        }


@dataclass
class Run:
    """The scenario the cluster runs and where each user id is."""

    scenario: str
    source: str
    digest: str
    settings: dict[str, Any]
    comment: str
    strategy: str
    chosen: list[str] | None  # nodes named in do(); None: every slave, new ones included
    rebalance: bool
    offset: int = 0  # ids placed so far: where the rotation goes on
    next_id: int = 1
    assigned: dict[int, str] = field(default_factory=dict)  # id -> node, in placement order
    lost: dict[int, str] = field(default_factory=dict)
    started_on: set[str] = field(default_factory=set)
    since: float = field(default_factory=time.time)


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


class Master:
    """Drives the slaves: registry, heartbeats, do / add / remove / stop over the cluster."""

    def __init__(self, config: Config, keys_dir: Path, scenario_dirs: list[Path]) -> None:
        self.config = config
        self.keys_dir = keys_dir
        self.scenario_dirs = scenario_dirs
        self.bind = config.get("cluster_bind")
        self.interval = config.get("cluster_heartbeat") / 1000.0
        self.down_after = config.get("cluster_down_after") / 1000.0
        self.nodes: dict[str, NodeInfo] = {}
        self.run: Run | None = None
        self.hubs: dict[str, coordinator.Hub] = {}
        self._sock: zmq.asyncio.Socket | None = None
        self._auth: AsyncioAuthenticator | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._adopting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._m_lost = metrics.counter("cluster.users.lost")
        self._m_up = metrics.gauge("cluster.nodes.up")
        self._m_out = metrics.counter("cluster.control.bytes_out")
        self._m_in = metrics.counter("cluster.control.bytes_in")

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Authenticate with CURVE, bind, and start the heartbeat tasks."""
        own = keys.load(self.keys_dir, "master", secret=True)
        node = keys.load(self.keys_dir, "node", secret=False)
        ctx = zmq.asyncio.Context.instance()
        self._auth = AsyncioAuthenticator(ctx)
        self._auth.start()
        self._auth.configure_curve_callback("*", _KeyCheck(node.public))
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted slave takes its name back
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a gone slave raises
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
        sock.curve_server = True
        sock.curve_secretkey = own.secret
        sock.curve_publickey = own.public
        try:
            sock.bind(self.bind)
        except zmq.ZMQError as exc:
            sock.close(0)
            self._auth.stop()
            raise AmocError(
                f"the master cannot listen on {self.bind} (cluster_bind): {exc}"
            ) from None
        self._sock = sock
        loop = self._loop = asyncio.get_running_loop()
        self.config.on_change(self._config_changed)
        self._tasks = [
            loop.create_task(self._receive(), name="cluster-receive"),
            loop.create_task(self._ping(), name="cluster-ping"),
            loop.create_task(self._watchdog(), name="cluster-watchdog"),
        ]
        log.info("master listens for slaves on %s", self.bind)

    async def close(self) -> None:
        """Close the socket; slaves keep their users and wait for a master."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    # -- the wire -----------------------------------------------------------------------

    def _send(self, name: str, frame: bytes) -> bool:
        if self._sock is None:
            return False
        try:
            ok = sent(self._sock.send_multipart([name.encode(), frame], zmq.NOBLOCK))
        except (zmq.Again, zmq.ZMQError):
            ok = False
        if not ok:
            return False  # not connected (ROUTER_MANDATORY): the watchdog will see it
        self._m_out.inc(len(frame))
        return True

    async def request(self, node: str, verb: Verb, **fields: Any) -> Any:
        """Run `verb` on slave `node`; its result, or AmocError with the slave's error."""
        name = node
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            if not self._send(name, encode(Op.REQUEST, id=request_id, verb=verb.value, **fields)):
                raise AmocError(f"node {name} is not connected")
            try:
                reply = await asyncio.wait_for(future, REQUEST_TIMEOUT)
            except TimeoutError:
                raise AmocError(
                    f"node {name} did not answer {verb.value} within {REQUEST_TIMEOUT:.0f} s"
                ) from None
        finally:
            self._waiting.pop(request_id, None)
        if not reply.get("ok"):
            raise AmocError(f"node {name}: {reply.get('error')}")
        return reply.get("result")

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
            sender = frames[0].decode(errors="replace")
            self._m_in.inc(len(frames[1]))
            try:
                msg = decode(frames[1])
                if msg["op"] is Op.HEARTBEAT:
                    self._heartbeat(sender, msg)
                elif msg["op"] is Op.COORDINATE:
                    self._coordinate(sender, msg)
                elif msg["op"] is Op.REPLY:
                    future = self._waiting.get(msg.get("id"))  # type: ignore[arg-type]
                    if future is not None and not future.done():
                        future.set_result(msg)
                else:
                    raise ProtocolError(f"{msg['op'].value} is not for a master")
            except ProtocolError as exc:
                log.warning("dropped a control message from %s: %s", sender, exc)
            except Exception:  # a bad message must never stop the master
                log.exception("control message from %s failed", sender)

    def _heartbeat(self, sender: str, msg: dict[str, Any]) -> None:
        name = msg.get("name")
        if name != sender:
            raise ProtocolError(f"heartbeat names {name!r} but comes from {sender!r}")
        status = msg.get("status")
        if not isinstance(status, dict):
            raise ProtocolError("heartbeat without a status map")
        now = time.monotonic()
        info = self.nodes.get(sender)
        new = info is None
        if info is None:
            info = self.nodes[sender] = NodeInfo(sender)
            log.info("node %s joined (%s, pid %s)", sender, msg.get("host"), msg.get("pid"))
        elif not info.up:
            info.up = True
            log.warning("node %s is back after %.1f s", sender, now - info.last_seen)
            self._returned(info)
        info.host = str(msg.get("host", ""))
        info.pid = int(msg.get("pid") or 0)
        info.version = str(msg.get("version", ""))
        capacity = msg.get("capacity")
        info.capacity = float(capacity) if isinstance(capacity, int | float) else 1.0
        info.last_seen, info.last_seen_wall = now, time.time()
        info.status = status
        snap = msg.get("metrics")
        if isinstance(snap, dict):
            metrics.REGISTRY.remote[sender] = snap
        self._m_up.set(sum(1 for n in self.nodes.values() if n.up))
        if new:
            # A newcomer gets the run-time config at once (the master's values win).
            self._send(sender, encode(Op.PING, config=self.config.runtime_values()))
            if self.run is None and status.get("scenario") and not self._adopting:
                asyncio.get_running_loop().create_task(self._adopt())

    def _coordinate(self, sender: str, msg: dict[str, Any]) -> None:
        name, sizes, timeout = msg.get("name"), msg.get("sizes"), msg.get("timeout")
        if not isinstance(name, str) or not isinstance(sizes, list):
            raise ProtocolError("coordinate: name and sizes are required")
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise ProtocolError("coordinate: timeout must be > 0 ms")
        user = msg.get("user")
        if not isinstance(user, int):
            raise ProtocolError("coordinate: user must be an id")
        hub = self.hubs.get(name)
        if hub is None:
            hub = self.hubs[name] = coordinator.Hub(name, sizes, timeout / 1000, self._batch)
        hub.add(coordinator.Member(user, msg.get("data"), sender))

    def _batch(self, event: str, index: int, name: str, batch: list[coordinator.Member]) -> None:
        """A batch formed: its first user's node runs the action; every member's node hears."""
        members = [[m.user, m.data, m.node] for m in batch]
        for k, node in enumerate(dict.fromkeys(m.node for m in batch)):
            frame = encode(
                Op.BATCH, name=name, event=event, index=index, members=members, run_action=k == 0
            )
            if not self._send(node, frame):
                log.warning("coordinator %s: node %s missed a batch", name, node)

    async def throttle(self, action: str, *args: Any) -> dict[str, Any]:
        """Run a throttle action (change_rate, change_rate_gradually, pause, resume) on
        every slave that is up; each applies its share."""
        names = self.slaves()
        results = await _on_every_node(
            self.request(n, Verb.THROTTLE, action=action, args=list(args)) for n in names
        )
        return dict(zip(names, results, strict=True))

    async def _ping(self) -> None:
        while True:
            up = [info.name for info in self.nodes.values() if info.up]
            for name in up:
                self._send(name, encode(Op.PING, slaves=len(up)))
            await asyncio.sleep(self.interval)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(min(0.25, self.interval))
            now = time.monotonic()
            for info in list(self.nodes.values()):
                if info.up and now - info.last_seen > self.down_after:
                    info.up = False
                    info.downs += 1
                    self._m_up.set(sum(1 for n in self.nodes.values() if n.up))
                    log.warning(
                        "node %s is down: no heartbeat for %.1f s", info.name, now - info.last_seen
                    )
                    metrics.annotate("node_down", tags={"node": info.name})
                    await self._lost(info)

    def _config_changed(self, name: str, value: Any) -> None:
        # Called in the thread that set the value (often the console's): hop to the loop.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._broadcast, name, value)

    def _broadcast(self, name: str, value: Any) -> None:
        for info in list(self.nodes.values()):
            if info.up:
                asyncio.get_running_loop().create_task(
                    self._quiet(self.request(info.name, Verb.CONFIG, name=name, value=value))
                )

    async def _quiet(self, coro: Any) -> None:
        try:
            await coro
        except AmocError as exc:
            log.warning("%s", exc)

    # -- failures -----------------------------------------------------------------------

    async def _lost(self, info: NodeInfo) -> None:
        run = self.run
        if run is None:
            return
        gone = [uid for uid, node in run.assigned.items() if node == info.name]
        for uid in gone:
            del run.assigned[uid]
            run.lost[uid] = info.name
        run.started_on.discard(info.name)
        if not gone:
            return
        self._m_lost.inc(len(gone))
        log.warning("%d users of node %s are lost", len(gone), info.name)
        if run.rebalance:
            targets = self._targets(run)
            if not targets:
                log.warning("no node left to take the lost users")
                return
            for uid in gone:
                run.lost.pop(uid, None)
            try:
                await self._place(run, gone, targets)
                log.warning("%d lost users restarted on %s", len(gone), ", ".join(targets))
            except AmocError as exc:
                log.warning("rebalancing failed: %s", exc)

    def _returned(self, info: NodeInfo) -> None:
        run = self.run
        if run is None:
            return
        mine = [uid for uid, node in run.lost.items() if node == info.name]
        if mine:
            # Its users were not restarted elsewhere: they are found again.
            for uid in mine:
                del run.lost[uid]
                run.assigned[uid] = info.name
            run.started_on.add(info.name)
            log.warning("%d users of node %s are found again", len(mine), info.name)
        elif info.status.get("scenario"):
            # Its users were restarted elsewhere: stop the old copies.
            asyncio.get_running_loop().create_task(self._quiet(self.request(info.name, Verb.STOP)))

    async def _adopt(self) -> None:
        """After a master restart: take over the run the slaves carry on."""
        self._adopting = True
        try:
            await asyncio.sleep(self.interval * 1.5)  # let every slave say hello first
            running = [n for n in self.nodes.values() if n.up and n.status.get("scenario")]
            if self.run is not None or not running:
                return
            name = running[0].status["scenario"]
            loaded_source = self._source(name)
            run = Run(name, loaded_source, _digest(loaded_source), {}, "", "round_robin",
                      None, False)  # fmt: skip
            for info in running:
                answer = await self.request(info.name, Verb.USERS)
                for uid in answer.get("ids", []):
                    run.assigned[uid] = info.name
                run.next_id = max(run.next_id, int(answer.get("next_id") or 1))
                run.started_on.add(info.name)
            run.assigned = dict(sorted(run.assigned.items()))
            run.offset = len(run.assigned)
            self.run = run
            log.warning(
                "adopted the running scenario %s: %d users on %d nodes",
                name,
                len(run.assigned),
                len(running),
            )
        except AmocError as exc:
            log.warning("could not adopt the slaves' run: %s", exc)
        finally:
            self._adopting = False

    # -- verbs --------------------------------------------------------------------------

    def _source(self, name: str) -> str:
        path = scenario_mod.find(name, self.scenario_dirs)
        source = path.read_text()
        loaded = scenario_mod.load_source(name, source, path)  # refused here, before any slave
        # Its parameters are verified here too, before a change goes out to the slaves.
        self.config.declare(loaded.params)
        return source

    def slaves(self, names: list[str] | None = None) -> list[str]:
        """The up slaves, in join order; `names` restricts them (unknown names refused)."""
        up = [n.name for n in self.nodes.values() if n.up]
        if names is None:
            return up
        unknown = [n for n in names if n not in self.nodes]
        if unknown:
            raise AmocError(f"unknown nodes {unknown}; known: {sorted(self.nodes)}")
        down = [n for n in names if n not in up]
        if down:
            raise AmocError(f"nodes {down} are down")
        return list(dict.fromkeys(names))

    def _targets(self, run: Run) -> list[str]:
        return self.slaves() if run.chosen is None else [
            n for n in run.chosen if n in self.nodes and self.nodes[n].up
        ]  # fmt: skip

    async def do(
        self,
        scenario: str,
        first: int,
        last: int,
        nodes: list[str] | None = None,
        comment: str = "",
        settings: dict[str, Any] | None = None,
        strategy: str = "round_robin",
        rebalance: bool = False,
    ) -> dict[str, Any]:
        """Start users first..last of `scenario`, spread over the slaves."""
        if self.run is not None:
            raise RunnerError(
                f"scenario {self.run.scenario!r} runs on the cluster; amoc_dist.stop() it first"
            )
        if (
            isinstance(first, bool)
            or isinstance(last, bool)
            or not (isinstance(first, int) and isinstance(last, int))
        ):
            raise RunnerError("first and last must be integers")
        if first < 1 or last < first:
            raise RunnerError(f"ids {first}..{last}: need 1 <= first <= last")
        dispatch.get(strategy)
        targets = self.slaves(nodes)
        if not targets:
            raise AmocError("no slave node is up: see nodes()")
        source = self._source(scenario)
        run = Run(scenario, source, _digest(source), dict(settings or {}), comment, strategy,
                  None if nodes is None else targets, rebalance, next_id=last + 1)  # fmt: skip
        self.run = run
        try:
            await self._place(run, list(range(first, last + 1)), targets, everyone=True)
        except AmocError:
            failed, self.run = run, None
            await self._stop_run(failed)
            raise
        metrics.annotate("scenario_start", comment=comment,
                         tags={"scenario": scenario, "users": last - first + 1})  # fmt: skip
        return self.status()

    async def _place(
        self, run: Run, ids: list[int], targets: list[str], everyone: bool = False
    ) -> None:
        strategy = dispatch.get(run.strategy)
        capacities = {n: self.nodes[n].capacity for n in targets}
        placed = strategy(ids, capacities, run.offset)
        run.offset += len(ids)
        for name, node_ids in placed.items():
            for uid in node_ids:
                run.assigned[uid] = name

        async def one(name: str, node_ids: list[int]) -> None:
            if name in run.started_on:
                if node_ids:
                    await self.request(name, Verb.ADD, ids=node_ids)
                return
            if not node_ids and not everyone:
                return
            await self.request(
                name, Verb.DO, scenario=run.scenario, source=run.source, hash=run.digest,
                ids=node_ids, settings=run.settings, comment=run.comment,
                config=self.config.runtime_values(),
            )  # fmt: skip
            run.started_on.add(name)

        await _on_every_node(one(n, placed.get(n, [])) for n in targets)

    async def add(self, count: int) -> dict[str, Any]:
        """Start `count` more users with the next ids over the run's nodes."""
        run = self._running()
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise RunnerError(f"add: count must be an integer >= 1, got {count!r}")
        targets = self._targets(run)
        if not targets:
            raise AmocError("no node of this run is up: see nodes()")
        ids = list(range(run.next_id, run.next_id + count))
        run.next_id += count
        await self._place(run, ids, targets)
        return self.status()

    async def remove(self, count: int, force: bool = False) -> dict[str, Any]:
        """Remove the `count` newest users wherever they run; `force` kills them now."""
        run = self._running()
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise RunnerError(f"remove: count must be an integer >= 1, got {count!r}")
        alive = [uid for uid, node in run.assigned.items() if self.nodes[node].up]
        if count > len(alive):
            raise RunnerError(f"cannot remove {count} users: only {len(alive)} are placed")
        newest = sorted(alive, key=lambda u: u)[-count:]
        by_node: dict[str, list[int]] = {}
        for uid in newest:
            by_node.setdefault(run.assigned.pop(uid), []).append(uid)
        await _on_every_node(
            self.request(n, Verb.REMOVE, ids=ids, force=force) for n, ids in by_node.items()
        )
        return {"removed": {n: ids for n, ids in by_node.items()}, "force": force, **self.status()}

    async def stop(self) -> dict[str, Any]:
        """Stop the scenario on every node."""
        run = self._running()
        for hub in self.hubs.values():
            hub.flush(coordinator.STOP)  # "all" actions run while the nodes still have the plan
        self.hubs.clear()
        self.run = None
        final = self.status()
        await self._stop_run(run)
        metrics.annotate("scenario_stop", comment=run.comment, tags={"scenario": run.scenario})
        return final

    async def _stop_run(self, run: Run) -> None:
        names = [n for n in run.started_on | set(run.assigned.values()) if self.nodes[n].up]
        results = await asyncio.gather(
            *(self.request(n, Verb.STOP) for n in names), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                log.warning("stop: %s", result)

    def _running(self) -> Run:
        if self.run is None:
            raise RunnerError("no scenario runs on the cluster: amoc_dist.do(...) first")
        return self.run

    # -- reading ------------------------------------------------------------------------

    def placement(self) -> dict[str, list[int]]:
        """Node -> the ids placed on it (ascending)."""
        out: dict[str, list[int]] = {}
        if self.run is not None:
            for uid, node in self.run.assigned.items():
                out.setdefault(node, []).append(uid)
        return {n: sorted(ids) for n, ids in out.items()}

    def node_views(self) -> list[dict[str, Any]]:
        """Every known slave."""
        now = time.monotonic()
        return [info.view(now) for info in self.nodes.values()]

    def status(self) -> dict[str, Any]:
        """The cluster: the run, each node, the totals."""
        views = self.node_views()
        run = self.run
        return {
            "state": "running" if run else "idle",
            "scenario": run.scenario if run else None,
            "comment": run.comment if run else "",
            "since": run.since if run else None,
            "users": {
                "placed": len(run.assigned) if run else 0,
                "lost": len(run.lost) if run else 0,
                "running": sum(v["running"] for v in views if v["up"]),
                "pending": sum(v["pending"] for v in views if v["up"]),
                "errors": sum(v["errors"] for v in views),
            },
            "next_id": run.next_id if run else None,
            "nodes": {
                "up": sum(1 for v in views if v["up"]),
                "down": sum(1 for v in views if not v["up"]),
            },
            "node": views,
        }


async def _on_every_node(requests: Iterable[Awaitable[Any]]) -> list[Any]:
    """Run the requests at once and let each finish; their results, or one AmocError that
    joins every node's error."""
    results = await asyncio.gather(*requests, return_exceptions=True)
    errors = [str(r) for r in results if isinstance(r, BaseException)]
    if errors:
        raise AmocError("; ".join(errors))
    return results


def _digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()
