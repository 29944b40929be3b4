"""Group chat against one-to-one chat: CPU per delivered message, client and server side.

    .venv/bin/python bench/bench_muc.py                       # 1000 users, rooms of 10
    .venv/bin/python bench/bench_muc.py --users 200 --rounds 4 --cases muc

Starts its own ejabberd with tools/xmpp_server.py (own name and ports, plain TCP, no MAM unless
`--mam`: ejabberd archives chat messages but not room messages by default), registers
fresh users per case, runs each case in its own process (so that its CPU is its own) and
removes the server at the end, whatever happens. The cases, at the same user count and send
rate (each user sends one message every `--interval` ms, `--rounds` times):

- muc: scenarios/xmpp_muc.py, rooms of `--room-size` (every message goes to every
  occupant, the sender's echo included: room-size deliveries per message);
- one_to_one: scenarios/xmpp_one_to_one.py (one delivery per message).

Figures, in a steady window (every user logged in and, for muc, in its room, and sending at
its pace: from one interval after the last join to the first room's (user's) last send):

- delivered/s: groupchat (or chat) messages received per second, over all users;
- client CPU-s per 1000 delivered: CPU of the load generator's process over the window, per
  1000 messages delivered in it (and per 1000 sent, in parentheses);
- server CPU-s per 1000 delivered: the same for ejabberd's process;
- TTD p50 / p99 (ms): xmpp.muc.ttd_ms (echoes included) or xmpp.ttd_ms, in the window.

One summary line per case. Every loop is bounded in count and time; a case that overruns its
deadline is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tsung import SERVER, Tree, server_pid  # noqa: E402 - the same server sampling

PASSWORD_PREFIX = "password_"
CASES = ("muc", "one_to_one")
PREFIX = {"muc": "mucb_", "one_to_one": "o2ob_"}


def cpu_seconds() -> float:
    """User + system CPU of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- a case, in its own process -------------------------------------------------------------


async def child(args: argparse.Namespace) -> dict[str, Any]:
    """Run one case for users 1..N against the server; the window's figures."""
    from amoc import metrics, xmpp  # noqa: F401 - imported before the baseline
    from amoc.metrics.histogram import describe, difference
    from amoc.runner import Controller, State

    def count(name: str) -> int:
        return int(metrics.counter(name).value)

    case, users = args.child, args.users
    interval_s = args.interval / 1000.0
    settings: dict[str, Any] = {
        "xmpp_host": args.host,
        "xmpp_port": args.port,
        "xmpp_domain": args.domain,
        "xmpp_username_prefix": PREFIX[case],
        "xmpp_password_prefix": PASSWORD_PREFIX,
        "xmpp_sasl": "PLAIN",
        "xmpp_connect_timeout": 60_000,
        "xmpp_reply_timeout": 60_000,
        "messages_per_user": args.rounds,
        "message_interval": args.interval,
        "receive_timeout": 30_000,
        "interarrival": 1000.0 / args.arrival,
        "repeat_num": 1,
    }
    if case == "muc":
        settings |= {"users_per_room": args.room_size, "rooms_per_user": 1}
        settings |= {"join_timeout": 120_000}
        ready, delivered, sent, ttd_name = (
            "xmpp.muc.joins",
            "xmpp.muc.messages.received",
            "xmpp.muc.messages.sent",
            "xmpp.muc.ttd_ms",
        )
        # A room sends from its filling on (each user's first message at a random point of
        # the first interval), rounds messages one interval apart.
        settle, last_send = interval_s, (args.rounds - 1) * interval_s
    else:
        ready, delivered, sent, ttd_name = (
            "xmpp.logins.ok",
            "xmpp.messages.received",
            "xmpp.messages.sent",
            "xmpp.ttd_ms",
        )
        # The first message one to two intervals after the presence, then one an interval.
        settle, last_send = 2 * interval_s, args.rounds * interval_s
    server = Tree(args.server_pid) if args.server_pid else None
    ttd = metrics.histogram(ttd_name)
    loop = asyncio.get_running_loop()
    ctl = Controller(scenario_dirs=[ROOT / "scenarios"])
    await ctl.do("xmpp_muc" if case == "muc" else "xmpp_one_to_one", 1, users, settings=settings)
    deadline = loop.time() + users / args.arrival + (args.rounds + 4) * interval_s + 180
    first = None
    while count(ready) < users and loop.time() < deadline:
        if first is None and count(ready) > 0:
            first = loop.time()
        await asyncio.sleep(0.05)
    all_in = loop.time()
    first = first or all_in
    # Steady: everyone at its pace (after the last join) until the earliest sender's last
    # message.
    w0 = all_in + settle
    w1 = first + last_send - 0.5
    out: dict[str, Any] = {"joined_s": all_in - first, "window_s": max(0.0, w1 - w0)}
    if w1 - w0 >= 2.0:
        await asyncio.sleep(max(0.0, w0 - loop.time()))
        c0, s0, d0, m0, h0 = (
            cpu_seconds(),
            _cpu(server),
            count(delivered),
            count(sent),
            ttd.snapshot(),
        )
        t0 = loop.time()
        await asyncio.sleep(max(0.0, w1 - loop.time()))
        c1, s1, d1, m1, h1 = (
            cpu_seconds(),
            _cpu(server),
            count(delivered),
            count(sent),
            ttd.snapshot(),
        )
        window = loop.time() - t0
        got = describe(difference(h1, h0))
        out |= {
            "window_s": window,
            "delivered": d1 - d0,
            "sent": m1 - m0,
            "client_cpu": c1 - c0,
            "server_cpu": s1 - s0,
            "ttd_p50": got["p50"],
            "ttd_p99": got["p99"],
        }
    while ctl.status()["state"] != State.FINISHED.value and loop.time() < deadline:
        await asyncio.sleep(0.2)
    out["finished"] = ctl.status()["state"] == State.FINISHED.value
    await ctl.close()
    incomplete = "muc.incomplete" if case == "muc" else "one_to_one.incomplete"
    out |= {
        "logins_failed": count("xmpp.logins.failed"),
        "users_failed": count("users.failed"),
        "incomplete": count(incomplete) + count("muc.unfilled"),
        "total_sent": count(sent),
        "total_delivered": count(delivered),
    }
    return out


