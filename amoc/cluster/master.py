"""The master: one run over the slaves, reconciled from what they report.

Three rooms, each in its module: the wire (`cluster.wire`: socket, CURVE, requests), the
node registry (`cluster.registry`: heartbeats, up and down, duplicate names) and the run's
placement (`cluster.placement`: node -> the ids it should run, pure). The master joins
them: its verbs change the plan and send each touched slave its whole set; each heartbeat
says what a slave applied, and a slave that missed a change (it was away, restarted, or
a message was lost) is sent its set again. A restarted master adopts the run the slaves
report, with its comment, strategy, settings and run-time config.

Everything here runs in the node's event loop; other threads go through `Node.call`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Iterable, Mapping
from pathlib import Path
from typing import Any

from amoc import coordinator, metrics, scenario_check
from amoc import scenario as scenario_mod
from amoc.cluster import dispatch
from amoc.cluster import ids as id_runs
from amoc.cluster.placement import Plan, RunMeta
from amoc.cluster.protocol import Op, ProtocolError, Verb
from amoc.cluster.registry import NodeInfo, NodeRegistry
from amoc.cluster.wire import MasterWire, split_route
from amoc.config import Config, check_names
from amoc.errors import AmocError, RunnerError, ScenarioError
from amoc.status import (
    ClusterStatus,
    ClusterUsers,
    NodeCounts,
    NodeView,
    Removal,
    check_count,
)

log = logging.getLogger("amoc.cluster.master")

# Runs stopped by this master: a slave that comes back still running one is told to stop.
_STOPPED_KEPT = 64


class Master:
    """Drives the slaves: registry, heartbeats, do / add / remove / stop over the cluster."""

    def __init__(self, config: Config, keys_dir: Path, scenario_dirs: list[Path]) -> None:
        self.config = config
        self.scenario_dirs = scenario_dirs
        self.interval = config.get("cluster_heartbeat") / 1000.0
        self.down_after = config.get("cluster_down_after") / 1000.0
        self.registry = NodeRegistry(self.interval, self._refuse, config.get("cluster_clock_warn"))
        self.wire = MasterWire(
            config.get("cluster_bind"),
            keys_dir,
            {
                Op.HEARTBEAT: self._heartbeat,
                Op.METRICS: self._metrics_part,
                Op.COORDINATE: self._coordinate,
            },
        )
        self.plan: Plan | None = None
        self.hubs: dict[str, coordinator.Hub] = {}
        self._starting = ""  # the scenario a do() under way starts
        self._adopting = False
        self._stopped: collections.deque[str] = collections.deque(maxlen=_STOPPED_KEPT)
        self._syncing: set[str] = set()  # nodes with a placement on its way
        self._tasks: list[asyncio.Task[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._m_lost = metrics.counter("cluster.users.lost")

    @property
    def nodes(self) -> dict[str, NodeInfo]:
        """Every slave the master knows, by name."""
        return self.registry.nodes

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start the heartbeat tasks."""
        await self.wire.start()
        loop = self._loop = asyncio.get_running_loop()
        self.config.on_change(self._config_changed)
        metrics.REGISTRY.merge_with(self.registry.snapshots)
        self._tasks = [
            loop.create_task(self._ping(), name="cluster-ping"),
            loop.create_task(self._watchdog(), name="cluster-watchdog"),
        ]
        log.info("master listens for slaves on %s", self.wire.bind)

    async def close(self) -> None:
        """Close the socket; slaves keep their users and wait for a master."""
        metrics.REGISTRY.merge_with(None)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.wire.close()

    # -- what the slaves say ------------------------------------------------------------

    def _heartbeat(self, route: str, msg: dict[str, Any]) -> None:
        beat = self.registry.beat(route, msg)
        if beat is None:
            return
        info, event = beat
        sender = info.name
        self.wire.routes[sender] = route
        if event in ("joined", "restarted") and (self.plan or not info.report.meta):
            # A newcomer gets the run-time config at once (the master's values win), unless
            # this master has no run and the node carries one: adoption takes its config.
            self.wire.send(sender, Op.PING, config=self.config.runtime_values())
        if event in ("returned", "restarted") and self.plan is not None:
            found = self.plan.restore(sender)
            if found:
                log.warning("%d users of node %s are placed on it again", len(found), sender)
        self._reconcile(info)

    def _reconcile(self, info: NodeInfo) -> None:
        """Bring a node in line with the plan (or adopt its run, or stop a stopped one)."""
        report = info.report
        run_id = report.meta.run_id if report.meta else None
        if info.name in self._syncing or not info.up:
            return
        plan = self.plan
        if plan is not None:
            if plan.behind(info.name, run_id, report.version):
                self._spawn(self._push(info.name, force=True), f"sync-{info.name}")
        elif run_id is not None and run_id in self._stopped:
            self._spawn(self._stop_node(info.name), f"stop-{info.name}")
        elif run_id is not None and not self._adopting and not self._starting:
            self._adopting = True
            self._spawn(self._adopt(), "cluster-adopt")

    def _metrics_part(self, route: str, msg: dict[str, Any]) -> None:
        name, instance = split_route(route)
        info = self.registry.nodes.get(name)
        if info is None or instance != info.instance:
            return
        part = msg.get("snapshot")
        if not isinstance(part, dict):
            raise ProtocolError("metrics: snapshot must be a map")
        if msg.get("first"):
            info.snapshot = {"counters": {}, "gauges": {}, "histograms": {}}
        for kind in ("counters", "gauges", "histograms"):
            values = part.get(kind)
            if isinstance(values, dict):
                info.snapshot.setdefault(kind, {}).update(values)
        if isinstance(part.get("time"), int | float):
            info.snapshot["time"] = part["time"]

    def _refuse(self, route: str, instance: str, reason: str) -> None:
        self.wire.send_route(route, Op.REFUSE, instance=instance, reason=reason)

    def _coordinate(self, route: str, msg: dict[str, Any]) -> None:
        sender = split_route(route)[0]
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
            sent = self.wire.send(node, Op.BATCH, name=name, event=event, index=index,
                                  members=members, run_action=k == 0)  # fmt: skip
            if not sent:
                log.warning("coordinator %s: node %s missed a batch", name, node)

    # -- timers -------------------------------------------------------------------------

    async def _ping(self) -> None:
        while True:
            up = self.registry.up()
            for name in up:
                # Its send time (the slave's next heartbeat echoes it: amoc.cluster.clock)
                # and the slave's offset as measured so far (its stamps correct by it).
                offset = self.registry.nodes[name].clock.offset_us
                extra = {} if offset is None else {"clock_offset_us": offset}
                self.wire.send(name, Op.PING, slaves=len(up), time=time.time(), **extra)
            await asyncio.sleep(self.interval)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(min(0.25, self.interval))
            for info in self.registry.mark_down(self.down_after):
                metrics.annotate("node_down", tags={"node": info.name})
                await self._lost(info)

    async def _lost(self, info: NodeInfo) -> None:
        plan = self.plan
        if plan is None:
            return
        gone = plan.lose(info.name)
        if not gone:
            return
        self._m_lost.inc(len(gone))
        log.warning("%d users of node %s are lost", len(gone), info.name)
        if not plan.meta.rebalance:
            return
        targets = self._targets(plan)
        if not targets:
            log.warning("no node left to take the lost users of %s", info.name)
            return
        moved = plan.take_lost(info.name)
        placed = plan.place(moved, self._capacities(targets))
        try:
            await self._push_all(placed, force=False)
            log.warning("%d lost users restarted on %s", len(moved), ", ".join(placed))
        except AmocError as exc:
            log.warning("rebalancing failed (the nodes are told again): %s", exc)

    def _config_changed(self, name: str, value: Any) -> None:
        # Called in the thread that set the value (often the console's): hop to the loop.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._broadcast, name, value)

    def _broadcast(self, name: str, value: Any) -> None:
        for node in self.registry.up():
            self._spawn(self.wire.request(node, Verb.CONFIG, name=name, value=value), "config")

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        asyncio.get_running_loop().create_task(_logged(coro), name=name)

    # -- a restarted master -------------------------------------------------------------

    async def _adopt(self) -> None:
        """Take over the run the slaves carry on, with everything that travels with it."""
        try:
            await asyncio.sleep(self.interval * 1.5)  # let every slave say hello first
            reports = {
                n.name: (meta, n.report.ids, n.report.version)
                for n in self.registry.nodes.values()
                if n.up and (meta := n.report.meta) is not None
            }
            if self.plan is not None or self._starting or not reports:
                return
            source = await self._adopted_source(reports)
            plan = Plan.adopt(reports, source)
            self.plan = plan
            meta = plan.meta
            tags = {"scenario": meta.scenario, "users": plan.placed(), "since": meta.since,
                    "adopted": True}  # fmt: skip
            metrics.annotate("scenario_start", comment=meta.comment, tags=tags)
            log.warning(
                "adopted the running scenario %s (comment %r, strategy %s, rebalance %s): "
                "%d users on %d nodes",
                meta.scenario, meta.comment, meta.strategy, meta.rebalance, plan.placed(),
                len(plan.desired),
            )  # fmt: skip
            for info in list(self.registry.nodes.values()):
                self._reconcile(info)
        except AmocError as exc:
            log.warning("could not adopt the slaves' run (tried again): %s", exc)
        finally:
            self._adopting = False

    async def _adopted_source(self, reports: Mapping[str, tuple[RunMeta, list[int], int]]) -> str:
        """The adopted run's source (this master's copy if it is the same) and the slaves'
        run-time config."""
        for name, (meta, _, _) in reports.items():
            answer = await self.wire.request(name, Verb.SOURCE, run_id=meta.run_id)
            if not isinstance(answer, dict) or _digest(str(answer.get("source"))) != meta.digest:
                continue
            self._take_config(answer.get("config"))
            return str(answer["source"])
        raise AmocError("no slave has the source of the run it carries")

    def _take_config(self, values: Any) -> None:
        if not isinstance(values, dict):
            return
        for name, why in self.config.take(values).items():
            log.warning("run-time config %s from the slaves refused: %s", name, why)

    # -- verbs --------------------------------------------------------------------------

    def slaves(self, names: list[str] | None = None) -> list[str]:
        """The up slaves, in join order; `names` restricts them (unknown names refused)."""
        up = self.registry.up()
        if names is None:
            return up
        unknown = [n for n in names if n not in self.registry.nodes]
        if unknown:
            raise AmocError(f"unknown nodes {unknown}; known: {sorted(self.registry.nodes)}")
        down = [n for n in names if n not in up]
        if down:
            raise AmocError(f"nodes {down} are down")
        return list(dict.fromkeys(names))

    def _targets(self, plan: Plan) -> list[str]:
        up = self.registry.up()
        return up if plan.meta.chosen is None else [n for n in plan.meta.chosen if n in up]

    def _capacities(self, names: Iterable[str]) -> dict[str, float]:
        return {n: self.registry.nodes[n].capacity for n in names}

    async def do(
        self,
        scenario: str,
        first: int,
        last: int,
        settings: Mapping[str, Any] | None = None,
        comment: str = "",
        *,
        nodes: list[str] | None = None,
        strategy: str = "round_robin",
        rebalance: bool = False,
    ) -> ClusterStatus:
        """Start users first..last of `scenario`, spread over the slaves (or `nodes`)."""
        self._admit()
        _check_range(first, last)
        dispatch.get(strategy)
        targets = self.slaves(nodes)
        if not targets:
            raise AmocError("no slave node is up: see nodes()")
        self._starting = scenario
        try:
            source = await self._source(scenario, settings or {})
            meta = RunMeta.new(scenario, _digest(source), settings or {}, comment, strategy,
                               None if nodes is None else targets, rebalance, last + 1)  # fmt: skip
            plan = Plan(meta, source)
            placed = plan.place(list(range(first, last + 1)), self._capacities(targets))
            self.plan = plan
        finally:
            self._starting = ""
        try:
            await self._push_all(placed, force=False)
        except AmocError:
            if self.plan is plan:
                await self._end(plan)
            raise
        metrics.annotate("scenario_start", comment=comment,
                         tags={"scenario": scenario, "users": last - first + 1})  # fmt: skip
        log.info(
            "run %s of %s started: ids %d..%d on %s, comment %r",
            meta.run_id[:8], scenario, first, last, ", ".join(placed), comment,
        )  # fmt: skip
        return self.status()

    def _admit(self) -> None:
        if self._starting:
            raise RunnerError(f"scenario {self._starting!r} is starting on the cluster; wait")
        if self.plan is not None:
            raise RunnerError(
                f"scenario {self.plan.meta.scenario!r} runs on the cluster; "
                "amoc_dist.stop() it first"
            )

    async def _source(self, name: str, settings: Mapping[str, Any]) -> str:
        """The scenario's source, checked in a child process first, its parameters
        declared, the settings' names verified."""
        path = scenario_mod.find(name, self.scenario_dirs)
        source = path.read_text()
        facts = await scenario_check.check(name, source, _digest(source))
        if not facts.loadable:
            raise ScenarioError(facts.problem or f"scenario {name!r} cannot load")
        # Checked, it is imported here (contained) once the run starts, so that its
        # parameters' own verifications and update functions judge run-time changes.
        loaded = await asyncio.get_running_loop().run_in_executor(
            None, scenario_mod.load_source, name, source, path
        )
        self.config.declare(loaded.params)
        check_names(settings, self.config.known(), f"for scenario {name!r}")
        return source

    async def add(self, count: int) -> ClusterStatus:
        """Start `count` more users with the next ids over the run's nodes."""
        plan = self._running()
        check_count(count, "add")
        targets = self._targets(plan)
        if not targets:
            raise AmocError("no node of this run is up: see nodes()")
        ids = list(range(plan.meta.next_id, plan.meta.next_id + count))
        plan.meta.next_id += count
        await self._push_all(plan.place(ids, self._capacities(targets)), force=False)
        log.info("added ids %d..%d", ids[0], ids[-1])
        return self.status()

    async def remove(self, count: int, force: bool = False) -> Removal:
        """Remove the `count` newest users wherever they run; `force` kills them now."""
        plan = self._running()
        check_count(count, "remove")
        up = self.registry.up()
        alive = sum(len(plan.desired.get(n, ())) for n in up)
        if count > alive:
            raise RunnerError(f"cannot remove {count} users: only {alive} are placed")
        taken = plan.take_newest(count, up)
        results = await self._push_all(taken, force=force)
        removed = {n: sorted(r.get("removed", [])) for n, r in results.items()}
        log.info("removed %d users (%s)", sum(map(len, removed.values())), "force" * force)
        return Removal(removed, force, self.status())

    async def stop(self) -> ClusterStatus:
        """Stop the scenario on every node."""
        plan = self._running()
        final = self.status()
        await self._end(plan)
        log.info("run %s of %s stopped", plan.meta.run_id[:8], plan.meta.scenario)
        return final

    async def _end(self, plan: Plan) -> None:
        for hub in self.hubs.values():
            hub.flush(coordinator.STOP)  # "all" actions run while the nodes still have the plan
        self.hubs.clear()
        self.plan = None
        self._stopped.append(plan.meta.run_id)
        names = [
            n.name
            for n in self.registry.nodes.values()
            if n.up and (n.name in plan.nodes() or n.report.meta is not None)
        ]
        await asyncio.gather(*(self._stop_node(n) for n in names))
        metrics.annotate("scenario_stop", comment=plan.meta.comment,
                         tags={"scenario": plan.meta.scenario})  # fmt: skip

    async def _stop_node(self, name: str) -> None:
        self._syncing.add(name)
        try:
            await self.wire.request(name, Verb.STOP)
        except AmocError as exc:
            log.warning("stop: %s", exc)
        finally:
            self._syncing.discard(name)

    def _running(self) -> Plan:
        if self._starting:
            raise RunnerError(f"scenario {self._starting!r} is starting on the cluster; wait")
        if self.plan is None:
            raise RunnerError("no scenario runs on the cluster: amoc_dist.do(...) first")
        return self.plan

    async def throttle(self, action: str, *args: Any) -> dict[str, Any]:
        """Run a throttle action (change_rate, change_rate_gradually, pause, resume) on
        every slave that is up; each applies its share."""
        names = self.registry.up()
        results = await _on_every_node(
            self.wire.request(n, Verb.THROTTLE, action=action, args=list(args)) for n in names
        )
        return dict(zip(names, results, strict=True))

    # -- placing ------------------------------------------------------------------------

    async def _push_all(self, nodes: Mapping[str, Any], force: bool) -> dict[str, dict[str, Any]]:
        """Send each of `nodes` its whole set; their answers (errors joined)."""
        names = list(nodes)
        results = await _on_every_node(self._push(n, force) for n in names)
        return dict(zip(names, results, strict=True))

    async def _push(self, node: str, force: bool) -> dict[str, Any]:
        """Send `node` its whole set of the plan with its version; the slave's answer."""
        plan = self.plan
        if plan is None:
            return {}
        self._syncing.add(node)
        try:
            answer = await self.wire.request(
                node, Verb.PLACE, run=plan.meta.to_dict(), version=plan.versions.get(node, 0),
                ids=id_runs.to_runs(plan.ids(node)), source=plan.source, force=force,
                config=self.config.runtime_values(),
            )  # fmt: skip
        finally:
            self._syncing.discard(node)
        return answer if isinstance(answer, dict) else {}

    # -- reading ------------------------------------------------------------------------

    def placement(self) -> dict[str, list[int]]:
        """Node -> the ids placed on it (ascending)."""
        if self.plan is None:
            return {}
        return {n: ids for n in self.plan.desired if (ids := self.plan.ids(n))}

    def node_views(self) -> list[NodeView]:
        """Every known slave."""
        now = time.monotonic()
        desired = self.plan.desired if self.plan else {}
        return [
            info.view(now, len(desired.get(info.name, ()))) for info in self.registry.nodes.values()
        ]

    def sample(self) -> dict[str, Any]:
        """The figures the live view and the report need: per up node, and the targets."""
        up = {n.name: n.snapshot for n in self.registry.nodes.values() if n.up}
        return {
            "nodes": up,
            "targets": {k: len(v) for k, v in self.placement().items()},
            "scenario": self.plan.meta.scenario if self.plan else None,
            "state": self._state([v for v in self.node_views() if v.up]),
        }

    def status(self) -> ClusterStatus:
        """The cluster: the run, each node, the totals."""
        views = self.node_views()
        up = [v for v in views if v.up]
        plan = self.plan
        finished = sum(self.registry.nodes[v.name].status.users.finished for v in up)
        return ClusterStatus(
            state=self._state(up),
            scenario=plan.meta.scenario if plan else self._starting or None,
            comment=plan.meta.comment if plan else "",
            since=plan.meta.since if plan else None,
            users=ClusterUsers(
                placed=plan.placed() if plan else 0,
                lost=len(plan.lost) if plan else 0,
                running=sum(v.running for v in up),
                pending=sum(v.pending for v in up),
                finished=finished,
                errors=sum(v.errors for v in views),
            ),
            next_id=plan.meta.next_id if plan else None,
            nodes=NodeCounts(up=len(up), down=len(views) - len(up)),
            node=tuple(views),
            strategy=plan.meta.strategy if plan else None,
            rebalance=plan.meta.rebalance if plan else False,
        )

    def _state(self, up: list[NodeView]) -> str:
        if self._starting:
            return "starting"
        if self.plan is None:
            return "idle"
        holders = [v for v in up if v.placed]
        if holders and all(v.state == "finished" for v in holders):
            return "finished"
        return "running"


async def _on_every_node(requests: Iterable[Awaitable[Any]]) -> list[Any]:
    """Run the requests at once and let each finish; their results, or one AmocError that
    joins every node's error."""
    results = await asyncio.gather(*requests, return_exceptions=True)
    errors = [str(r) for r in results if isinstance(r, BaseException)]
    if errors:
        raise AmocError("; ".join(errors))
    return results


async def _logged(coro: Awaitable[Any]) -> None:
    try:
        await coro
    except AmocError as exc:
        log.warning("%s", exc)


def _check_range(first: Any, last: Any) -> None:
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (first, last)):
        raise RunnerError("first and last must be integers")
    if first < 1 or last < first:
        raise RunnerError(f"ids {first}..{last}: need 1 <= first <= last")


def _digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()
