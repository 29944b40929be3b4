"""100 000 users on one machine: an ejabberd cluster, an amoc cluster, one table.

    make bench-scale                     # 100 000 users, about 16 minutes
    make bench-scale BENCH_SCALE_USERS=2000 BENCH_SCALE_OPTS="--interval 10 --window 10"
    .venv/bin/python bench/bench_scale.py [--users 100000] [--server-nodes N] [--slaves N]
        [--rate 200] [--interval 100] [--messages 6] [--window 60] [--timeout 2100]
        [--release DIR] [--source-addresses 127.0.0.2/31] [--busy-wait] [--keep]

What it starts, all on loopback, and stops (by pid) and removes at the end:
- an ejabberd cluster of its own (tools/xmpp_server.py start --nodes N, no MAM, no offline
  storage): N ejabberd nodes joined into one mnesia cluster by `ejabberdctl join_cluster`,
  each on its own c2s port and holding fewer sessions than a process may open files (N is
  what --users needs: 6 for 100 000); the users are registered on the first node before the
  others join (they copy the table);
- a release of amoc (tools/release.sh into a directory of its own, or --release), its CURVE
  keys (`bin/amoc keys`), a master and as many slave nodes (--slaves) started with
  `bin/amoc start`, as a user starts them;
- on the master's console, `amoc_dist.do("xmpp_one_to_one", 1, N, settings=...)` with the
  ejabberd nodes as `xmpp_servers` (user k to server node (k - 1) mod n and, round robin, to
  slave (k - 1) mod m: neighbours k and k + 1 sit on different server nodes and different amoc
  nodes, so every message crosses both clusters), users arriving at --rate per second over
  the cluster (`user_rate`), each sending --messages stamped messages, one every --interval
  seconds (the first one to two intervals after its login).

Measured: users connected at peak (amoc's running users, ejabberd's sessions); logins/s while
ejabberd's sessions rose from 10% to 90% of the users, and what limited them (the arrival
rate asked, or the cores: the CPU the ejabberd nodes and the amoc nodes spent over that
ramp, per login, and where the two cores would run out); RSS (and PSS, shared pages counted
once) summed over the slave nodes per user, and above their idle figure; ejabberd's RSS
above idle per session; TTD p50 / p99 / max in a steady window (every user connected, no
login, the first messages flowing) and over the whole run; messages sent and received; the
master's CPU and control-plane bytes per second in the steady window; the time from `do` to
every user running; how long status() and one frame of watch() take on the master's console
at full load.

Bad input: a user count above what the machine allows (open files per process times the
processes, ephemeral ports per address pair, memory) is refused before anything starts,
saying why and how many users it can do (exit 2); so is a ramp that would outlast the users.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amoc.console_socket import ConsoleClient  # noqa: E402
from amoc.home import Home  # noqa: E402
from amoc.metrics.histogram import describe, difference  # noqa: E402
from tools.xmpp_server import ServerError, free_port, free_ports, session_count  # noqa: E402

SERVER_TOOL = [sys.executable, str(ROOT / "tools" / "xmpp_server.py")]
CLUSTER = "bench_scale"
PREFIX = "bscale"  # amoc node names: bscale_master, bscale_s1, ...
# Open files a process keeps besides its XMPP connections (a node's sockets, pipes, files,
# an ejabberd node's mnesia tables and distribution links), kept free under the limit.
FD_RESERVE = 1500
# Memory per user, measured here (bench_scale, bench_tsung): ejabberd about 120 KiB per session
# in a cluster of 6 (every node holds every session's record), the lean client 6-8 KiB; and
# per process at rest.
SERVER_KIB_PER_SESSION = 120
CLIENT_KIB_PER_USER = 8
SERVER_IDLE_MB = 120
NODE_IDLE_MB = 60


def _round_down(n: float, to: int = 1000) -> int:
    return int(n // to * to)


# -- the plan and the machine's limits ----------------------------------------------------------


@dataclass
class Limits:
    """What this machine allows a process and an address pair (read, not assumed)."""

    open_files: int
    ports: int
    mem_available_kib: int

    @classmethod
    def read(cls) -> Limits:
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        low, high = (
            int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        )
        mem = 0
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                mem = int(line.split()[1])
        return cls(hard, high - low + 1, mem)


@dataclass
class Plan:
    """How many of each process the run takes, checked against the limits."""

    users: int
    server_nodes: int
    slaves: int
    sources: int  # source addresses each amoc node binds its connections to (1: the default)

    def problems(self, lim: Limits) -> list[tuple[str, int]]:
        """Each limit the plan breaks: (why, the most users it allows)."""
        out = []
        per_process = lim.open_files - FD_RESERVE
        for what, count, flag in (("ejabberd node", self.server_nodes, "--server-nodes"),
                                  ("amoc slave node", self.slaves, "--slaves")):  # fmt: skip
            most = count * per_process
            if self.users > most:
                out.append((
                    f"{self.users} users on {count} {what}s is {math.ceil(self.users / count)} "
                    f"connections per process; a process may open {lim.open_files} files "
                    f"({FD_RESERVE} kept for its own): at most {most} users, or "
                    f"{flag} {math.ceil(self.users / per_process)}", most,
                ))  # fmt: skip
        # Each server node has its own port on 127.0.0.1: one (source, destination) pair per
        # server node and source address.
        most = lim.ports * self.server_nodes * self.sources
        if self.users > most:
            out.append((
                f"{math.ceil(self.users / self.server_nodes)} connections to each server port "
                f"from {self.sources} source address(es): {lim.ports} ephemeral ports per "
                f"address pair allow at most {most} users; add server nodes or "
                "--source-addresses", most,
            ))  # fmt: skip
        base = self.server_nodes * SERVER_IDLE_MB * 1024 + (self.slaves + 1) * NODE_IDLE_MB * 1024
        per_user = SERVER_KIB_PER_SESSION + CLIENT_KIB_PER_USER
        usable = lim.mem_available_kib * 0.85
        most = max(0, _round_down((usable - base) / per_user))
        if self.users > most:
            out.append((
                f"{self.users} users need about {(base + self.users * per_user) / 2**20:.1f} "
                f"GiB ({SERVER_KIB_PER_SESSION} KiB per ejabberd session in a cluster, "
                f"{CLIENT_KIB_PER_USER} KiB per amoc user, {SERVER_IDLE_MB} MB per ejabberd node, "
                f"{NODE_IDLE_MB} MB per amoc node); {lim.mem_available_kib / 2**20:.1f} GiB is "
                "available (85% of it usable)", most,
            ))  # fmt: skip
        return out


def make_plan(args: argparse.Namespace, lim: Limits, users: int | None = None) -> Plan:
    """The processes for --users (or `users`): as many as the open-file limit needs (at
    least two of each) unless --server-nodes and --slaves say."""
    users = args.users if users is None else users
    per_process = max(1, lim.open_files - FD_RESERVE)
    need = max(2, math.ceil(users / per_process))
    sources = _source_count(args.source_addresses)
    return Plan(users, args.server_nodes or need, args.slaves or need, sources)


def most_users(args: argparse.Namespace, lim: Limits) -> Plan:
    """The largest user count (to 500) that the machine allows, with the processes
    given (or as many as that count needs)."""
    low, high = 0, args.users
    while high - low > 500:
        mid = _round_down((low + high) / 2, 500)
        if make_plan(args, lim, mid).problems(lim):
            high = mid
        else:
            low = mid
    return make_plan(args, lim, low)


def _source_count(spec: str | None) -> int:
    if not spec:
        return 1
    import ipaddress

    if "/" in spec:
        return ipaddress.ip_network(spec, strict=False).num_addresses
    return len([s for s in spec.split(",") if s.strip()])


def refuse(plan: Plan, problems: list[tuple[str, int]], best: Plan) -> int:
    """Say why the plan cannot run and how many users can; exit status 2."""
    print(f"bench_scale: cannot run {plan.users} users on this machine:", file=sys.stderr)
    for why, _ in problems:
        print(f"  - {why}", file=sys.stderr)
    print(
        f"bench_scale: it can do at most {best.users} users, with {best.server_nodes} ejabberd "
        f"nodes and {best.slaves} amoc nodes (--users {best.users}); nothing was started",
        file=sys.stderr,
    )
    return 2


# -- processes --------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of `pid`; (nan, 0) when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan, 0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


def pss(pid: int) -> int:
    """Proportional set size of `pid` in bytes: its private pages, and its share of the pages
    it shares (the interpreter, the libraries) with other processes; 0 when unknown."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def machine_busy() -> float:
    """CPU seconds the machine spent busy so far (all cores, /proc/stat)."""
    parts = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class Group:
    """Processes measured together (the ejabberd nodes, the slaves, the master)."""

    pids: list[int]

    def cpu(self) -> float:
        return sum(proc_stat(p)[0] for p in self.pids)

    def rss(self) -> int:
        return sum(proc_stat(p)[1] for p in self.pids)

    def pss(self) -> int:
        return sum(pss(p) for p in self.pids)


