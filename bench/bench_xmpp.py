"""XMPP one-to-one workload: amoc.xmpp's lean client against naive slixmpp, one process each.

    .venv/bin/python bench/bench_xmpp.py                  # 2000 amoc users, 100 naive ones
    .venv/bin/python bench/bench_xmpp.py --users 200 --naive-users 50 --messages 5

Starts its own ejabberd with tools/xmpp_server.py (own name and ports), registers the users,
runs each case in a child process (so memory and CPU are its own), stops the server, and
prints one summary line per case plus the ratios. Figures per case:

- logins/s: users / time from the first login attempt until all are logged in;
- RSS per user: (RSS once all are logged in - RSS before the first login) / users;
- CPU-s per 1000 messages: process CPU over the window in which every user is online and
  chatting, per 1000 messages sent + received in that window;
- TTD p50 / p99: time to delivery, receiver side, same clock.

The naive case is what slixmpp gives by default, as in the first row of FACTS.md: each
client makes its own SSLContext, tries direct TLS first, runs on the stock asyncio loop,
and uses slixmpp's stanza API (send_message, the 'message' event). Every loop here is
bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERVER = [sys.executable, str(ROOT / "tools" / "xmpp_server.py")]


# -- measuring ------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds() -> float:
    """User + system CPU of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


class Probe:
    """Watches one case: when all users are online, RSS then, CPU and messages in a window."""

    def __init__(
        self,
        users: int,
        logins: Callable[[], int],
        failures: Callable[[], int],
        messages: Callable[[], int],
        session_s: float,
    ) -> None:
        self.users, self.logins, self.failures, self.messages = users, logins, failures, messages
        self.session_s = session_s
        self.result: dict[str, Any] = {}

    async def run(self, deadline_s: float) -> None:
        loop = asyncio.get_running_loop()
        rss0 = rss_bytes()
        t0 = loop.time()
        end = t0 + deadline_s
        while self.logins() + self.failures() < self.users and loop.time() < end:
            await asyncio.sleep(0.02)
        t_all = loop.time()
        self.result["login_s"] = t_all - t0
        self.result["logins_ok"] = self.logins()
        await asyncio.sleep(0.3)
        self.result["rss_per_user_kib"] = (rss_bytes() - rss0) / max(1, self.logins()) / 1024
        # Everyone is chatting from t_all until the first user's session ends.
        window_end = t0 + self.session_s - 0.5
        if window_end - loop.time() < 2.0:
            self.result["window_s"] = 0.0
            return
        c0, m0, w0 = cpu_seconds(), self.messages(), loop.time()
        await asyncio.sleep(window_end - loop.time())
        c1, m1, w1 = cpu_seconds(), self.messages(), loop.time()
        self.result["window_s"] = w1 - w0
        self.result["window_msgs"] = m1 - m0
        self.result["cpu_per_1000"] = (c1 - c0) / max(1, m1 - m0) * 1000


# -- the amoc case --------------------------------------------------------------------------


async def amoc_case(args: argparse.Namespace) -> dict[str, Any]:
    from amoc import metrics
    from amoc.runner import Controller, State

    def count(name: str) -> int:
        return int(metrics.counter(name).value)

    settings = {
        "xmpp_host": args.host,
        "xmpp_port": args.port,
        "xmpp_domain": args.domain,
        "xmpp_sasl": "PLAIN",  # what Tsung does; AUTO would pick SCRAM
        "messages_per_user": args.messages,
        "message_interval": args.interval,
        "receive_timeout": 30_000,
        "interarrival": args.interarrival,
        "repeat_num": 1,
    }
    probe = Probe(
        args.users,
        lambda: count("xmpp.logins.ok"),
        lambda: count("xmpp.logins.failed"),
        lambda: count("xmpp.messages.sent") + count("xmpp.messages.received"),
        args.messages * args.interval / 1000.0,
    )
    ctl = Controller(scenario_dirs=[ROOT / "scenarios"])
    watcher = asyncio.create_task(probe.run(args.deadline))
    ids = list(range(args.first, args.first + args.users))
    await ctl.do("xmpp_one_to_one", ids[0], ids[-1], settings=settings)
    loop = asyncio.get_running_loop()
    end = loop.time() + args.deadline
    while ctl.status()["state"] != State.FINISHED.value and loop.time() < end:
        await asyncio.sleep(0.1)
    finished = ctl.status()["state"] == State.FINISHED.value
    await watcher
    await ctl.close()
    ttd = metrics.histogram("xmpp.ttd_ms")
    return {
        **probe.result,
        "finished": finished,
        "sent": count("xmpp.messages.sent"),
        "received": count("xmpp.messages.received"),
        "ttd_p50": ttd.percentile(50),
        "ttd_p99": ttd.percentile(99),
    }


# -- the naive slixmpp case -----------------------------------------------------------------