def _cpu(tree: Tree | None) -> float:
    return tree.sample()[0] if tree is not None else math.nan


# -- parent: server, cases, summary ---------------------------------------------------------


def server(args: argparse.Namespace, verb: str, *extra: str) -> None:
    opts = ["--name", args.server_name, "--host", args.host, "--port", str(args.port)]
    opts += ["--http-port", str(args.http_port), "--domain", args.domain]
    subprocess.run([*SERVER, verb, *opts, *extra], check=True, timeout=600)


def run_case(args: argparse.Namespace, case: str, pid: int | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", case, "--server-pid", str(pid or 0)]
    for opt in ("users", "rounds", "interval", "room_size", "arrival", "host", "port", "domain"):
        cmd += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    deadline = args.users / args.arrival + (args.rounds + 4) * args.interval / 1000 + 240
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        return {"error": f"killed after its deadline of {deadline:.0f} s"}
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": f"no result (exit {proc.returncode}): {err[-800:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def row(case: str, args: argparse.Namespace, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {case:<10} | {args.users:>5} | {r['error']} |"
    window = r.get("window_s", 0.0)
    delivered, sent = r.get("delivered", 0), r.get("sent", 0)
    if not delivered or not window:
        return f"| {case:<10} | {args.users:>5} | no steady window ({window:.1f} s) | {r} |"
    per = 1000 / delivered
    shape = f"rooms of {args.room_size}" if case == "muc" else "pairs"
    return (
        f"| {case:<10} | {args.users:>5} | {shape:<11} | {sent / window:7.1f} | "
        f"{delivered / window:8.1f} | {r['client_cpu'] * per:6.3f} "
        f"({r['client_cpu'] * 1000 / max(1, sent):5.3f}) | {r['server_cpu'] * per:6.3f} "
        f"({r['server_cpu'] * 1000 / max(1, sent):5.3f}) | {r['ttd_p50']:5.2f} / "
        f"{r['ttd_p99']:6.2f} | {window:5.1f} | {r['total_sent']:>6} | "
        f"{r['total_delivered']:>7} | {r['incomplete'] + r['users_failed'] + r['logins_failed']} |"
    )


HEADER = (
    "| case       |     N | shape       | sent/s  | delivered/s | client CPU-s/1000 delivered "
    "(/1000 sent) | server CPU-s/1000 delivered (/1000 sent) | TTD p50 / p99 ms | window s "
    "|   sent | delivered | failures |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def parent(args: argparse.Namespace) -> None:
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"unknown case {c!r}: choose among {', '.join(CASES)}")
    if "muc" in cases and args.users % args.room_size:
        raise SystemExit(f"--users {args.users} must be a multiple of --room-size {args.room_size}")
    if "one_to_one" in cases and args.users % 2:
        raise SystemExit(f"--users {args.users} must be even: one-to-one users chat in pairs")
    server(args, "install")
    try:
        # MAM archives chat messages but not those of rooms (a room option, off by default):
        # with it the one-to-one case would pay several times the server CPU per message.
        server(args, "start", "--mam" if args.mam else "--no-mam")
        for c in cases:
            server(args, "register", "--first", "1", "--last", str(args.users),
                   "--user-prefix", PREFIX[c], "--password-prefix", PASSWORD_PREFIX)  # fmt: skip
        pid = server_pid(args)
        print(
            f"{args.users} users, one message per user every {args.interval / 1000:g} s, "
            f"{args.rounds} rounds; ejabberd pid {pid}",
            flush=True,
        )
        print(HEADER, flush=True)
        for c in cases:
            print(row(c, args, run_case(args, c, pid)), flush=True)
    finally:
        server(args, "remove")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1000, help="users per case")
    p.add_argument("--room-size", type=int, default=10, help="occupants per room (muc)")
    p.add_argument("--interval", type=float, default=10_000, help="ms between a user's messages")
    p.add_argument("--rounds", type=int, default=8, help="messages per user")
    p.add_argument("--arrival", type=float, default=500.0, help="users arriving per second")
    p.add_argument("--cases", default="muc,one_to_one", help="cases, in this order")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=37322)
    p.add_argument("--http-port", type=int, default=37380)
    p.add_argument("--domain", default="localhost")
    p.add_argument("--server-name", default="amoc_bench_muc")
    p.add_argument("--mam", action="store_true", help="archive messages (MAM) on the server")
    p.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    p.add_argument("--server-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.users <= 0 or args.rounds < 3 or args.interval <= 0:
        p.error("need --users > 0, --rounds >= 3 (a steady window) and --interval > 0")
    if args.child is None:
        parent(args)
        return
    import uvloop

    from amoc.node import tune_gc

    tune_gc()  # what a node does
    print(json.dumps(uvloop.run(child(args))), flush=True)


if __name__ == "__main__":
    main()