class Release:
    """A release of amoc and the nodes this benchmark started from it."""

    def __init__(self, path: Path, keys: Path, reports: Path) -> None:
        self.path, self.keys, self.reports = path, keys, reports
        self.started: dict[str, int] = {}

    def amoc(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
        done = subprocess.run(
            [str(self.path / "bin" / "amoc"), *args], env={**os.environ, **(env or {})},
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"bin/amoc {' '.join(args)}: {(done.stdout + done.stderr)[-800:]}")
        return done.stdout

    def start(self, name: str, env: dict[str, str]) -> int:
        """`bin/amoc --name NAME start`; the node's pid."""
        self.amoc("--name", name, "start", env=env)
        pid = int(Home(self.path, name).pidfile.read_text())
        self.started[name] = pid
        return pid

    def eval(self, name: str, line: str, timeout: float = 120) -> Any:
        """Run a console line on node `name`; the JSON its last output line holds."""
        with ConsoleClient(Home(self.path, name).socket, timeout=10) as client:
            client.request({"op": "console"})
            answer = client.request({"op": "line", "line": line}, timeout=timeout)
        out = answer.get("out", "").strip().splitlines()
        try:
            return json.loads(out[-1])
        except (IndexError, ValueError):
            raise RuntimeError(f"{name}: {line[:80]!r} printed {out[-5:]} {answer}") from None

    def stop_all(self) -> None:
        """Stop every node started here (all at once): `bin/amoc stop`, then SIGKILL by pid
        if need be."""
        threads = [threading.Thread(target=self._stop, args=item) for item in self.started.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.started.clear()

    def _stop(self, name: str, pid: int) -> None:
        with contextlib.suppress(Exception):
            self.amoc("--name", name, "stop", timeout=60)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(Home(self.path, name).run_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def server(*args: str, timeout: float = 900) -> str:
    """tools/xmpp_server.py ARGS; its output (RuntimeError with it when it fails)."""
    done = subprocess.run([*SERVER_TOOL, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"xmpp_server {' '.join(args)}: {(done.stdout + done.stderr)[-1500:]}")
    return done.stdout


def sessions(http_port: int) -> int:
    """Sessions over the whole ejabberd cluster (mod_http_api on one node)."""
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    try:
        return session_count(conn)
    finally:
        conn.close()


# -- sampling while it runs ---------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    busy: float
    server_cpu: float
    slaves_cpu: float
    master_cpu: float
    server_rss: int
    slaves_rss: int
    sessions: int


@dataclass
class Sampler:
    """Every second: CPU and RSS of each group, the machine's busy time, ejabberd's sessions."""

    servers: Group
    slaves: Group
    master: Group
    http_port: int
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def take(self) -> Sample:
        try:
            count = sessions(self.http_port)
        except (OSError, ValueError, ServerError, http.client.HTTPException):
            count = -1
        s = Sample(time.monotonic(), machine_busy(), self.servers.cpu(), self.slaves.cpu(),
                   self.master.cpu(), self.servers.rss(), self.slaves.rss(), count)  # fmt: skip
        self.samples.append(s)
        return s

    def run(self) -> None:
        while not self._stop.wait(1.0):
            self.take()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join(15)

    def near(self, t: float) -> Sample:
        return min(self.samples, key=lambda s: abs(s.t - t))

    def peak_sessions(self) -> int:
        return max((s.sessions for s in self.samples), default=-1)

    def login_rate(self, users: int) -> tuple[float, Sample, Sample]:
        """Sessions per second while the count rose from 10% to 90% of `users` (ejabberd's
        view: the logins themselves, not do's own start), and those two samples."""
        low = next((s for s in self.samples if s.sessions >= 0.1 * users), None)
        high = next((s for s in self.samples if s.sessions >= 0.9 * users), None)
        if low is None or high is None or high.t <= low.t:
            return math.nan, self.samples[0], self.samples[-1]
        return (high.sessions - low.sessions) / (high.t - low.t), low, high


def cores(a: Sample, b: Sample, attr: str) -> float:
    seconds = b.t - a.t
    return (getattr(b, attr) - getattr(a, attr)) / seconds if seconds > 0 else math.nan


# -- the run ------------------------------------------------------------------------------------


DO_LINE = (
    "import json, time as _t; _s = _t.monotonic(); "
    "amoc_dist.do('xmpp_one_to_one', 1, {n}, comment='bench_scale', settings={settings!r})\n"
    # Every user started: running, or done already (a user whose login failed is done).
    "_d = _s + {wait}; _u = status()['users']\n"
    "while _u['running'] + _u['finished'] < {n} and _t.monotonic() < _d:\n"
    "    _t.sleep(0.1); _u = status()['users']\n"
    "print(json.dumps([_t.monotonic() - _s, _u['running']]))\n"
)
METRICS_LINE = "import json; print(json.dumps(dict(metrics.show())))"
TTD_LINE = (
    "import json; print(json.dumps(metrics.REGISTRY.snapshot()['histograms'].get('xmpp.ttd_ms')))"
)
TIMED_STATUS = (
    "import json, time as _t; _d = []\n"
    "for _i in range(5):\n"
    "    _s = _t.perf_counter(); status(); _d.append(_t.perf_counter() - _s)\n"
    "print(json.dumps(_d))\n"
)
TIMED_WATCH = (
    "import io, json, contextlib, time as _t; _d = []\n"
    "for _i in range(3):\n"
    "    _b = io.StringIO(); _s = _t.perf_counter()\n"
    "    with contextlib.redirect_stdout(_b): watch(0.01)\n"
    "    _d.append(_t.perf_counter() - _s)\n"
    "print(json.dumps(_d))\n"
)
STATE_LINE = (
    "import json; _st = status(); "
    "print(json.dumps([_st['state'], _st['users']['running'], _st['users']['finished']]))"
)


@dataclass
class Cluster:
    """The ejabberd cluster this run made."""

    ports: list[int]
    http_ports: list[int]
    pids: list[int]


def start_servers(plan: Plan, busy_wait: bool) -> Cluster:
    """Start the ejabberd cluster and register the users (on the first node, before joining)."""
    port = free_ports(plan.server_nodes, 25222)
    http_port = free_ports(plan.server_nodes, port + plan.server_nodes + 100)
    # No MAM, no offline storage: neither is what this measures, and in a mnesia cluster
    # offline storage costs every user's first presence a transaction over all the nodes
    # (at 400 logins/s on 6 nodes mnesia's queue grew to 125 000 and presences came back
    # after minutes). Nobody here sends to a user who is not online: the first message goes
    # out one interval after the login.
    flags = ["--no-mam", "--no-offline", "--busy-wait" if busy_wait else "--no-busy-wait"]
    began = time.monotonic()
    out = server("start", "--name", CLUSTER, "--nodes", str(plan.server_nodes), "--port",
                 str(port), "--http-port", str(http_port), *flags, "--first", "1", "--last",
                 str(plan.users))  # fmt: skip
    print(
        f"ejabberd cluster of {plan.server_nodes} nodes, {plan.users} users registered, in "
        f"{time.monotonic() - began:.0f} s",
        flush=True,
    )
    for line in out.splitlines():
        if line.startswith("registered"):
            print("  " + line, flush=True)
    pids = [int(p) for p in server("pid", "--name", CLUSTER).strip().split(",")]
    n = plan.server_nodes
    return Cluster(list(range(port, port + n)), list(range(http_port, http_port + n)), pids)


def committed_tree(work: Path) -> tuple[Path, str]:
    """HEAD's tree in work/src (with the cached charting library) and its commit: the release
    is then of what is committed, not of whatever the checkout holds at that moment."""
    src = work / "src"
    src.mkdir()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    tree = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True,
                          check=True, timeout=60).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(src)], input=tree, check=True, timeout=60)
    cache = ROOT / "_build" / "echarts"
    if cache.is_dir():
        shutil.copytree(cache, src / "_build" / "echarts")
    return src, commit


def build_release(work: Path, given: str | None, working_tree: bool) -> Release:
    """--release, or a release built into the work directory (of HEAD, or of the checkout
    with --working-tree); keys of its own."""
    keys, reports = work / "keys", work / "reports"
    if given:
        rel = Release(Path(given).resolve(), keys, reports)
    else:
        src, what = ROOT, "the working tree"
        if not working_tree:
            src, commit = committed_tree(work)
            what = f"commit {commit}"
        path = work / "amoc"
        subprocess.run([str(src / "tools" / "release.sh")],
                       env={**os.environ, "REL": str(path), "REPORTS": str(reports)},
                       check=True, capture_output=True, timeout=600)  # fmt: skip
        rel = Release(path, keys, reports)
        print(f"amoc release of {what} built", flush=True)
    rel.amoc("keys", str(keys))
    return rel


def start_amoc(rel: Release, plan: Plan) -> tuple[int, list[int]]:
    """The master and the slaves, as a user starts them; (master pid, slave pids)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    env = {
        "AMOC_CLUSTER_BIND": endpoint,
        "AMOC_CLUSTER_MASTER": endpoint,
        "AMOC_CLUSTER_KEYS": str(rel.keys),
        "AMOC_REPORT_DIR": str(rel.reports),
    }
    master = rel.start(f"{PREFIX}_master", {**env, "AMOC_CLUSTER_ROLE": "master"})
    slaves = [rel.start(f"{PREFIX}_s{i + 1}", {**env, "AMOC_CLUSTER_ROLE": "slave"})
              for i in range(plan.slaves)]  # fmt: skip
    deadline = time.monotonic() + 60
    while (
        rel.eval(f"{PREFIX}_master", "import json; print(json.dumps(status()['nodes']['up']))")
        < plan.slaves
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{plan.slaves} slaves did not join the master within 60 s")
        time.sleep(0.5)
    return master, slaves


def run(args: argparse.Namespace, plan: Plan, work: Path, holder: dict[str, Any]) -> dict[str, Any]:
    """Start everything, run the scenario, measure; the figures (`holder` keeps what was
    started, for the caller's cleanup)."""
    began = time.monotonic()
    server("remove", "--name", CLUSTER, timeout=120)  # this benchmark's, left by a killed run

    # The server cluster registers its users while the release builds and the nodes start.
    def servers() -> None:
        try:
            holder["cluster"] = start_servers(plan, args.busy_wait)
        except BaseException as exc:  # re-raised in the main thread
            holder["error"] = exc

    thread = holder["servers"] = threading.Thread(target=servers, daemon=True)
    thread.start()
    try:
        rel = build_release(work, args.release, args.working_tree)
        holder["release"] = rel
        master_pid, slave_pids = start_amoc(rel, plan)
        print(f"amoc master and {plan.slaves} slaves up", flush=True)
    finally:
        thread.join()
    if "error" in holder:
        raise holder["error"]
    cluster: Cluster = holder["cluster"]
    master = f"{PREFIX}_master"
    print(f"set up in {time.monotonic() - began:.0f} s", flush=True)

    sampler = Sampler(Group(cluster.pids), Group(slave_pids), Group([master_pid]),
                      cluster.http_ports[0])  # fmt: skip
    idle = sampler.take()
    idle_pss = sampler.slaves.pss()
    settings: dict[str, Any] = {
        "xmpp_servers": [f"127.0.0.1:{p}" for p in cluster.ports],
        "xmpp_sasl": "PLAIN",
        "messages_per_user": args.messages,
        "message_interval": int(args.interval * 1000),
        "user_rate": args.rate * 60.0,
        "repeat_num": 1,
        "receive_timeout": 60_000,
        # A ramp above what the server takes queues logins (and the echo of each user's
        # first presence): give them time rather than fail them.
        "xmpp_connect_timeout": 120_000,
        "xmpp_reply_timeout": 120_000,
    }
    if args.source_addresses:
        settings["xmpp_source_addresses"] = args.source_addresses
    ramp_limit = plan.users / args.rate * 3 + 60
    with sampler.running():
        t_do = time.monotonic()
        line = DO_LINE.format(n=plan.users, settings=settings, wait=ramp_limit)
        ramp, running = rel.eval(master, f"exec({line!r})", timeout=ramp_limit + 60)
        print(f"do -> {running} of {plan.users} users running: {ramp:.1f} s", flush=True)
        login_rate, ramp_a, ramp_b = sampler.login_rate(plan.users)
        # The steady window: every user connected, the first messages flowing.
        first_stop = args.interval * args.messages - args.window - 5
        start_w = t_do + max(ramp + 5, min(ramp + 2 * args.interval, first_stop))
        _sleep_until(start_w)
        m0, h0, w0 = rel.eval(master, METRICS_LINE), rel.eval(master, TTD_LINE), sampler.take()
        peak_pss = sampler.slaves.pss()
        held = int(rel.eval(master, STATE_LINE)[1])  # the users the memory figures are of
        _sleep_until(start_w + args.window)
        m1, h1, w1 = rel.eval(master, METRICS_LINE), rel.eval(master, TTD_LINE), sampler.take()
        if w1.t - t_do > args.interval * args.messages:
            print("the steady window reaches the first users' logouts: raise --messages",
                  flush=True)  # fmt: skip
        status_s = rel.eval(master, f"exec({TIMED_STATUS!r})")
        watch_s = rel.eval(master, f"exec({TIMED_WATCH!r})")
        print(f"steady window of {w1.t - w0.t:.0f} s measured", flush=True)
        # Then every user sends the rest, gets its neighbour's and leaves.
        # The last user logs in at the end of the ramp, sends from one to two intervals later
        # and for messages - 1 intervals more, then waits for a neighbour up to an interval
        # behind it.
        life = args.interval * (args.messages + 2) + 60 + ramp
        deadline = t_do + life
        state = rel.eval(master, STATE_LINE)
        while state[0] != "finished" and time.monotonic() < deadline:
            time.sleep(5)
            state = rel.eval(master, STATE_LINE)
        final = rel.eval(master, METRICS_LINE)
        rel.eval(master, "import json; amoc_dist.stop(); print(json.dumps(1))")
    peak = max(sampler.samples, key=lambda s: s.slaves_rss)
    return {
        "plan": plan, "rate": args.rate, "running": running, "ramp": ramp,
        "login_rate": login_rate,
        "sessions": sampler.peak_sessions(), "idle": idle, "peak": peak,
        "server_peak": max(s.server_rss for s in sampler.samples),
        "pss": (idle_pss, peak_pss), "held": held,
        "ramp_cores": {k: cores(ramp_a, ramp_b, k)
                       for k in ("busy", "server_cpu", "slaves_cpu", "master_cpu")},
        "window": (w0, w1, m0, m1), "ttd_window": _ttd(h1, h0), "status_s": status_s,
        "watch_s": watch_s, "final": final, "state": state,
    }  # fmt: skip


def _ttd(newer: dict[str, Any] | None, older: dict[str, Any] | None) -> dict[str, Any]:
    """TTD p50 / p99 / max of the messages received between two snapshots."""
    if not newer:
        return {}
    return describe(difference(newer, older or None))


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


# -- the table ----------------------------------------------------------------------------------


def _count(metrics: dict[str, Any], name: str) -> float:
    value = metrics.get(name, 0)
    return float(value) if isinstance(value, int | float) else 0.0


def limited_by(rate: float, achieved: float, c: dict[str, float]) -> str:
    """What held the login rate: the arrival rate asked for, or the cores (and whose); with
    the CPU each side spent per login and the rate at which the cores would run out."""
    n = os.cpu_count() or 1
    server_ms = 1000 * c["server_cpu"] / achieved if achieved > 0 else math.nan
    client_ms = 1000 * (c["slaves_cpu"] + c["master_cpu"]) / achieved if achieved > 0 else math.nan
    share = (f"ejabberd {c['server_cpu']:.2f} cores ({server_ms:.1f} ms of CPU per login), "
             f"amoc {c['slaves_cpu'] + c['master_cpu']:.2f} ({client_ms:.1f} ms); "
             f"{c['busy']:.2f} of the {n} cores busy")  # fmt: skip
    if achieved >= 0.95 * rate:
        most = 1000 * n / (server_ms + client_ms)
        part = server_ms / (server_ms + client_ms)
        return (f"the arrival rate asked ({rate:.0f}/s); {share}: the cores would run out "
                f"near {most:.0f}/s, {100 * part:.0f}% of them the server's")  # fmt: skip
    side = "server" if server_ms >= client_ms else "client"
    return f"{side} cores ({share})"


def _ttd_text(ttd: dict[str, Any]) -> str:
    return (f"{ttd.get('p50', math.nan):.2f} / {ttd.get('p99', math.nan):.2f} / "
            f"{ttd.get('max', math.nan):.1f} ms ({ttd.get('count', 0):.0f} messages)")  # fmt: skip


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def _pss_text(both: tuple[int, int], users: int) -> str:
    idle, peak = both
    return (f"{_kib(peak / users)} (shared pages counted once: {peak / 2**20:.0f} MiB; "
            f"{_kib((peak - idle) / users)} above idle)")  # fmt: skip


def _times(seconds: list[float]) -> str:
    ms = [v * 1000 for v in seconds]
    return f"{statistics.median(ms):.1f} ms median, {max(ms):.1f} ms max of {len(ms)}"


def table(f: dict[str, Any]) -> list[str]:
    """The printed table, one row per figure."""
    plan: Plan = f["plan"]
    final = f["final"]
    w0, w1, m0, m1 = f["window"]
    seconds = w1.t - w0.t

    def windowed(name: str) -> float:
        return (_count(m1, name) - _count(m0, name)) / seconds

    out_b, in_b = windowed("cluster.control.bytes_out"), windowed("cluster.control.bytes_in")
    peak, idle = f["peak"], f["idle"]
    server_peak = f["server_peak"]
    above = peak.slaves_rss - idle.slaves_rss
    held = max(1, f.get("held") or plan.users)
    sessions = max(f["sessions"], 1)
    login_p99 = (final.get("xmpp.login_time_ms") or {}).get("p99", math.nan)
    sent, received = _count(final, "xmpp.messages.sent"), _count(final, "xmpp.messages.received")
    failed, missing = _count(final, "xmpp.logins.failed"), _count(final, "xmpp.messages.missing")
    errors = _count(final, "users.failed")
    rows = [
        ("users", f"{plan.users} over {plan.server_nodes} ejabberd nodes (one cluster) and "
                  f"{plan.slaves} amoc slave nodes + master"),
        ("connected at peak", f"{f['running']} running (amoc), "
                              f"{f['sessions']} sessions (ejabberd)"),
        ("logins/s over the ramp", f"{f['login_rate']:.0f} (ejabberd's sessions from 10% to 90%; "
                                   f"asked {f['rate']:.0f}/s; login p99 {login_p99:.0f} ms)"),
        ("ramp limited by", limited_by(f["rate"], f["login_rate"], f["ramp_cores"])),
        # Per user running when the steady window began (all of them in a clean run).
        ("memory per user, amoc nodes", f"{_kib(peak.slaves_rss / held)} "
                                        f"({peak.slaves_rss / 2**20:.0f} MiB over {plan.slaves} "
                                        f"nodes, {held} users running; {_kib(above / held)} "
                                        "above their idle RSS)"),
        ("memory per user, amoc nodes, PSS", _pss_text(f["pss"], held)),
        ("server memory per session", f"{_kib((server_peak - idle.server_rss) / sessions)} "
                                      f"above idle ({server_peak / 2**20:.0f} MiB over "
                                      f"{plan.server_nodes} nodes)"),
        ("TTD p50 / p99 / max, steady", _ttd_text(f["ttd_window"])),
        ("TTD p50 / p99 / max, whole run", _ttd_text(final.get("xmpp.ttd_ms") or {})),
        ("messages sent / received", f"{sent:.0f} / {received:.0f} (logins failed {failed:.0f}, "
                                     f"messages missing {missing:.0f}, users failed {errors:.0f})"),
        ("master CPU, steady", f"{100 * cores(w0, w1, 'master_cpu'):.1f}% of a core ({seconds:.0f} "
                               f"s window, {windowed('xmpp.messages.sent'):.0f} messages/s sent)"),
        ("control plane, steady", f"{out_b:.0f} B/s out, {in_b:.0f} B/s in "
                                  f"({(out_b + in_b) / plan.slaves:.0f} B/s per slave)"),
        ("do -> all running", f"{f['ramp']:.1f} s"),
        (f"status() at {f['running']} users", _times(f["status_s"])),
        (f"watch() frame at {f['running']} users", _times(f["watch_s"])),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return [f"| {k.ljust(width)} | {v} |" for k, v in rows]


# -- main ---------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--server-nodes", type=int, default=0, help="ejabberd nodes (0: enough)")
    p.add_argument("--slaves", type=int, default=0, help="amoc slave nodes (0: enough)")
    p.add_argument("--rate", type=float, default=200.0, help="users arriving per second")
    p.add_argument("--interval", type=float, default=100.0, help="s between a user's messages")
    p.add_argument("--messages", type=int, default=6, help="messages per user")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--window", type=float, default=60.0, help="s of the steady window")
    p.add_argument("--timeout", type=float, default=2100.0, help="s the whole run may take")
    p.add_argument("--release", default=None, help="a built release (default: build one)")
    p.add_argument("--working-tree", action="store_true", help="release the checkout as it is")
    p.add_argument("--source-addresses", default=None, help="xmpp_source_addresses")
    p.add_argument("--busy-wait", action="store_true", help="ejabberd's schedulers spin")
    return p


class Timeout(Exception):
    pass


def _on_alarm(sig: int, _frame: Any) -> None:
    if sig == signal.SIGALRM:
        raise Timeout("the run took longer than --timeout")
    raise Timeout(f"stopped by signal {sig}")


def main() -> int:
    args = parser().parse_args()
    if args.users < 2 or args.users % 2:
        print("bench_scale: --users must be an even number >= 2 (users chat in pairs)",
              file=sys.stderr)  # fmt: skip
        return 2
    limits = Limits.read()
    plan = make_plan(args, limits)
    problems = plan.problems(limits)
    if problems:
        return refuse(plan, problems, most_users(args, limits))
    ramp = args.users / args.rate
    if args.interval * args.messages < ramp + args.window + 10:
        print(f"bench_scale: the ramp (about {ramp:.0f} s at --rate {args.rate:.0f}) and the "
              f"window ({args.window:.0f} s) must end before the first users stop sending "
              f"({args.messages} messages every {args.interval:.0f} s): raise --messages or "
              "--rate, or shorten --window", file=sys.stderr)  # fmt: skip
        return 2
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_alarm)
    signal.alarm(int(args.timeout))
    work = Path(tempfile.mkdtemp(prefix="amoc-bench-scale-"))
    holder: dict[str, Any] = {}
    try:
        figures = run(args, plan, work, holder)
        signal.alarm(0)
        lines = table(figures)
        print(f"\nbench_scale {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print("\n".join(lines), flush=True)
        return 0
    finally:
        signal.alarm(0)
        cleanup(work, holder, args.keep)


def cleanup(work: Path, holder: dict[str, Any], keep: bool = False) -> None:
    """Stop the amoc nodes and the ejabberd cluster this run started; remove its files."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not cut it short
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    rel: Release | None = holder.get("release")
    if rel is not None:
        rel.stop_all()
    thread: threading.Thread | None = holder.get("servers")
    if thread is not None:
        thread.join(300)  # a cluster still starting is removed once it has started
        with contextlib.suppress(Exception):
            server("remove", "--name", CLUSTER, timeout=120)
    if keep:
        print(f"bench_scale: everything it started is stopped; its files are in {work}")
        return
    shutil.rmtree(work, ignore_errors=True)
    print("bench_scale: everything it started is stopped and removed", flush=True)


if __name__ == "__main__":
    sys.exit(main())
