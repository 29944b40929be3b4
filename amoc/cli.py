"""`bin/amoc`: console, start, attach, stop, status and headless run."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from amoc import __version__, api, metrics, monitor
from amoc.cluster import settings as cluster_settings
from amoc.cluster.master import Master
from amoc.config import parse_literal
from amoc.console import LEAVE_FOREGROUND, attach, interact
from amoc.console_socket import ConsoleClient
from amoc.errors import AmocError, NodeError
from amoc.home import Home
from amoc.node import Node, running_pid, setup_logging, wait_for
from amoc.report import recorder as report_recorder
from amoc.report import thresholds
from amoc.runner import State
from amoc.status import Runner

log = logging.getLogger("amoc.cli")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0
# A node told to stop whose loop does not end in this time (a loop blocked for good) exits
# without a clean stop rather than never.
SHUTDOWN_GRACE = 60.0
# How long a headless run on a master waits for its slaves to join.
SLAVE_WAIT = 60.0
# How long the CLI waits for a node's answer before calling it busy.
ANSWER_TIMEOUT = 3.0
# Exit code of `status` when the node lives but does not answer.
NOT_ANSWERING = 4
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _not_running(home: Home) -> int:
    print(f"amoc: node {home.name!r} is not running (release {home.root})", file=sys.stderr)
    return 3


def _not_answering(home: Home, pid: int) -> int:
    busy = home.busy_for()
    how = f"busy for {busy:.0f} s" if busy is not None else f"for {ANSWER_TIMEOUT:g} s at least"
    print(
        f"node {home.name!r} running (pid {pid}), not answering ({how}): its event loop is "
        f"blocked; the log says by what: {home.log_file}"
    )
    return NOT_ANSWERING


def _stop_on_signals(node: Node, signalled: list[int]) -> None:
    """SIGTERM, SIGINT, SIGHUP: a clean stop (the run's report written); the same again, or
    a loop that does not end within SHUTDOWN_GRACE, exits at once."""

    def on_signal(signum: int, _frame: Any) -> None:
        if signalled:
            os._exit(128 + signum)
        signalled.append(signum)
        node.request_stop()

        def last_resort() -> None:
            if not node.stopped.wait(SHUTDOWN_GRACE):
                logging.getLogger("amoc.node").error(
                    "the node did not stop within %g s of %s (a blocked event loop?); "
                    "exiting without a clean stop",
                    SHUTDOWN_GRACE,
                    signal.Signals(signum).name,
                )
                os._exit(128 + signum)

        threading.Thread(target=last_resort, daemon=True).start()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)


def cmd_console(home: Home, _args: argparse.Namespace) -> int:
    """A node in the foreground with its console; Ctrl+D stops it."""
    setup_logging(home, terminal=True)
    node = Node(home)
    try:
        node.start()
    except AmocError as exc:
        print(f"amoc: {exc}", file=sys.stderr)
        return 1
    leaving = threading.Event()

    def watch_external_stop() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # Ctrl+C is readline's
        node.stopped.wait()
        if not leaving.is_set():
            print("\nthe node was stopped; leaving the console", flush=True)
            os._exit(0)

    threading.Thread(target=watch_external_stop, daemon=True).start()
    try:
        interact(node.namespace(), home.history_file, node.banner(LEAVE_FOREGROUND))
    finally:
        leaving.set()
        node.shutdown()
    return 0


def cmd_daemon(home: Home, _args: argparse.Namespace) -> int:
    """The body of `start`: a node with no terminal, until `stop` or SIGTERM."""
    setup_logging(home, terminal=False)
    node = Node(home)
    try:
        node.start()
    except AmocError as exc:
        print(f"amoc: {exc}", file=sys.stderr)
        return 1
    signalled: list[int] = []
    _stop_on_signals(node, signalled)
    while not node.stopped.wait(1.0):
        pass
    node.shutdown()
    return 128 + signalled[0] if signalled else 0


def cmd_start(home: Home, _args: argparse.Namespace) -> int:
    """Start the node in the background (never a second one under a live name)."""
    pid = home.holder()
    if pid is not None:
        busy = "" if running_pid(home) is not None else ", not answering"
        print(f"amoc: node {home.name!r} is already running (pid {pid}{busy})", file=sys.stderr)
        return 1
    home.make_dirs()
    out_path = home.log_file.with_suffix(".out")
    with open(out_path, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-P", "-m", "amoc.cli", "--name", home.name, "_daemon"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "AMOC_HOME": str(home.root)},
        )
    started = wait_for(lambda: child.poll() is not None or running_pid(home), START_TIMEOUT, 0.1)
    if child.poll() is not None or not started:
        tail = out_path.read_text(errors="replace").splitlines()[-15:]
        print(f"amoc: node {home.name!r} did not start; the end of {out_path}:", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)
        return 1
    print(f"node {home.name!r} started (pid {child.pid}); log: {home.log_file}")
    return 0


def cmd_stop(home: Home, _args: argparse.Namespace) -> int:
    """Stop the background node (SIGTERM when its loop does not answer)."""
    pid = home.holder()
    if pid is None or pid < 0:
        return _not_running(home)
    if running_pid(home) is None:
        print(f"node {home.name!r} (pid {pid}) does not answer: sending it SIGTERM")
        os.kill(pid, signal.SIGTERM)
    else:
        with ConsoleClient(home.socket) as client:
            client.request({"op": "stop"})
    if not wait_for(lambda: not _alive(pid), STOP_TIMEOUT, 0.1):
        print(f"amoc: node {home.name!r} (pid {pid}) did not stop in time", file=sys.stderr)
        return 1
    print(f"node {home.name!r} stopped")
    return 0


def cmd_status(home: Home, args: argparse.Namespace) -> int:
    """Print what runs on the node; a live node that does not answer is said busy."""
    pid = home.holder()
    if pid is None:
        return _not_running(home)
    try:
        with ConsoleClient(home.socket, timeout=ANSWER_TIMEOUT) as client:
            answer = client.request({"op": "status"}, timeout=ANSWER_TIMEOUT)
    except (NodeError, OSError, ValueError):
        return _not_answering(home, pid)
    if args.json:
        print(json.dumps(answer, indent=2, default=repr))
        return 0
    ctl = answer["controller"]
    users = ctl["users"]
    print(f"node {answer['name']!r} running (pid {answer['pid']})")
    if answer.get("cluster"):
        from amoc.dist import ClusterReply

        print("  cluster: " + repr(ClusterReply(answer["cluster"])).replace("\n", "\n  "))
        return 0
    print(f"  state: {ctl['state']}" + (f", scenario {ctl['scenario']}" if ctl["scenario"] else ""))
    print(
        f"  users: {users['running']} running, {users['pending']} pending, "
        f"{users['started']} started, {users['finished']} finished, "
        f"{users['removed']} removed, {users['failed_runs']} failed runs"
    )
    return 0


def cmd_keys(home: Home, args: argparse.Namespace) -> int:
    """Make the cluster's CURVE keys (master and nodes) in a directory."""
    from amoc.cluster import keys

    directory = Path(args.dir) if args.dir else home.root / "keys"
    try:
        written = keys.generate(directory, force=args.force)
    except AmocError as exc:
        print(f"amoc: {exc}", file=sys.stderr)
        return 1
    print(f"cluster keys in {directory}:")
    for path in written:
        print(f"  {path.name}")
    print(
        "the master needs master.key_secret and node.key; "
        "every slave needs node.key_secret and master.key"
    )
    return 0


def cmd_attach(home: Home, _args: argparse.Namespace) -> int:
    """A console on the running node."""
    if running_pid(home) is None:
        pid = home.holder()
        return _not_running(home) if pid is None else _not_answering(home, pid)
    return attach(home.socket, home.history_file)


def cmd_run(home: Home, args: argparse.Namespace) -> int:
    """Run a scenario headless for a bounded time and print its figures.

    On a node whose cluster_role is master, the run goes over the slaves (it waits for
    `--slaves` of them first) and the figures are the cluster's."""
    setup_logging(home, terminal=True)
    try:
        settings, limits = _run_options(args)
    except _Refused as exc:
        print(f"amoc: {exc}", file=sys.stderr)
        return 2
    node, code = start_node(home, args.report, settings)
    if node is None:
        return code
    run = _HeadlessRun(node, args)
    for signum in STOP_SIGNALS:
        signal.signal(signum, run.on_signal)
    try:
        final, before = run.drive(settings)
    except AmocError as exc:
        print(f"amoc: {exc}", file=sys.stderr)
        node.shutdown()
        return 128 + run.signalled[0] if run.signalled else 2
    except concurrent.futures.TimeoutError:
        print(f"amoc: the run did not stop within {STOP_TIMEOUT:g} s", file=sys.stderr)
        node.shutdown()
        return 1
    # The run's own figures: a long-lived slave's counters started before it.
    snapshot = report_recorder.since(metrics.REGISTRY.snapshot(), before)
    summary = metrics.summary(snapshot)
    report = {
        "controller": final,
        "metrics": summary,
        **_recorded(node),
        "failed": thresholds.check(limits, snapshot, summary),
    }
    node.shutdown()
    failed, bound = report["failed"], report["client_bound"]
    if args.json:
        print(json.dumps(report, indent=2, default=repr))
    else:
        _print_report(report)
        if report["report"]:
            print(f"report: {report['report']}")
    for line in failed:
        print(f"amoc: {line}", file=sys.stderr)
    if bound:
        print(f"amoc: {bound}", file=sys.stderr)
    if run.signalled:
        name = signal.Signals(run.signalled[0]).name
        print(f"amoc: the run was ended early by {name}", file=sys.stderr)
        return 128 + run.signalled[0]
    return 1 if failed else 0


def start_node(home: Home, report: str | None, settings: dict[str, Any]) -> tuple[Node | None, int]:
    """A started node for a headless command (its start-only settings taken out of
    `settings`), or None and the exit code: 2 for a refused setting, 1 for a failure."""
    node = Node(home)
    if report:
        node.config.set("report_dir", str(Path(report).resolve()), strict=False)
    try:
        _set_start_only(node, settings)
    except AmocError as exc:
        print(f"amoc: {exc}", file=sys.stderr)
        return None, 2
    try:
        node.start()
    except AmocError as exc:
        print(f"amoc: {exc}", file=sys.stderr)
        return None, 2 if refused_at_start(exc) else 1
    return node, 0


def _capacity_plan(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The search's Plan and its settings from the command line, or CapacityError."""
    from amoc import capacity

    try:
        settings, _limits = _run_options(_as_run(args))
    except _Refused as exc:
        raise capacity.CapacityError(str(exc)) from None
    plan = capacity.make_plan(
        args.scenario, users=args.users, rate=args.rate, thresholds=args.thresholds or [],
        hold=args.hold, settle=args.settle, ramp=args.ramp, cooldown=args.cooldown,
        confirm=args.confirm,
        resolution=args.resolution,
        arrival=args.arrival, first=args.first,
    )  # fmt: skip
    return plan, settings


def _as_run(args: argparse.Namespace) -> argparse.Namespace:
    """find-capacity's options as `run`'s (the --set values, checked the same way)."""
    return argparse.Namespace(
        set=args.set, rate=None, fail_if=[], max_error_ratio=None, max_ttd_p99=None,
        users=1, duration=1.0, slaves=args.slaves,
    )  # fmt: skip


def cmd_find_capacity(home: Home, args: argparse.Namespace) -> int:
    """Step the load up, hold, bisect: the largest load that held and the first limit."""
    import dataclasses

    from amoc import capacity, health

    setup_logging(home, terminal=True)
    try:
        plan, settings = _capacity_plan(args)
    except capacity.CapacityError as exc:
        print(f"amoc: {exc}", file=sys.stderr)
        return 2
    node, code = start_node(home, args.report, settings)
    if node is None:
        return code
    specs = node.monitor.specs if node.monitor is not None else ()
    plan = dataclasses.replace(plan, settings=settings)
    run = _HeadlessRun(node, args)
    bench = capacity.Bench(
        run.runner, node.call, node.read, node.sample, node.recorder, specs,
        health.Bounds.from_config(node.config), run.ended, node.config,
    )  # fmt: skip
    for signum in STOP_SIGNALS:
        signal.signal(signum, run.on_signal)
    try:
        if node.master is not None:
            run._wait_for_slaves(node.master, args.slaves)
        outcome = capacity.search(plan, bench, log=lambda line: log.info("%s", line))
    except AmocError as exc:
        print(f"amoc: {exc}", file=sys.stderr)
        node.shutdown()
        return 2
    where = node.recorder.default_dir if node.recorder else home.root / "reports"
    written = capacity.write(outcome, Path(node.config.get("report_dir") or where))
    node.shutdown()
    print(json.dumps(outcome.to_dict(), indent=2, default=str) if args.json else repr(outcome))
    print(f"capacity report: {written}")
    if run.signalled:
        return 128 + run.signalled[0]
    return outcome.exit_code()


def _recorded(node: Node) -> dict[str, Any]:
    """What the node's recorder kept of the run: the report, the client-bound verdict, the
    monitored servers."""
    rec = node.recorder
    if rec is None:
        return {"report": None, "client_bound": None, "monitored": {}}
    return {
        "report": str(rec.last_report) if rec.last_report else None,
        "client_bound": node.read(rec.client_bound),
        "monitored": node.read(rec.monitored),
    }


def refused_at_start(exc: BaseException) -> bool:
    """Whether a node failed to start on a bad setting (exit 2), not a fault (exit 1)."""
    from amoc.monitor import MonitorError

    return isinstance(exc.__cause__, MonitorError) or isinstance(exc, MonitorError)


class _Refused(Exception):
    """A bad option of `amoc run` (exit 2)."""


def _run_options(args: argparse.Namespace) -> tuple[dict[str, Any], list[Any]]:
    """The run's settings and thresholds from the command line, or _Refused saying why."""
    settings: dict[str, Any] = {}
    for item in args.set or []:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise _Refused(f"--set expects NAME=VALUE, got {item!r}")
        settings[name] = parse_literal(raw)
    if args.rate is not None:
        if not math.isfinite(args.rate) or args.rate <= 0:
            raise _Refused("--rate must be > 0 users per second")
        settings["interarrival"] = 1000.0 / args.rate
    expressions = list(args.fail_if or [])
    # Any failed login, error reply or lost message fails a run unless the user allows some.
    max_errors = 0.0 if args.max_error_ratio is None else args.max_error_ratio
    if not 0 <= max_errors <= 1:
        raise _Refused("--max-error-ratio must be between 0 and 1")
    expressions.append(f"error_ratio <= {max_errors}")
    if args.max_ttd_p99 is not None:
        expressions.append(f"xmpp.ttd_ms.p99 <= {args.max_ttd_p99}")
    try:
        limits = [thresholds.parse(e) for e in expressions]
    except thresholds.ThresholdError as exc:
        raise _Refused(str(exc)) from None
    if args.users < 1 or not math.isfinite(args.duration) or args.duration <= 0:
        raise _Refused("--users must be >= 1 and --duration a finite number of seconds > 0")
    if args.slaves < 0:
        raise _Refused("--slaves must be >= 0")
    return settings, limits


def _set_start_only(node: Node, settings: dict[str, Any]) -> None:
    """Settings read when the node starts (prometheus_*, graphite_*, api_*, cluster_*,
    monitor_*) go in before it; they leave `settings`."""
    node.config.declare(
        [*metrics.PARAMETERS, *api.PARAMETERS, *cluster_settings.PARAMETERS, *monitor.PARAMETERS]
    )
    declared = node.config.known()
    for name in [n for n in settings if getattr(declared.get(n.lower()), "start_only", False)]:
        node.config.set(name, settings.pop(name))


class _HeadlessRun:
    """One bounded run on a started node: its controller, or its master's cluster."""

    def __init__(self, node: Node, args: argparse.Namespace) -> None:
        self.node = node
        self.args = args
        runner: Runner | None = node.master if node.master is not None else node.controller
        assert runner is not None
        self.runner = runner
        self.signalled: list[int] = []
        self.ended = threading.Event()

    def on_signal(self, signum: int, _frame: Any) -> None:
        """A signal ends the run early; the stop still writes its report."""
        if self.signalled:
            os._exit(128 + signum)  # a second signal: no more waiting
        self.signalled.append(signum)
        self.ended.set()
        with contextlib.suppress(RuntimeError):  # a start under way is called off
            asyncio.run_coroutine_threadsafe(_stop_if_starting(self.node), self.node.loop)

    def drive(self, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """do, wait for the end or the deadline, stop: the final status and the metrics
        from before the run."""
        node, args = self.node, self.args
        if node.master is not None:
            self._wait_for_slaves(node.master, args.slaves)
        before = node.read(metrics.REGISTRY.snapshot, timeout=ANSWER_TIMEOUT)
        first = args.first
        last = first + args.users - 1
        node.call(self.runner.do(args.scenario, first, last, settings, args.comment))
        log.info("headless run of %s: ids %d..%d for at most %g s", args.scenario, first,
                 last, args.duration)  # fmt: skip
        deadline = time.monotonic() + args.duration
        while not self.ended.wait(0.2) and time.monotonic() < deadline:
            try:
                # Read in the loop that owns the runner, never from this thread.
                state = node.read(self.runner.status, timeout=ANSWER_TIMEOUT).state
            except concurrent.futures.TimeoutError:
                continue  # a busy loop (the watchdog logs it): keep to the deadline
            if state not in ("running", "starting"):
                break
        return node.call(self.runner.stop(), timeout=STOP_TIMEOUT).to_dict(), before

    def _wait_for_slaves(self, master: Master, count: int) -> None:
        wanted = max(1, count)
        deadline = time.monotonic() + SLAVE_WAIT
        while len(self.node.read(master.registry.up, timeout=ANSWER_TIMEOUT)) < wanted:
            if self.ended.is_set() or time.monotonic() > deadline:
                up = len(self.node.read(master.registry.up, timeout=ANSWER_TIMEOUT))
                raise AmocError(
                    f"{up} of the {wanted} slaves wanted (--slaves) joined within "
                    f"{SLAVE_WAIT:g} s: are they started, with this cluster's keys?"
                )
            time.sleep(0.2)


async def _stop_if_starting(node: Node) -> None:
    ctl = node.controller
    if ctl is not None and ctl.state is State.STARTING:
        await ctl.stop()


def _print_report(report: dict[str, Any]) -> None:
    ctl = report["controller"]
    users, figures = ctl["users"], report["metrics"]
    if "placed" in users:  # a cluster's run: its users' counts are the merged metrics
        print(
            f"scenario {ctl['scenario']} on {ctl['nodes']['up']} slaves: {users['placed']} "
            f"users placed, {figures.get('users.started', 0)} started, "
            f"{figures.get('users.finished', 0)} finished, {figures.get('users.failed', 0)} "
            f"failed runs, {figures.get('scenario.runs', 0)} runs, {users['lost']} lost"
        )
    else:
        print(
            f"scenario {ctl['scenario']}: {users['started']} users started, "
            f"{users['finished']} finished, {users['failed_runs']} failed runs, "
            f"{users['runs']} runs"
        )
    for label, entry in sorted(report.get("monitored", {}).items()):
        print(f"  server {label} ({entry['what']}): {entry['samples']} samples, {entry['status']}")
    if report.get("client_bound"):
        print(report["client_bound"])
    for name, value in sorted(report["metrics"].items()):
        if isinstance(value, dict):
            figures = ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()
            )
            print(f"  {name}: {figures}")
        else:
            print(f"  {name}: {value}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = argparse.ArgumentParser(prog="amoc", description="amoc: XMPP load tests")
    top.add_argument("--name", help="node name (default: $AMOC_NODE_NAME or 'amoc')")
    top.add_argument("--version", action="version", version=f"amoc {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("console", help="start a node in the foreground with a console")
    sub.add_parser("start", help="start a node in the background")
    sub.add_parser("attach", help="open a console on the running node")
    sub.add_parser("stop", help="stop the running node")
    status = sub.add_parser("status", help="show what runs on the node")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    run = sub.add_parser("run", help="run a scenario headless for a bounded time")
    run.add_argument("scenario")
    run.add_argument("--users", type=int, required=True, help="number of users")
    run.add_argument("--first", type=int, default=1, help="first user id (default 1)")
    run.add_argument("--duration", type=float, required=True, help="seconds, at most")
    run.add_argument("--rate", type=float, help="users started per second")
    run.add_argument("--comment", default="", help="annotation comment")
    run.add_argument("--set", action="append", metavar="NAME=VALUE", help="a config value")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.add_argument("--report", metavar="DIR", help="write the report under DIR")
    run.add_argument(
        "--threshold",
        dest="fail_if",
        action="append",
        metavar="COND",
        help="a condition the run must meet, e.g. 'xmpp.ttd_ms.p99 < 50' (exit 1 otherwise)",
    )
    run.add_argument(
        "--max-error-ratio",
        type=float,
        help="fail above this error ratio (default 0: any failed login, error reply or lost "
        "message fails the run)",
    )
    run.add_argument("--max-ttd-p99", type=float, help="fail above this p99 TTD (ms)")
    run.add_argument(
        "--slaves",
        type=int,
        default=1,
        help="on a cluster master: wait for this many slaves before starting (default 1)",
    )
    _capacity_parser(sub)
    keys = sub.add_parser("keys", help="make the cluster's CURVE keys")
    keys.add_argument("dir", nargs="?", help="where (default: the release's keys/)")
    keys.add_argument("--force", action="store_true", help="replace existing keys")
    sub.add_parser("_daemon", help=argparse.SUPPRESS)
    return top


def _capacity_parser(sub: Any) -> None:
    find = sub.add_parser(
        "find-capacity",
        help="raise the load step by step until a threshold breaks, then bisect",
        description="Each step is a fresh run at one load, ramped up, settled and held; the "
        "thresholds are checked over the hold. Exit 0: a capacity was found, 1: even the "
        "first step failed, 2: bad input.",
    )
    find.add_argument("scenario")
    find.add_argument("--users", metavar="START:STEP:MAX", help="users per step")
    find.add_argument(
        "--rate", metavar="START:STEP:MAX", help="users arriving per second (user_rate)"
    )
    find.add_argument(
        "--thresholds", "--threshold", action="append", metavar="'COND; COND'",
        help="limits, e.g. 'xmpp.ttd_ms.p99 < 5; server.cpu < 90' (error_ratio <= 0.01 is "
        "added unless given)",
    )  # fmt: skip
    find.add_argument("--hold", default="60s", help="the steady window of a step (60s)")
    find.add_argument("--settle", default="2s", help="after the ramp, before the hold (2s)")
    find.add_argument("--ramp", default="10s", help="--rate: arrivals before the hold (10s)")
    find.add_argument("--cooldown", default="5s", help="between two steps (5s)")
    find.add_argument(
        "--confirm", type=int, default=1, help="run a failed step again this many times (1)"
    )
    find.add_argument("--resolution", type=float, help="bisect down to this (a quarter step)")
    find.add_argument("--arrival", type=float, help="--users: users started per second (100)")
    find.add_argument("--first", type=int, default=1, help="first user id (default 1)")
    find.add_argument("--set", action="append", metavar="NAME=VALUE", help="a config value")
    find.add_argument("--report", metavar="DIR", help="write the reports under DIR")
    find.add_argument("--json", action="store_true", help="print the outcome as JSON")
    find.add_argument("--slaves", type=int, default=1, help="on a master: slaves to wait for")


COMMANDS = {
    "console": cmd_console,
    "start": cmd_start,
    "attach": cmd_attach,
    "stop": cmd_stop,
    "status": cmd_status,
    "run": cmd_run,
    "keys": cmd_keys,
    "find-capacity": cmd_find_capacity,
    "_daemon": cmd_daemon,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of bin/amoc."""
    args = parser().parse_args(argv)
    home = Home.discover(args.name)
    try:
        return COMMANDS[args.command](home, args)
    except NodeError as exc:
        print(f"amoc: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