async def naive_case(args: argparse.Namespace) -> dict[str, Any]:
    from slixmpp import ClientXMPP

    totals = {"ok": 0, "failed": 0, "sent": 0, "received": 0}
    ttd: list[float] = []
    interval = args.interval / 1000.0

    async def user(uid: int) -> None:
        peer = uid + 1 if (uid - args.first) % 2 == 0 else uid - 1
        client = ClientXMPP(
            f"user_{uid}@{args.domain}/naive",
            f"password_{uid}",
            plugin_config={"feature_mechanisms": {"unencrypted_plain": True}},
        )
        loop = asyncio.get_running_loop()
        online: asyncio.Future[None] = loop.create_future()
        got = 0
        done = asyncio.Event()

        def on_session(_event: Any) -> None:
            if not online.done():
                online.set_result(None)

        def on_message(msg: Any) -> None:
            nonlocal got
            now = time.time_ns() // 1000
            body = msg["body"]
            if body.startswith("ts:"):
                ttd.append((now - int(body.split(":")[1])) / 1000.0)
            got += 1
            totals["received"] += 1
            if got >= args.messages:
                done.set()

        client.add_event_handler("session_start", on_session)
        client.add_event_handler("message", on_message)
        client.connect(args.host, args.port)
        try:
            await asyncio.wait_for(online, 60)
        except TimeoutError:
            totals["failed"] += 1
            client.cancel_connection_attempt()
            client.abort()
            return
        totals["ok"] += 1
        client.send_presence()
        began = loop.time()
        for i in range(args.messages):
            delay = began + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            client.send_message(
                mto=f"user_{peer}@{args.domain}",
                mbody=f"ts:{time.time_ns() // 1000}:{'x' * 24}",
                mtype="chat",
            )
            totals["sent"] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 30)
        await asyncio.wait_for(client.disconnect(), 10)

    probe = Probe(
        args.users,
        lambda: totals["ok"],
        lambda: totals["failed"],
        lambda: totals["sent"] + totals["received"],
        args.messages * args.interval / 1000.0,
    )
    watcher = asyncio.create_task(probe.run(args.deadline))
    tasks = [asyncio.create_task(user(uid)) for uid in range(args.first, args.first + args.users)]
    _, pending = await asyncio.wait(tasks, timeout=args.deadline)
    for task in pending:
        task.cancel()
    await watcher
    ttd.sort()
    return {
        **probe.result,
        "finished": not pending,
        "sent": totals["sent"],
        "received": totals["received"],
        "ttd_p50": percentile(ttd, 0.50),
        "ttd_p99": percentile(ttd, 0.99),
    }


# -- parent: server, children, summary ------------------------------------------------------


def run_child(case: str, args: argparse.Namespace, users: int, first: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        case,
        "--users",
        str(users),
        "--first",
        str(first),
        "--messages",
        str(args.messages),
        "--interval",
        str(args.interval),
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--domain",
        args.domain,
        "--deadline",
        str(args.deadline),
        "--interarrival",
        str(args.interarrival),
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=args.deadline * 2 + 60, cwd=ROOT
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{case} case failed (exit {done.returncode})")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def line(case: str, users: int, r: dict[str, Any]) -> str:
    logins_s = r["logins_ok"] / r["login_s"] if r["login_s"] > 0 else math.nan
    return (
        f"{case:<6} users={users} logins/s={logins_s:.0f} "
        f"rss/user={r['rss_per_user_kib']:.1f}KiB "
        f"cpu-s/1000msgs={r.get('cpu_per_1000', math.nan):.3f} "
        f"ttd p50/p99={r['ttd_p50']:.2f}/{r['ttd_p99']:.2f}ms "
        f"sent={r['sent']} received={r['received']} finished={r['finished']}"
    )


def server(args: argparse.Namespace, verb: str, *extra: str) -> None:
    opts = ["--name", args.server_name, "--host", args.host, "--port", str(args.port)]
    opts += ["--http-port", str(args.http_port), "--domain", args.domain]
    subprocess.run([*SERVER, verb, *opts, *extra], check=True, timeout=300)


def parent(args: argparse.Namespace) -> None:
    total = args.users + args.naive_users
    if not args.no_server:
        server(args, "install")
    try:
        if not args.no_server:
            server(args, "start", "--no-mam")  # as the figures in RESULTS.md
            server(args, "register", "--first", "1", "--last", str(total))
        lean = run_child("amoc", args, args.users, 1)
        print(line("amoc", args.users, lean), flush=True)
        naive = None
        if args.naive_users:
            naive = run_child("naive", args, args.naive_users, args.users + 1)
            print(line("naive", args.naive_users, naive), flush=True)
    finally:
        if not args.no_server:
            server(args, "stop")
    if naive is not None:
        lean_rate = lean["logins_ok"] / lean["login_s"]
        naive_rate = naive["logins_ok"] / naive["login_s"]
        print(
            f"ratio  logins/s x{lean_rate / naive_rate:.1f}  "
            f"rss/user /{naive['rss_per_user_kib'] / lean['rss_per_user_kib']:.1f}  "
            f"cpu/msg /{naive.get('cpu_per_1000', math.nan) / lean['cpu_per_1000']:.2f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=2000, help="amoc users (even)")
    p.add_argument("--naive-users", type=int, default=100, help="naive slixmpp users (even)")
    p.add_argument("--messages", type=int, default=20, help="messages per user")
    p.add_argument("--interval", type=int, default=1000, help="ms between a user's messages")
    p.add_argument(
        "--interarrival",
        type=float,
        default=0.25,
        help="ms between two user starts: above the login rate reached, it caps nothing, and "
        "it spreads the users' send times over the message interval",
    )
    p.add_argument("--deadline", type=float, default=180.0, help="seconds allowed per case")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=35222)
    p.add_argument("--http-port", type=int, default=35280)
    p.add_argument("--domain", default="localhost")
    p.add_argument("--server-name", default="amoc_bench_xmpp")
    p.add_argument("--no-server", action="store_true", help="use a running, provisioned server")
    p.add_argument("--child", choices=("amoc", "naive"), help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.users % 2 or args.naive_users % 2:
        p.error("user counts must be even: users chat in pairs")
    if args.child is None:
        parent(args)
        return
    runner: Callable[[argparse.Namespace], Awaitable[dict[str, Any]]]
    if args.child == "amoc":
        import uvloop

        from amoc.node import tune_gc

        tune_gc()  # what a node does

        runner = amoc_case
        result = uvloop.run(runner(args))
    else:
        runner = naive_case
        result = asyncio.run(runner(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
