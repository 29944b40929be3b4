"""`bin/amoc`: console, start, attach, stop, status and headless run."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from amoc import __version__, metrics
from amoc.config import parse_literal
from amoc.console import LEAVE_FOREGROUND, attach, interact
from amoc.control import Client
from amoc.errors import AmocError, NodeError
from amoc.home import Home
from amoc.node import Node, running_pid, setup_logging, wait_for
from amoc.report import thresholds

START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0


def _not_running(home: Home) -> int:
    print(f"amoc: node {home.name!r} is not running (release {home.root})", file=sys.stderr)
    return 3


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
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: node.request_stop())
    while not node.stopped.wait(1.0):
        pass
    node.shutdown()
    return 0


def cmd_start(home: Home, _args: argparse.Namespace) -> int:
    """Start the node in the background."""
    pid = running_pid(home)
    if pid is not None:
        print(f"amoc: node {home.name!r} is already running (pid {pid})", file=sys.stderr)
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
    """Stop the background node."""
    pid = running_pid(home)
    if pid is None:
        return _not_running(home)
    with Client(home.socket) as client:
        client.request({"op": "stop"})
    if not wait_for(lambda: not _alive(pid), STOP_TIMEOUT, 0.1):
        print(f"amoc: node {home.name!r} (pid {pid}) did not stop in time", file=sys.stderr)
        return 1
    print(f"node {home.name!r} stopped")
    return 0


def cmd_status(home: Home, args: argparse.Namespace) -> int:
    """Print what runs on the node."""
    if running_pid(home) is None:
        return _not_running(home)
    with Client(home.socket) as client:
        answer = client.request({"op": "status"})
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
        return _not_running(home)
    return attach(home.socket, home.history_file)


def cmd_run(home: Home, args: argparse.Namespace) -> int:
    """Run a scenario headless for a bounded time and print its figures."""
    setup_logging(home, terminal=True)
    settings: dict[str, Any] = {}
    for item in args.set or []:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            print(f"amoc: --set expects NAME=VALUE, got {item!r}", file=sys.stderr)
            return 2
        settings[name] = parse_literal(raw)
    if args.rate is not None:
        if args.rate <= 0:
            print("amoc: --rate must be > 0 users per second", file=sys.stderr)
            return 2
        settings["interarrival"] = 1000.0 / args.rate
    expressions = list(args.fail_if or [])
    # Any failed login, error reply or lost message fails a run unless the user allows some.
    max_errors = 0.0 if args.max_error_ratio is None else args.max_error_ratio
    if not 0 <= max_errors <= 1:
        print("amoc: --max-error-ratio must be between 0 and 1", file=sys.stderr)
        return 2
    expressions.append(f"error_ratio <= {max_errors}")
    if args.max_ttd_p99 is not None:
        expressions.append(f"xmpp.ttd_ms.p99 <= {args.max_ttd_p99}")
    try:
        limits = [thresholds.parse(e) for e in expressions]
    except thresholds.ThresholdError as exc:
        print(f"amoc: {exc}", file=sys.stderr)
        return 2
    if args.users < 1 or args.duration <= 0:
        print("amoc: --users must be >= 1 and --duration > 0 seconds", file=sys.stderr)
        return 2
    node = Node(home)
    if args.report:
        node.config.set("report_dir", str(Path(args.report).resolve()), strict=False)
    try:
        node.start()
    except AmocError as exc:
        print(f"amoc: {exc}", file=sys.stderr)
        return 1
    ctl = node.controller
    assert ctl is not None
    try:
        first = args.first
        node.call(ctl.do(args.scenario, first, first + args.users - 1, settings, args.comment))
        deadline = time.monotonic() + args.duration
        while time.monotonic() < deadline and ctl.status()["state"] == "running":
            time.sleep(0.2)
        final = node.call(ctl.stop())
    except AmocError as exc:
        print(f"amoc: {exc}", file=sys.stderr)
        node.shutdown()
        return 2
    snapshot = metrics.REGISTRY.snapshot()
    summary = metrics.summary(snapshot)
    written = node.recorder.last_report if node.recorder else None
    node.shutdown()
    failed = thresholds.check(limits, snapshot, summary)
    report = {
        "controller": final,
        "metrics": summary,
        "report": str(written) if written else None,
        "failed": failed,
    }
    if args.json:
        print(json.dumps(report, indent=2, default=repr))
    else:
        _print_report(report)
        if written:
            print(f"report: {written}")
    for line in failed:
        print(f"amoc: {line}", file=sys.stderr)
    return 1 if failed else 0


def _print_report(report: dict[str, Any]) -> None:
    ctl = report["controller"]
    users = ctl["users"]
    print(
        f"scenario {ctl['scenario']}: {users['started']} users started, "
        f"{users['finished']} finished, {users['failed_runs']} failed runs, {users['runs']} runs"
    )
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
    keys = sub.add_parser("keys", help="make the cluster's CURVE keys")
    keys.add_argument("dir", nargs="?", help="where (default: the release's keys/)")
    keys.add_argument("--force", action="store_true", help="replace existing keys")
    sub.add_parser("_daemon", help=argparse.SUPPRESS)
    return top


COMMANDS = {
    "console": cmd_console,
    "start": cmd_start,
    "attach": cmd_attach,
    "stop": cmd_stop,
    "status": cmd_status,
    "run": cmd_run,
    "keys": cmd_keys,
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
