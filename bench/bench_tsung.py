"""Tsung, a floor and amoc's clients: one XMPP workload, one server, CPU per message.

    .venv/bin/python bench/bench_tsung.py                          # N = 1000, 5000, 10000
    .venv/bin/python bench/bench_tsung.py --users 10000 --clients floor,floor+nostamp,lean

The workload, for each client and N: N users arrive at `--arrival` users/s, log in (SASL
PLAIN, bind), send presence, then each sends chat messages (about 48 bytes of body, stamped
for time to delivery), one every N / `--rate` seconds, so that all together send `--rate`
messages/s, for long enough that a steady window of `--window` s (every user online and
chatting, no login or logout in it) fits; then they log out. amoc runs
scenarios/xmpp_one_to_one.py (each user writes to its neighbour); Tsung's jabber plugin
cannot address a computed neighbour with stamped messages, so each Tsung message goes to a
random online user (the same work for the server: one routed one-to-one message).

The clients (`--clients`, in this order):
- `tsung`: Tsung 1.7, installed from Debian's packages if missing, on this machine without
  ssh (`use_controller_vm`), tuned as far as it goes: loglevel error, no traffic dump, the
  acks FACTS.md gives, and its Erlang VM without busy-waiting schedulers (`ERL_AFLAGS`;
  `--tsung-busy-wait` keeps Erlang's default), `--tsung-destination online` (default) or
  `random`;
- `floor`: bench/floor_client.py, the least Python can do with the same logins and bytes
  (uvloop, no XML parser, every send a `loop.call_at` that arms the next): every row's
  ratio to it is printed; its variants `floor+bare` (the neighbour's bare JID),
  `floor+nostamp` (no TTD stamp) and `floor+tickN` (sends bunched onto an N ms grid)
  measure what each costs the server, `floor+prearm` (every timer set at login) what
  arming a timer costs the client;
- `lean` (and `lean+poisson`, `lean+burst`: xmpp_one_to_one's `message_arrival`) and
  `slixmpp`: amoc's clients, in a process of their own (uvloop, the node's GC tuning).

The benchmark starts its own ejabberd with tools/xmpp_server.py (own name and ports, no
MAM; `--no-server-busy-wait` starts it without busy-waiting schedulers), registers fresh
users for every case (tsung1000_<i>, floor1000_<i>, lean1000_<i>, ...: no case inherits
another's offline messages or warm caches), and runs each case in its own process tree,
which it samples every 50 ms from outside:

- logins/s: rate at which sessions appear on the server between 10% and 90% of N
  (the size of ejabberd's session table by mod_http_api, interpolated: not
  connected_users_number, which costs the server 8.5 ms a call at 10 000 sessions), the same
  clock for every client;
- RSS per user: (RSS of the client's process tree once all N are online - RSS just before
  the first session appeared) / N;
- CPU-s per 1000 messages, the client's and the server's: CPU of the process tree (and of
  ejabberd) in the steady window (from two intervals after the last login to the first
  user's last message), per 1000 messages sent plus received in it (by the schedule:
  2 * rate * window);
- login cores client / server: CPU seconds per second used by the client's process tree
  and by ejabberd between 10% and 90% of N (the machine has `nproc` cores: the one
  nearer its share of them limits the connect phase);
- TTD: p50 / p99 in the same window (all users chatting), and over the whole run in
  parentheses (login ramp and logout included); Tsung gives only mean / max over the whole
  run (xmpp_msg_latency).

Every loop is bounded in count and time; each case has a deadline after which its process
is killed. The server is stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.xmpp_server import ServerError, session_count  # noqa: E402

SERVER = [sys.executable, str(ROOT / "tools" / "xmpp_server.py")]
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.05
PREFIX = {"tsung": "tsung", "floor": "floor", "slixmpp": "slix", "lean": "lean"}
PASSWORD_PREFIX = "password_"
NO_BUSY_WAIT = "+sbwt none +sbwtdcpu none +sbwtdio none"  # erl flags: schedulers sleep at once


# -- sampling a process tree from outside ---------------------------------------------------


def _stat(pid: int) -> tuple[int, float, int] | None:
    """(ppid, cpu seconds, rss bytes) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the name: state ppid ... utime(12) stime(13) ... rss(22), 0-based from state.
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS, int(fields[21]) * PAGE


