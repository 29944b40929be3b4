"""The lean client over each transport: plain TCP, STARTTLS, direct TLS, WebSocket, BOSH.

    .venv/bin/python bench/bench_transports.py                 # 5000 users per transport
    .venv/bin/python bench/bench_transports.py --users 500 --cases tcp,websocket

Starts its own ejabberd twice with tools/xmpp_server.py: without TLS (the `tcp` case) and
with STARTTLS required and a direct-TLS port (the other cases; WebSocket and BOSH on its
HTTP port). Each case is one child process running xmpp_one_to_one through the runner, as
bench/bench_xmpp.py does, with PLAIN logins (what Tsung does), and prints one line:
logins/s, RSS per user, CPU-s per 1000 messages (sent + received, in the window where every
user is online), TTD p50 / p99, messages sent and received. Every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_xmpp import SERVER, Probe  # noqa: E402 - bench/ is not a package

CASES = ("tcp", "starttls", "direct", "websocket", "bosh")


def transport_settings(case: str, args: argparse.Namespace) -> dict[str, Any]:
    """The xmpp_* settings of one case."""
    http = f"{args.host}:{args.http_port}"
    return {
        "tcp": {"xmpp_tls": "none", "xmpp_port": args.plain_port},
        "starttls": {"xmpp_tls": "starttls"},
        "direct": {"xmpp_tls": "direct", "xmpp_port": args.tls_port},
        "websocket": {"xmpp_transport": f"ws://{http}/ws"},
        "bosh": {"xmpp_transport": f"http://{http}/bosh"},
    }[case]


async def child(args: argparse.Namespace) -> dict[str, Any]:
    """One case, in its own process."""
    from amoc import metrics
    from amoc.runner import Controller, State

    def count(name: str) -> int:
        return int(metrics.counter(name).value)

    settings = {
        "xmpp_host": args.host,
        "xmpp_port": args.port,
        "xmpp_domain": args.domain,
        "xmpp_sasl": "PLAIN",
        "xmpp_connect_timeout": 60_000,
        "messages_per_user": args.messages,
        "message_interval": args.interval,
        "receive_timeout": 30_000,
        "interarrival": args.interarrival,
        "repeat_num": 1,
        **transport_settings(args.child, args),
    }
    probe = Probe(
        args.users,
        lambda: count("xmpp.logins.ok"),
        lambda: count("xmpp.logins.failed"),
        lambda: count("xmpp.messages.sent") + count("xmpp.messages.received"),
        args.messages * args.interval / 1000.0,
    )
    import asyncio

    ctl = Controller(scenario_dirs=[ROOT / "scenarios"])
    watcher = asyncio.create_task(probe.run(args.deadline))
    await ctl.do("xmpp_one_to_one", 1, args.users, settings=settings)
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
        "failed": count("xmpp.logins.failed"),
        "sent": count("xmpp.messages.sent"),
        "received": count("xmpp.messages.received"),
        "ttd_p50": ttd.percentile(50),
        "ttd_p99": ttd.percentile(99),
    }


def run_child(case: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", case]
    for name in ("users", "messages", "interval", "interarrival", "deadline", "host", "port",
                 "plain_port", "tls_port", "http_port", "domain"):  # fmt: skip
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.deadline * 2 + 60)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"the {case} case failed (exit {done.returncode})")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def line(case: str, users: int, r: dict[str, Any]) -> str:
    """The summary line of one case."""
    logins_s = r["logins_ok"] / r["login_s"] if r["login_s"] > 0 else math.nan
    return (
        f"{case:<9} users={users} logins/s={logins_s:.0f} "
        f"rss/user={r['rss_per_user_kib']:.1f}KiB "
        f"cpu-s/1000msgs={r.get('cpu_per_1000', math.nan):.3f} "
        f"ttd p50/p99={r['ttd_p50']:.2f}/{r['ttd_p99']:.2f}ms "
        f"sent={r['sent']} received={r['received']} failed={r['failed']} "
        f"finished={r['finished']}"
    )


def server(args: argparse.Namespace, name: str, verb: str, *extra: str) -> None:
    subprocess.run([*SERVER, verb, "--name", name, *extra], check=True, timeout=300)


def parent(args: argparse.Namespace) -> None:
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown cases {unknown}: choose from {', '.join(CASES)}")
    server(args, "plain", "install")
    groups = (
        ("amoc_bench_plain", ["--port", str(args.plain_port)], [c for c in cases if c == "tcp"]),
        (
            "amoc_bench_tls",
            ["--port", str(args.port), "--tls", "--tls-port", str(args.tls_port)],
            [c for c in cases if c != "tcp"],
        ),
    )
    for name, flags, group in groups:
        if not group:
            continue
        common = ["--host", args.host, "--http-port", str(args.http_port), "--domain", args.domain]
        try:
            server(args, name, "start", *flags, *common, "--no-mam")
            server(args, name, "register", "--first", "1", "--last", str(args.users))
            for case in group:
                print(line(case, args.users, run_child(case, args)), flush=True)
        finally:
            server(args, name, "remove")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=5000, help="users per case (even)")
    p.add_argument("--cases", default=",".join(CASES), help="which transports, comma-separated")
    p.add_argument("--messages", type=int, default=8, help="messages per user")
    p.add_argument("--interval", type=int, default=5000, help="ms between a user's messages")
    p.add_argument("--interarrival", type=float, default=2.0, help="ms between user starts")
    p.add_argument("--deadline", type=float, default=240.0, help="seconds allowed per case")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=36222, help="STARTTLS c2s port")
    p.add_argument("--plain-port", type=int, default=36322, help="plain c2s port (tcp case)")
    p.add_argument("--tls-port", type=int, default=36223, help="direct-TLS c2s port")
    p.add_argument("--http-port", type=int, default=36280, help="WebSocket and BOSH port")
    p.add_argument("--domain", default="localhost")
    p.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.users % 2:
        p.error("--users must be even: users chat in pairs")
    if args.child is None:
        parent(args)
        return
    import uvloop

    from amoc.node import tune_gc

    tune_gc()
    print(json.dumps(uvloop.run(child(args))), flush=True)


if __name__ == "__main__":
    main()
