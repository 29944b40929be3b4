"""Cluster overhead: time from `do` to all users running, 3 slaves against one local node.

    .venv/bin/python bench/bench_cluster.py [--users 10000] [--slaves 3]

Builds a release (tools/release.sh) in a temporary directory, makes the cluster's keys,
then runs two cases of the dummy scenario with interarrival 0 (users wait, so they stay):
- local: one node, `amoc_local.do("dummy", 1, N)` until N run;
- cluster: a master and `--slaves` slave processes on loopback, `amoc_dist.do` until N run
  over the cluster (as the master sees it from heartbeats).
Each case is timed inside its node (the console line does `do` and waits). For the cluster
it also prints the control plane's cost: bytes the master sent and received per user, and
the master's CPU per 1000 users during the case. Every wait is bounded; every node started
is stopped.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amoc.console_socket import ConsoleClient  # noqa: E402
from amoc.home import Home  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid`."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Release:
    """A built release and the nodes started from it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started: list[str] = []

    def amoc(self, *args: str, env: dict[str, str] | None = None) -> None:
        subprocess.run(
            [str(self.path / "bin" / "amoc"), *args],
            env={**os.environ, **(env or {})},
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self, name: str, env: dict[str, str]) -> int:
        self.amoc("--name", name, "start", env=env)
        self.started.append(name)
        return int((self.path / "run" / name / "node.pid").read_text())

    def eval(self, name: str, line: str, timeout: float = 300) -> Any:
        """Evaluate a Python line on node `name`'s console; its printed literal."""
        with ConsoleClient(Home(self.path, name).socket, timeout=10) as client:
            client.request({"op": "console"})
            answer = client.request({"op": "line", "line": line}, timeout=timeout)
        out = answer.get("out", "").strip().splitlines()
        if not out:
            raise RuntimeError(f"{name}: no output for {line!r}: {answer}")
        try:
            return ast.literal_eval(out[-1])
        except (ValueError, SyntaxError):
            raise RuntimeError(f"{name}: {line!r} printed {out[-3:]}") from None

    def stop_all(self) -> None:
        for name in self.started:
            subprocess.run(
                [str(self.path / "bin" / "amoc"), "--name", name, "stop"],
                capture_output=True,
                timeout=60,
                check=False,
            )
        self.started.clear()


TIMED_LOCAL = (
    "import time as _t; _s = _t.monotonic(); amoc_local.do('dummy', 1, {n}); "
    "_d = _t.monotonic() + 120\n"
    "while status()['users']['running'] < {n} and _t.monotonic() < _d: _t.sleep(0.01)\n"
)
TIMED_DIST = (
    "import time as _t; _s = _t.monotonic(); amoc_dist.do('dummy', 1, {n}); "
    "amoc_dist.wait({n}, 120)\n"
)


def local_case(rel: Release, users: int, env: dict[str, str]) -> float:
    rel.start("bench_local", env)
    try:
        seconds = rel.eval(
            "bench_local",
            "exec(" + repr(TIMED_LOCAL.format(n=users)) + ") or print(_t.monotonic() - _s)",
        )
        running = rel.eval("bench_local", "print(status()['users']['running'])")
        assert running == users, f"local: {running} of {users} users run"
        return float(seconds)
    finally:
        rel.stop_all()


def cluster_case(
    rel: Release, users: int, slaves: int, env: dict[str, str]
) -> tuple[float, dict[str, Any]]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cenv = {
        **env,
        "AMOC_CLUSTER_BIND": endpoint,
        "AMOC_CLUSTER_MASTER": endpoint,
        "AMOC_CLUSTER_KEYS": str(rel.path / "keys"),
    }
    master_pid = rel.start("bench_master", {**cenv, "AMOC_CLUSTER_ROLE": "master"})
    try:
        for i in range(slaves):
            rel.start(f"bench_slave{i}", {**cenv, "AMOC_CLUSTER_ROLE": "slave"})
        deadline = time.monotonic() + 30
        while rel.eval("bench_master", "print(status()['nodes']['up'])") < slaves:
            if time.monotonic() > deadline:
                raise RuntimeError("slaves did not join within 30 s")
            time.sleep(0.2)
        before = rel.eval(
            "bench_master",
            "print((metrics.show().get('cluster.control.bytes_out', 0), "
            "metrics.show().get('cluster.control.bytes_in', 0)))",
        )
        cpu0 = cpu_seconds(master_pid)
        seconds = rel.eval(
            "bench_master",
            "exec(" + repr(TIMED_DIST.format(n=users)) + ") or print(_t.monotonic() - _s)",
        )
        cpu1 = cpu_seconds(master_pid)
        after = rel.eval(
            "bench_master",
            "print((metrics.show().get('cluster.control.bytes_out', 0), "
            "metrics.show().get('cluster.control.bytes_in', 0), status()['users']['running']))",
        )
        assert after[2] == users, f"cluster: {after[2]} of {users} users run"
        cost = {
            "bytes_out_per_user": (after[0] - before[0]) / users,
            "bytes_in_per_user": (after[1] - before[1]) / users,
            "master_cpu_ms_per_1000": (cpu1 - cpu0) * 1000 / users * 1000,
        }
        return float(seconds), cost
    finally:
        rel.stop_all()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--slaves", type=int, default=3)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="amoc-bench-cluster-"))
    try:
        path = tmp / "amoc"
        subprocess.run(
            [str(ROOT / "tools" / "release.sh")],
            env={**os.environ, "REL": str(path)},
            check=True,
            capture_output=True,
        )
        rel = Release(path)
        rel.amoc("keys", str(path / "keys"))
        env = {"AMOC_INTERARRIVAL": "0", "AMOC_DUMMY_WAIT": "600000"}
        local = local_case(rel, args.users, env)
        print(f"local   users={args.users} do->all running={local:.2f}s", flush=True)
        dist, cost = cluster_case(rel, args.users, args.slaves, env)
        print(
            f"cluster users={args.users} slaves={args.slaves} do->all running={dist:.2f}s "
            f"control bytes/user out={cost['bytes_out_per_user']:.1f} "
            f"in={cost['bytes_in_per_user']:.1f} "
            f"master cpu={cost['master_cpu_ms_per_1000']:.1f}ms/1000 users",
            flush=True,
        )
        print(f"ratio   cluster/local x{dist / local:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