def descendants(root: int) -> set[int]:
    """`root` and every process below it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                parents[int(entry)] = st[0]
    tree = {root}
    for _ in range(8):  # a few levels deep is all a client tree has
        grown = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        if not grown:
            break
        tree |= grown
    return tree


class Tree:
    """CPU and RSS of a process tree; its members are found again every second."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.pids = {root}
        self.found_at = 0.0
        self.cpu_gone = 0.0  # CPU of members that exited
        self.last_cpu: dict[int, float] = {}

    def sample(self) -> tuple[float, int]:
        now = time.monotonic()
        if now - self.found_at > 1.0:
            self.pids = descendants(self.root) | {self.root}
            self.found_at = now
        cpu, rss = self.cpu_gone, 0
        for pid in list(self.pids):
            st = _stat(pid)
            if st is None:
                self.cpu_gone += self.last_cpu.pop(pid, 0.0)
                self.pids.discard(pid)
                continue
            self.last_cpu[pid] = st[1]
            cpu += st[1]
            rss += st[2]
        return cpu, rss


class Api:
    """mod_http_api of our server over one keep-alive connection."""

    def __init__(self, port: int, server_pid: int | None) -> None:
        self.port = port
        self.server_pid = server_pid
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def online(self) -> int:
        for _attempt in range(2):
            try:
                return session_count(self.conn)
            except (OSError, http.client.HTTPException, ValueError, ServerError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        return -1


@dataclass
class Sample:
    t: float
    online: int
    cpu: float
    rss: int
    server_cpu: float


@dataclass
class Run:
    client: str
    users: int
    samples: list[Sample] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def server_pid(args: argparse.Namespace) -> int | None:
    """The pid of our ejabberd, from the state tools/xmpp_server.py keeps (None if unknown)."""
    out = subprocess.run(
        [*SERVER, "status", "--name", args.server_name],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    found = re.search(r": answering; pid (\d+);", out.stdout)
    return int(found.group(1)) if found else None


def watch(
    proc: subprocess.Popen[str], run: Run, api: Api, deadline_s: float, ready: float | None
) -> None:
    """Sample the server and the process tree until the process exits or the deadline."""
    tree = Tree(proc.pid)
    server = Tree(api.server_pid) if api.server_pid else None
    end = time.monotonic() + deadline_s
    while proc.poll() is None:
        if time.monotonic() > end:
            run.error = f"deadline of {deadline_s:.0f} s passed: killed"
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        t = time.monotonic()
        online = api.online()
        cpu, rss = tree.sample()
        server_cpu = server.sample()[0] if server else math.nan
        if ready is None or t >= ready:
            run.samples.append(Sample(t, online, cpu, rss, server_cpu))
        time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - t)))


# -- figures from the samples ---------------------------------------------------------------


def crossing(samples: list[Sample], level: float) -> float:
    """The time the online count first reached `level`, interpolated between samples."""
    previous = None
    for s in samples:
        if s.online >= level:
            if previous is None or s.online == previous.online:
                return s.t
            share = (level - previous.online) / (s.online - previous.online)
            return previous.t + share * (s.t - previous.t)
        if s.online >= 0:
            previous = s
    return math.nan


def at(samples: list[Sample], t: float) -> Sample:
    """The first sample at or after `t` (the last one if none)."""
    for s in samples:
        if s.t >= t:
            return s
    return samples[-1]


