"""A node: one process, one event loop, a controller, metrics and a console socket."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import logging.handlers
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from amoc import __version__, api, capacity, health, metrics, monitor, user_errors, watchdog
from amoc import scenario as scenario_mod
from amoc.cluster import settings as cluster_settings
from amoc.cluster.master import Master
from amoc.cluster.slave import SlaveLink
from amoc.config import Config, amoc_config
from amoc.console import BANNER, LEAVE_ATTACHED, MASTER_BANNER, ConsoleSession, install_streams
from amoc.console_socket import Connection, ConsoleClient, serve
from amoc.dist import AmocDist, NodeTable
from amoc.errors import AmocError, NodeError
from amoc.home import Home
from amoc.local import AmocLocal
from amoc.report import live
from amoc.report import recorder as report_recorder
from amoc.runner import Controller

log = logging.getLogger("amoc.node")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where installed (13-20% less CPU per message), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def tune_gc() -> None:
    """Collect young objects less often: with many users the collector's passes dominate.

    Measured with 2000 XMPP users (bench/bench_xmpp.py): logins/s up 1.5-2x, p99 TTD down.
    """
    gc.set_threshold(100_000, 50, 100)


class _OneLine(logging.Formatter):
    """Terminal format: one line per record, the traceback left to the log file."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"[{record.levelname.lower()}] {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f": {type(exc).__name__}: {exc} (traceback in the log)"
        return text


def setup_logging(home: Home, terminal: bool) -> None:
    """Everything to the node's log file; warnings also to the terminal when there is one."""
    home.make_dirs()
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    to_file = logging.handlers.RotatingFileHandler(home.log_file, maxBytes=50 << 20, backupCount=3)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(to_file)
    if terminal:
        to_terminal = logging.StreamHandler()
        to_terminal.setLevel(logging.WARNING)
        to_terminal.setFormatter(_OneLine())
        root.addHandler(to_terminal)


def running_pid(home: Home) -> int | None:
    """The pid of the node answering on `home`'s socket, or None."""
    try:
        with ConsoleClient(home.socket, timeout=3) as client:
            answer = client.request({"op": "hello"}, timeout=3)
    except (NodeError, OSError, ValueError):
        return None
    pid = answer.get("pid")
    return pid if isinstance(pid, int) else None


class Node:
    """A node's event loop in its own thread, driven from the main thread."""

    def __init__(self, home: Home, config: Config = amoc_config) -> None:
        self.home = home
        self.config = config
        self.loop = new_event_loop()
        self.controller: Controller | None = None
        self.metrics_service: Any = None
        self.master: Master | None = None
        self.slave: SlaveLink | None = None
        self.recorder: report_recorder.Recorder | None = None
        self.monitor: monitor.Monitor | None = None  # the servers under test (master, local)
        self.health: health.LoopHealth | None = None
        self.stopped = threading.Event()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._lock_fd: int | None = None
        self.watchdog: watchdog.Watchdog | None = None

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread and wait until the node serves its socket."""
        try:
            self._lock_fd = self.home.lock()
        except BlockingIOError:
            pid = self.home.holder()
            busy = "" if running_pid(self.home) is not None else ", not answering"
            raise NodeError(
                f"node {self.home.name!r} is already running (pid {pid}{busy}); "
                "use `bin/amoc attach` or `bin/amoc stop`"
            ) from None
        try:
            self._start()
        except BaseException:
            self._release()
            raise
        log.info("node %s started (pid %d, amoc %s)", self.home.name, os.getpid(), __version__)

    def _start(self) -> None:
        self.config.load_app(self.home.app_config)
        self.config.declare(metrics.PARAMETERS)
        self.config.declare(api.PARAMETERS)
        self.config.declare(cluster_settings.PARAMETERS)
        self.config.declare(report_recorder.PARAMETERS)
        self.config.declare(watchdog.PARAMETERS)
        self.config.declare(user_errors.PARAMETERS)
        self.config.declare(health.PARAMETERS)
        self.config.declare(monitor.PARAMETERS)
        install_streams()
        tune_gc()
        self._thread = threading.Thread(target=self._run, name="amoc-loop", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise NodeError(f"node failed to start: {self._failure}") from self._failure
        self.watchdog = watchdog.Watchdog(self.loop, self._thread, self.home.busy_file, self.config)
        self.watchdog.start()

    def _release(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.home.pidfile.unlink()
            os.close(self._lock_fd)
            self._lock_fd = None

    def request_stop(self) -> None:
        """Ask the node to stop (from any thread)."""
        if self._stop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._stop.set)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the node and wait for its loop to end."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
        self._release()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run a coroutine in the node's loop and wait for its result (not from the loop)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise AmocError("the console verbs cannot be called from inside the event loop")
        if self.loop.is_closed() or self.stopped.is_set():
            coro.close()
            raise NodeError("the node is stopped")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def read(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Call `fn` (a read of loop-owned state) in the node's loop; its result."""
        return self.call(_now(fn), timeout)

    def namespace(self) -> dict[str, Any]:
        """What a console sees."""
        assert self.controller is not None
        local = AmocLocal(self.controller, self.call, self._searcher(self.controller))

        def status() -> dict[str, Any]:
            """What runs on this node."""
            return local.status()

        def scenarios() -> list[str]:
            """The scenarios this node can run."""
            return scenario_mod.available(self.scenario_dirs())

        def watch(seconds: float | None = None) -> None:
            """A live table of users, rates, TTD and errors, per node; Ctrl+C ends it."""
            bounds = health.Bounds.from_config(self.config)
            live.watch(lambda: self.call(self._sample_now()), seconds, bounds=bounds)

        def report() -> str | None:
            """Where the last run's report is (written when a scenario stops)."""
            last = self.recorder.last_report if self.recorder else None
            return str(last) if last else None

        space: dict[str, Any] = {
            "amoc_local": local,
            "amoc_config": self.config,
            "status": status,
            "scenarios": scenarios,
            "metrics": metrics,
            "watch": watch,
            "report": report,
        }
        if self.master is not None:
            dist = AmocDist(self.master, self.call, self._searcher(self.master))

            def cluster_status() -> dict[str, Any]:
                """The cluster: the run, every node, the totals."""
                return dist.status()

            def nodes() -> NodeTable:
                """Every slave node: up or down, users, errors, last heartbeat."""
                return dist.nodes()

            space.update(amoc_dist=dist, status=cluster_status, nodes=nodes)
        return space

    def _searcher(self, runner: Any) -> Callable[..., Any]:
        """find_capacity over `runner` (this node's controller, or the master's cluster)."""

        def find_capacity(scenario: str, thresholds: Any, **options: Any) -> Any:
            plan = capacity.make_plan(scenario, thresholds=thresholds, **options)
            specs = self.monitor.specs if self.monitor is not None else ()
            bench = capacity.Bench(
                runner, self.call, self.read, self.sample, self.recorder, specs,
                health.Bounds.from_config(self.config), config=self.config,
            )  # fmt: skip
            outcome = capacity.search(plan, bench, log=print)
            base = self.recorder.default_dir if self.recorder else self.home.root / "reports"
            capacity.write(outcome, Path(self.config.get("report_dir") or base))
            return outcome

        return find_capacity

    def scenario_dirs(self) -> list[Any]:
        """Uploaded scenarios first (they may replace bundled ones), then bundled ones."""
        return [self.home.uploaded_dir, self.home.scenarios_dir]

    def banner(self, leave: str) -> str:
        """The console's greeting."""
        text = MASTER_BANNER if self.master is not None else BANNER
        return text.format(name=self.home.name, pid=os.getpid(), leave=leave)

    # -- inside the loop thread ---------------------------------------------------------

    def _run(self) -> None:
        # Ctrl+C and SIGTERM belong to the main thread (the console's readline, the daemon's
        # wait); threads started from here (executors, scenario workers) inherit the mask.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to start() or logged
            if not self._ready.is_set():
                self._failure = exc
            else:
                log.exception("the node's loop failed")
        finally:
            self._ready.set()
            self.stopped.set()
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self.controller = Controller(self.scenario_dirs(), self.config)
        if self.config.get("cluster_role") != "slave":  # the master samples the servers
            self.monitor = monitor.Monitor.from_config(self.config)
            if self.monitor is not None:
                await self.monitor.check()  # a name that matches nothing: refused here
        self.health = health.LoopHealth(metrics.REGISTRY)
        self.health.start()
        self.metrics_service = metrics.MetricsService(self.config)
        await self.metrics_service.start()
        await self._join_cluster()
        # /metrics labels every series by node: a slave's by its cluster name, a master's
        # slaves by theirs.
        own = self.slave.name if self.slave is not None else self.home.name
        metrics.REGISTRY.label_with(own, self._by_node)
        api_server = await api.start_node_api(self.config, self.controller, self.home, self.master)
        if self.slave is None:  # the master (or a local node) reports the run
            self.recorder = report_recorder.Recorder(
                self.sample, self.config, self.home.root / "reports", self.home.name,
                monitor=self.monitor,
            )  # fmt: skip
            self.recorder.start()
        if self.monitor is not None:
            self.monitor.start()
            metrics.REGISTRY.collect_with(self.monitor.exposition)
        server = await serve(self.home.socket, self._handle)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            log.info("node %s stopping", self.home.name)
            server.close()
            if api_server is not None:
                await api_server.stop()
            if self.slave is not None:
                await self.slave.stop()
            if self.master is not None:
                await self.master.close()
            # The run stops before the recorder: its report is written (SIGTERM included).
            await self.controller.close()
            if self.recorder is not None:
                await self.recorder.stop()
            await self.metrics_service.stop()
            metrics.REGISTRY.label_with("", None)
            metrics.REGISTRY.collect_with(None)
            if self.monitor is not None:
                await self.monitor.stop()
            self.health.stop()
            with contextlib.suppress(FileNotFoundError):
                self.home.socket.unlink()

    def sample(self) -> dict[str, Any]:
        """What the live view and the report need now (call it in the loop)."""
        if self.master is not None:
            cluster = self.master.sample()
            nodes, targets, scenario = cluster["nodes"], cluster["targets"], cluster["scenario"]
            state = cluster["state"]
        else:
            assert self.controller is not None
            nodes = {self.home.name: metrics.REGISTRY.local_snapshot()}
            targets = {self.home.name: len(self.controller.user_ids())}
            scenario = self.controller.scenario.name if self.controller.scenario else None
            state = self.controller.state.value
        return {
            "time": time.time(),
            "nodes": nodes,
            "targets": targets,
            "scenario": scenario,
            "state": state,
            "monitor": self.monitor.view() if self.monitor is not None else {},
        }

    def _by_node(self) -> dict[str, Any]:
        """The other nodes' metrics by name (a master's slaves) and the scenario, for /metrics."""
        if self.master is not None:
            cluster = self.master.sample()
            return {"nodes": cluster["nodes"], "scenario": cluster["scenario"]}
        ctl = self.controller
        return {"nodes": {}, "scenario": ctl.scenario.name if ctl and ctl.scenario else None}

    async def _sample_now(self) -> dict[str, Any]:
        return self.sample()

    async def _join_cluster(self) -> None:
        assert self.controller is not None
        role = self.config.get("cluster_role")
        if role == "local":
            return
        keys_dir = Path(self.config.get("cluster_keys") or self.home.root / "keys")
        if role == "master":
            self.master = Master(self.config, keys_dir, self.scenario_dirs())
            await self.master.start()
        else:
            name = f"{self.home.name}@{socket.gethostname()}"
            self.slave = SlaveLink(
                name, self.controller, self.config, keys_dir, self.home.uploaded_dir
            )
            await self.slave.start()

    async def _handle(self, request: dict[str, Any], conn: Connection) -> dict[str, Any] | None:
        assert self.controller is not None
        op = request.get("op")
        if op == "hello":
            return {"name": self.home.name, "pid": os.getpid(), "version": __version__}
        if op == "status":
            return {
                "name": self.home.name,
                "pid": os.getpid(),
                "controller": self.controller.status().to_dict(),
                "metrics": metrics.summary(metrics.REGISTRY.snapshot()),
                "cluster": self.master.status().to_dict() if self.master is not None else None,
            }
        if op == "sample":
            return {"sample": self.sample()}
        if op == "stop":
            asyncio.get_running_loop().call_later(0.05, self._stop_soon)
            return {"ok": True}
        if op == "console":
            conn.session = ConsoleSession(self.namespace())
            return {"ok": True, "banner": self.banner(LEAVE_ATTACHED)}
        session: ConsoleSession | None = conn.session
        if op in ("line", "complete", "reset") and session is None:
            return {"error": "send {'op': 'console'} first"}
        assert session is not None
        if op == "line":
            line = request.get("line")
            if not isinstance(line, str):
                return {"error": "'line' must be a string"}
            out, more = await asyncio.get_running_loop().run_in_executor(None, session.push, line)
            return {"out": out, "more": more}
        if op == "complete":
            text, state = request.get("text", ""), request.get("state", 0)
            if not isinstance(text, str) or not isinstance(state, int):
                return {"error": "'text' must be a string and 'state' an integer"}
            return {"match": session.complete(text, state)}
        if op == "reset":
            session.reset()
            return {"ok": True}
        return {"error": f"unknown op {op!r}"}

    def _stop_soon(self) -> None:
        if self._stop is not None:
            self._stop.set()


async def _now(read: Callable[[], Any]) -> Any:
    return read()


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