def figures(run: Run, interval_s: float, messages: int, rate: float) -> dict[str, float]:
    """logins/s, RSS per user, CPU per 1000 messages from a run's samples."""
    s = run.samples
    n = run.users
    out = {"logins_s": math.nan, "rss_kib": math.nan, "cpu_1000": math.nan, "window_s": 0.0}
    out["server_1000"] = math.nan
    out |= {"login_cores": math.nan, "server_cores": math.nan}
    if len(s) < 3:
        return out
    t10, t90 = crossing(s, 0.1 * n), crossing(s, 0.9 * n)
    if t90 > t10:
        out["logins_s"] = 0.8 * n / (t90 - t10)
        # Who limits the connect phase: cores used by the client and by the server.
        a, b = at(s, t10), at(s, t90)
        if b.t > a.t:
            out["login_cores"] = (b.cpu - a.cpu) / (b.t - a.t)
            out["server_cores"] = (b.server_cpu - a.server_cpu) / (b.t - a.t)
    first = next((x for x in s if x.online > 0), None)
    all_in = next((x for x in s if x.online >= n), None)
    if first is None or all_in is None:
        return out
    before = [x for x in s if x.t < first.t]
    base = before[-1] if before else s[0]
    settled = at(s, all_in.t + 0.3)
    out["rss_kib"] = (settled.rss - base.rss) / n / 1024
    w0, w1 = all_in.t + 2 * interval_s, first.t + messages * interval_s - 0.5
    if w1 - w0 >= 2.0:
        a, b = at(s, w0), at(s, w1)
        window = b.t - a.t
        sent_and_received = 2 * rate * window
        out["window_s"] = window
        out["cpu_1000"] = (b.cpu - a.cpu) / sent_and_received * 1000
        out["server_1000"] = (b.server_cpu - a.server_cpu) / sent_and_received * 1000
    return out


# -- Tsung ----------------------------------------------------------------------------------

TSUNG_XML = """<?xml version="1.0"?>
<!DOCTYPE tsung SYSTEM "/usr/share/tsung/tsung-1.0.dtd">
<tsung loglevel="error" dumptraffic="false" version="1.0">
  <clients><client host="localhost" use_controller_vm="true" maxusers="{maxusers}"/></clients>
  <servers><server host="{host}" port="{port}" type="tcp"/></servers>
  <load>
    <arrivalphase phase="1" duration="{phase_s}" unit="second">
      <users maxnumber="{users}" arrivalrate="{arrival}" unit="second"/>
    </arrivalphase>
  </load>
  <options>
    <option type="ts_jabber" name="global_number" value="{users}"/>
    <option type="ts_jabber" name="userid_max" value="{users}"/>
    <option type="ts_jabber" name="domain" value="{domain}"/>
    <option type="ts_jabber" name="username" value="{prefix}"/>
    <option type="ts_jabber" name="passwd" value="{password}"/>
  </options>
  <sessions>
    <session probability="100" name="one_to_one" type="ts_jabber" bidi="true">
      <request><jabber type="connect" ack="parse" regexp="mechanisms&gt;"/></request>
      <request><jabber type="auth_sasl" ack="parse" regexp="success"/></request>
      <request><jabber type="connect" ack="parse" regexp="features&gt;"/></request>
      <request><jabber type="auth_sasl_bind" ack="parse" regexp="jid&gt;"/></request>
      <request><jabber type="auth_sasl_session" ack="parse" regexp="result"/></request>
      <request><jabber type="presence:initial" ack="no_ack"/></request>
      <for from="1" to="{messages}" var="i">
        <thinktime value="{interval_s}" random="false"/>
        <request>
          <jabber type="chat" ack="no_ack" size="48" destination="{destination}" stamped="true"/>
        </request>
      </for>
      <thinktime value="{linger_s}" random="false"/>
      <request><jabber type="close" ack="no_ack"/></request>
    </session>
  </sessions>
</tsung>
"""


def ensure_tsung() -> None:
    """Install Debian's tsung unless it is there."""
    if shutil.which("tsung"):
        return
    if os.geteuid() != 0:
        raise SystemExit("tsung is missing and installing it needs root: apt-get install tsung")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "tsung"],
        check=True,
        env=env,
        timeout=1200,
        stdout=subprocess.DEVNULL,
    )
    if not shutil.which("tsung"):
        raise SystemExit("apt-get install tsung did not provide a tsung command")


def tsung_stats(log_dir: Path) -> dict[str, Any]:
    """Totals from the last dump of tsung.log: latency count / mean / max, counters."""
    logs = sorted(log_dir.glob("*/tsung.log"))
    if not logs:
        return {}
    latency: dict[str, float] = {}
    counters: dict[str, int] = {}
    for line in logs[-1].read_text().splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0] != "stats:":
            continue
        name, values = parts[1], parts[2:]
        if name == "xmpp_msg_latency" and len(values) == 7:
            c_p, m_p, _sd, mx, _mn, m_t, c_t = (float(v) for v in values)
            total = c_p + c_t
            latency = {
                "count": total,
                "mean": (m_p * c_p + m_t * c_t) / total if total else math.nan,
                "max": mx,
            }
        elif len(values) == 2 and all(v.isdigit() for v in values):
            counters[name] = int(values[1])
    return {"latency": latency, "counters": counters}


def prefix(client: str, users: int) -> str:
    """The account prefix of one case: fresh users per client (and variant) and N."""
    base, *variant = client.split("+")
    return f"{PREFIX[base]}{''.join(variant)}{users}_"


# The floor's variants (`floor+bare`, `floor+nostamp`, `floor+tick10`): what each part of a
# message and the send pattern cost the server.
FLOOR_VARIANTS = {"bare": ["--to", "bare"], "nostamp": ["--no-stamp"], "prearm": ["--prearm"]}


def floor_options(client: str) -> list[str]:
    """floor_client.py's options for a `floor+...` case."""
    out: list[str] = []
    for part in client.split("+")[1:]:
        if part.startswith("tick") and part[4:].isdigit():
            out += ["--tick", repr(int(part[4:]) / 1000)]  # tickN: an N ms grid
        elif part in FLOOR_VARIANTS:
            out += FLOOR_VARIANTS[part]
        else:
            raise SystemExit(f"unknown floor variant {part!r}: bare, nostamp, prearm or tick<ms>")
    return out


def run_tsung(args: argparse.Namespace, users: int, api: Api, work: Path) -> Run:
    interval_s = users / args.rate
    xml = TSUNG_XML.format(
        maxusers=users * 2 + 100,
        host=args.host,
        port=args.port,
        phase_s=math.ceil(2 * users / args.arrival) + 5,  # maxnumber ends it at N
        users=users,
        arrival=args.arrival,
        domain=args.domain,
        prefix=prefix("tsung", users),
        password=PASSWORD_PREFIX,
        messages=args.messages,
        interval_s=f"{interval_s:g}",
        linger_s=f"{interval_s + 2:g}",
        destination=args.tsung_destination,
    )
    case = work / f"tsung_{users}"
    case.mkdir(parents=True, exist_ok=True)
    (case / "scenario.xml").write_text(xml)
    run = Run("tsung", users)
    deadline = users / args.arrival + (args.messages + 2) * interval_s + 120
    proc = subprocess.Popen(
        ["tsung", "-n", "-l", str(case / "log"), "-f", str(case / "scenario.xml"), "start"],
        cwd=case,
        # An epmd it starts listens on loopback. ERL_AFLAGS reaches the VM that the tsung
        # script starts with its own fixed options: no busy-waiting schedulers, whose
        # spinning between two messages would count as Tsung's CPU (--tsung-busy-wait keeps
        # Erlang's default).
        env={**os.environ, "ERL_EPMD_ADDRESS": "127.0.0.1"}
        | ({} if args.tsung_busy_wait else {"ERL_AFLAGS": NO_BUSY_WAIT}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        watch(proc, run, api, deadline, None)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate(timeout=30)[0]
    stats = tsung_stats(case / "log")
    if not stats:
        run.error = run.error or f"no tsung.log: {out[-500:]}"
        return run
    counters, latency = stats["counters"], stats["latency"]
    errors = {k: v for k, v in counters.items() if k.startswith("error")}
    run.extra = {
        "sent": counters.get("request_noack", 0) - 2 * counters.get("users_count", users),
        "received": int(latency.get("count", 0)),
        "ttd": f"mean {latency.get('mean', math.nan):.2f} / max {latency.get('max', math.nan):.1f}",
        "errors": errors,
    }
    return run


# -- amoc -----------------------------------------------------------------------------------


async def amoc_child(args: argparse.Namespace) -> dict[str, Any]:
    """Run xmpp_one_to_one for users 1..N in this process; return the totals."""
    import asyncio

    from amoc import metrics, xmpp  # noqa: F401 - imported before the baseline
    from amoc.metrics.histogram import describe, difference
    from amoc.runner import Controller, State

    def count(name: str) -> int:
        return int(metrics.counter(name).value)

    users = args.users[0]
    interval_ms = users / args.rate * 1000
    settings = {
        "xmpp_client": args.child.split("+")[0],
        "xmpp_host": args.host,
        "xmpp_port": args.port,
        "xmpp_domain": args.domain,
        "xmpp_sasl": "PLAIN",  # what Tsung does; AUTO would pick SCRAM
        "xmpp_username_prefix": prefix(args.child, users),
        "xmpp_password_prefix": PASSWORD_PREFIX,
        # Tsung waits as long as it takes; first logins of fresh users can be slow.
        "xmpp_connect_timeout": 60_000,
        "xmpp_reply_timeout": 60_000,
        "messages_per_user": args.messages,
        "message_interval": interval_ms,
        "receive_timeout": 30_000,
        "interarrival": 1000.0 / args.arrival,
        "repeat_num": 1,
        # lean+poisson, lean+burst: the messages' arrival process (amoc.pacing)
        "message_arrival": [*args.child.split("+"), "even"][1],
    }
    ctl = Controller(scenario_dirs=[ROOT / "scenarios"])
    print("ready", flush=True)
    await asyncio.sleep(1.0)  # the parent takes the baseline now
    ttd = metrics.histogram("xmpp.ttd_ms")
    loop = asyncio.get_running_loop()
    began = loop.time()
    interval_s = interval_ms / 1000
    window: dict[str, Any] = {}

    async def steady_ttd() -> None:
        # TTD while every user is online and chatting: the window of the CPU figure
        # (the last to log in sends its first message within two intervals).
        while count("xmpp.logins.ok") + count("xmpp.logins.failed") < users:
            await asyncio.sleep(0.05)
        await asyncio.sleep(2 * interval_s)
        first = ttd.snapshot()
        await asyncio.sleep(max(0.0, began + args.messages * interval_s - 0.5 - loop.time()))
        window.update(describe(difference(ttd.snapshot(), first)))

    watcher = asyncio.create_task(steady_ttd())
    await ctl.do("xmpp_one_to_one", 1, users, settings=settings)
    end = loop.time() + users / args.arrival + (args.messages + 3) * interval_s + 60
    while ctl.status().state != State.FINISHED.value and loop.time() < end:
        await asyncio.sleep(0.5)
    finished = ctl.status().state == State.FINISHED.value
    watcher.cancel()
    await ctl.close()
    return {
        "ttd_window_p50": window.get("p50", math.nan),
        "ttd_window_p99": window.get("p99", math.nan),
        "finished": finished,
        "logins_ok": count("xmpp.logins.ok"),
        "logins_failed": count("xmpp.logins.failed"),
        "sent": count("xmpp.messages.sent"),
        "received": count("xmpp.messages.received"),
        "ttd_count": ttd.count,
        "ttd_p50": ttd.percentile(50),
        "ttd_p99": ttd.percentile(99),
    }


def run_amoc(args: argparse.Namespace, client: str, users: int, api: Api) -> Run:
    cmd = [sys.executable, __file__, "--child", client, "--users", str(users)]
    for opt in ("messages", "rate", "arrival", "host", "port", "domain"):
        cmd += [f"--{opt}", str(getattr(args, opt))]
    return run_child(args, client, users, api, cmd)


def run_floor(args: argparse.Namespace, client: str, users: int, api: Api) -> Run:
    """The bench-only minimal client (bench/floor_client.py), the same workload."""
    cmd = [sys.executable, str(ROOT / "bench" / "floor_client.py"), "--users", str(users)]
    cmd += floor_options(client)
    cmd += ["--messages", str(args.messages), "--interval", repr(users / args.rate)]
    cmd += ["--arrival", str(args.arrival), "--host", args.host, "--port", str(args.port)]
    cmd += ["--domain", args.domain, "--user-prefix", prefix(client, users)]
    cmd += ["--password-prefix", PASSWORD_PREFIX]
    return run_child(args, client, users, api, cmd)


def run_child(args: argparse.Namespace, client: str, users: int, api: Api, cmd: list[str]) -> Run:
    """Run a Python client's process, sampled from outside; its JSON totals."""
    run = Run(client, users)
    interval_s = users / args.rate
    deadline = users / args.arrival + (args.messages + 2) * interval_s + 120
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # "ready": imports done, no user yet
        if first.strip() != "ready":
            run.error = f"child did not start: {first!r}"
        else:
            watch(proc, run, api, deadline, time.monotonic() + 0.3)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        run.error = run.error or f"no result (exit {proc.returncode}): {err[-800:]}"
        return run
    result = json.loads(lines[-1])
    run.extra = {
        "sent": result["sent"],
        "received": result["received"],
        "ttd": (
            f"p50 {result['ttd_window_p50']:.2f} / p99 {result['ttd_window_p99']:.2f}"
            f" (all: {result['ttd_p50']:.2f} / {result['ttd_p99']:.2f})"
        ),
        "ttd_p99": result["ttd_p99"],
        "ttd_count": result["ttd_count"],
        "finished": result["finished"],
        "logins_failed": result["logins_failed"],
    }
    return run


# -- parent ---------------------------------------------------------------------------------


def stop_our_epmd(work: Path) -> None:
    """Stop the epmd daemon that Tsung's VM started from our work directory, if any."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if Path(f"/proc/{entry}/comm").read_text().strip() != "epmd":
                continue
            # A daemon changes its directory; its environment still says where it began.
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            if f"PWD={work}".encode() in [e[: len(f"PWD={work}")] for e in env]:
                os.kill(int(entry), signal.SIGTERM)


def server(args: argparse.Namespace, verb: str, *extra: str) -> None:
    opts = ["--name", args.server_name, "--host", args.host, "--port", str(args.port)]
    opts += ["--http-port", str(args.http_port), "--domain", args.domain]
    subprocess.run([*SERVER, verb, *opts, *extra], check=True, timeout=600)


def wait_empty(api: Api, timeout_s: float = 60.0) -> None:
    """Wait (bounded) until the server has no session left from the previous case."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and api.online() != 0:
        time.sleep(0.2)


def row(
    run: Run, fig: dict[str, float], tsung: dict[str, float] | None, floor: dict[str, float] | None
) -> str:
    def ratio(key: str, ref: dict[str, float] | None) -> str:
        if ref is None or ref is fig or not ref.get(key) or math.isnan(ref[key]):
            return "  -  "
        return "  -  " if math.isnan(fig[key]) else f"{fig[key] / ref[key]:5.2f}"

    e = run.extra
    return (
        f"| {run.client:<7} | {run.users:>5} | {fig['logins_s']:7.0f} | {fig['rss_kib']:6.1f} "
        f"| {fig['cpu_1000']:6.3f} | {fig['server_1000']:6.3f} | {e.get('ttd', '-'):<40} "
        f"| {e.get('sent', 0):>7} | {e.get('received', 0):>7} | {ratio('logins_s', tsung)} "
        f"| {ratio('rss_kib', tsung)} | {ratio('cpu_1000', tsung)} | {ratio('cpu_1000', floor)} "
        f"| {fig['window_s']:4.0f} | {fig['login_cores']:4.2f} / {fig['server_cores']:4.2f} |"
        + (f" {run.error}" if run.error else "")
    )


HEADER = (
    "| client  |     N | logins/s | RSS KiB/user | CPU-s/1000 msgs | server CPU-s/1000 "
    "| TTD ms                                   |    sent | received "
    "| logins/s vs Tsung | RSS vs Tsung | CPU vs Tsung | CPU vs floor | window s "
    "| login cores client / server |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def parent(args: argparse.Namespace) -> None:
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    for c in clients:
        if c.startswith("floor+"):
            floor_options(c)  # a variant it does not know stops the benchmark here
        if c.split("+")[0] not in PREFIX:
            raise SystemExit(f"unknown client {c!r}: choose among {', '.join(PREFIX)}")
    if "tsung" in clients:
        ensure_tsung()
    work = Path(tempfile.mkdtemp(prefix="amoc_bench_tsung_"))
    if not args.no_server:
        server(args, "install")
    api: Api | None = None
    try:
        if not args.no_server:
            provision(args, clients)
        api = Api(args.http_port, server_pid(args))
        print(HEADER, flush=True)
        for users in args.users:
            measure(args, clients, users, api, work)
    finally:
        if api is not None:
            api.conn.close()
        stop_our_epmd(work)
        if not args.no_server:
            server(args, "remove")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"runs kept in {work}")


def provision(args: argparse.Namespace, clients: list[str]) -> None:
    """Start the server and register every client's users at every N."""
    busy = [] if args.server_busy_wait else ["--no-busy-wait"]
    server(args, "start", "--no-mam", *busy)  # as the figures in RESULTS.md
    for users in args.users:
        for c in clients:
            extra = ["--user-prefix", prefix(c, users), "--password-prefix", PASSWORD_PREFIX]
            server(args, "register", "--first", "1", "--last", str(users), *extra)


def messages_for(args: argparse.Namespace, users: int) -> int:
    """Messages per user: --messages, else enough for a steady window of --window s (after
    the arrivals and two intervals, before the first user's last message)."""
    if args.messages:
        return int(args.messages)
    interval_s = users / args.rate
    return math.ceil((users / args.arrival + 3 * interval_s + args.window) / interval_s) + 1


def measure(args: argparse.Namespace, clients: list[str], users: int, api: Api, work: Path) -> None:
    """One row per client at `users`; ratios to Tsung's and to the floor's rows of this N."""
    case = argparse.Namespace(**{**vars(args), "messages": messages_for(args, users)})
    interval_s = users / args.rate
    rows: dict[str, tuple[Run, dict[str, float]]] = {}
    for c in clients:
        wait_empty(api)
        if c == "tsung":
            run = run_tsung(case, users, api, work)
        elif c.split("+")[0] == "floor":
            run = run_floor(case, c, users, api)
        else:  # slixmpp, lean, lean+poisson, lean+burst
            run = run_amoc(case, c, users, api)
        rows[c] = (run, figures(run, interval_s, case.messages, args.rate))
    tsung, floor = rows.get("tsung", (None, None))[1], rows.get("floor", (None, None))[1]
    for run, fig in rows.values():
        print(row(run, fig, tsung, floor), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--users",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[1000, 5000, 10000],
        help="user counts, comma separated (even)",
    )
    p.add_argument("--clients", default="tsung,floor,lean", help="cases, in this order "
                   "(tsung, floor, lean, slixmpp)")  # fmt: skip
    p.add_argument("--messages", type=int, default=0,
                   help="messages per user (default: enough for the --window)")  # fmt: skip
    p.add_argument(
        "--tsung-destination",
        default="online",
        choices=("online", "random"),
        help="Tsung's chat destination (random: any user id, cheaper for Tsung)",
    )
    p.add_argument(
        "--server-busy-wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ejabberd's schedulers spin before they sleep (Erlang's default)",
    )
    p.add_argument(
        "--tsung-busy-wait",
        action="store_true",
        help="Tsung's VM with Erlang's default busy-waiting schedulers",
    )
    p.add_argument("--window", type=float, default=60.0,
                   help="s of steady chat (all users online) in which CPU is counted")  # fmt: skip
    p.add_argument("--rate", type=float, default=2000.0, help="messages/s sent by all users")
    p.add_argument("--arrival", type=float, default=1000.0, help="users arriving per second")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=37222)
    p.add_argument("--http-port", type=int, default=37280)
    p.add_argument("--domain", default="localhost")
    p.add_argument("--server-name", default="amoc_bench_tsung")
    p.add_argument("--no-server", action="store_true", help="use a running, provisioned server")
    p.add_argument("--keep", action="store_true", help="keep Tsung's logs and scenarios")
    p.add_argument("--child", choices=("slixmpp", "lean", "lean+poisson", "lean+burst"),
                   help=argparse.SUPPRESS)  # fmt: skip
    args = p.parse_args()
    if any(n % 2 or n <= 0 for n in args.users):
        p.error("user counts must be even and positive: amoc users chat in pairs")
    if args.child is None:
        parent(args)
        return
    import uvloop

    from amoc.node import tune_gc

    tune_gc()  # what a node does
    print(json.dumps(uvloop.run(amoc_child(args))), flush=True)


if __name__ == "__main__":
    main()
