"""Fabric tasks for an amoc cluster deployed by `make deploy` (see mk/deploy.mk).

    fab start               the master, then each slave host's nodes s1..sN, in parallel
    fab stop                every slave node, then the master
    fab status              each host's nodes and their users
    fab logs [--lines 40] [--follow]
    fab console             the master's console over ssh (Ctrl+D detaches)

The hosts come from the Ansible inventory AMOC_INVENTORY (default `hosts`, with the
group_vars/amoc next to it), read by `ansible-inventory`. The tasks log in as the run user
(amoc_user, whom `make prepare` made) with the host's ssh key (ansible_ssh_private_key_file,
or AMOC_SSH_KEY for every host). A slave host runs amoc_slave_nodes nodes (default: one per
core), named sN@<its host name>.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fabric import Connection, task
from invoke.exceptions import Exit

HERE = Path(__file__).resolve().parent
MASTER = "amoc_master"  # the master's installation, in the run user's home
SLAVES = "amoc"  # the slaves' installation
JOIN_TIMEOUT = 60.0  # s for every started slave node to show up on the master

T = TypeVar("T")


@dataclass(frozen=True)
class Host:
    """One machine of the inventory, as the tasks reach it."""

    name: str
    address: str
    port: int
    user: str
    key: str | None
    ssh_args: tuple[str, ...] = ()
    slave_nodes: int | None = None

    def connect(self) -> Connection:
        """A Fabric connection as the run user."""
        kwargs: dict[str, Any] = {"key_filename": [self.key]} if self.key else {}
        return Connection(
            self.address, user=self.user, port=self.port, connect_timeout=15, connect_kwargs=kwargs
        )

    def run(self, command: str, timeout: float = 120) -> tuple[int, str]:
        """Run a shell command as the run user; its exit code and output (both streams)."""
        try:
            with self.connect() as conn:
                done = conn.run(command, hide=True, warn=True, timeout=timeout, pty=False)
        except Exit:
            raise
        except Exception as exc:  # paramiko and socket errors have no common base
            raise Exit(f"{self.name} ({self.user}@{self.address}:{self.port}): {exc}") from None
        return done.exited, (done.stdout + done.stderr).rstrip()

    def ssh_command(self, remote: str) -> list[str]:
        """The OpenSSH command line that runs `remote` on the host with a terminal."""
        args = ["ssh", "-t", "-p", str(self.port), *self.ssh_args]
        if self.key:
            args += ["-i", self.key]
        return [*args, f"{self.user}@{self.address}", remote]


@dataclass(frozen=True)
class Cluster:
    """The inventory: one master host, the slave hosts."""

    master: Host
    slaves: list[Host]


def _ansible_inventory() -> str:
    beside = Path(sys.executable).parent / "ansible-inventory"
    return str(beside) if beside.exists() else "ansible-inventory"


def load_cluster(inventory: str | None = None) -> Cluster:
    """Read the inventory (with its group_vars) through ansible-inventory."""
    inventory = inventory or os.environ.get("AMOC_INVENTORY") or "hosts"
    if not Path(inventory).exists():
        raise Exit(f"the inventory {inventory!r} does not exist (AMOC_INVENTORY / INVENTORY=)")
    env = {"ANSIBLE_CONFIG": str(HERE / "ansible" / "ansible.cfg"), **os.environ}
    done = subprocess.run(
        # The playbooks' directory, as for ansible-playbook: else the current directory's
        # group_vars/ (this checkout's) would override the ones next to the inventory.
        [_ansible_inventory(), "-i", inventory, "--playbook-dir", str(HERE / "ansible"), "--list"],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise Exit(f"the inventory {inventory!r} cannot be read:\n{done.stderr.strip()}")
    data = json.loads(done.stdout)
    hostvars = data.get("_meta", {}).get("hostvars", {})

    def hosts(group: str) -> list[str]:
        names = list(data.get(group, {}).get("hosts", []))
        for child in data.get(group, {}).get("children", []):
            names += [n for n in hosts(child) if n not in names]
        return names

    masters, slaves = hosts("amoc_master"), hosts("amoc_slaves")
    if len(masters) != 1 or not slaves:
        raise Exit(
            f"the inventory {inventory!r} needs exactly one host in [amoc_master] (it has "
            f"{len(masters)}) and at least one in [amoc_slaves] (it has {len(slaves)})"
        )
    key_override = os.environ.get("AMOC_SSH_KEY") or None

    def host(name: str) -> Host:
        hv = hostvars.get(name, {})
        key = key_override or hv.get("ansible_ssh_private_key_file")
        ssh_args = shlex.split(str(hv.get("ansible_ssh_common_args") or ""))
        ssh_args += shlex.split(str(hv.get("ansible_ssh_extra_args") or ""))
        nodes = hv.get("amoc_slave_nodes")
        if nodes is not None and (not isinstance(nodes, int) or isinstance(nodes, bool)):
            raise Exit(f"host {name}: amoc_slave_nodes = {nodes!r} must be an integer >= 1")
        return Host(
            name=name,
            address=str(hv.get("ansible_host") or name),
            port=int(hv.get("ansible_port") or 22),
            user=str(hv.get("amoc_user") or "amoc"),
            key=os.path.expanduser(key) if key else None,
            ssh_args=tuple(ssh_args),
            slave_nodes=nodes,
        )

    return Cluster(host(masters[0]), [host(name) for name in slaves])


def parallel(hosts: list[Host], work: Callable[[Host], T]) -> list[T]:
    """`work` on every host at once; the results in the hosts' order."""
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(hosts)))) as pool:
        return list(pool.map(work, hosts))


def _say(host: Host, text: str) -> None:
    for line in text.splitlines() or [""]:
        print(f"[{host.name}] {line}", flush=True)


# Shell snippets run on the hosts (POSIX sh, as the run user).
_RAISE_NOFILE = 'ulimit -n "$(ulimit -Hn)" 2>/dev/null || true'


def _need(install: str) -> str:
    return (
        f'test -x ~/{install}/bin/amoc || {{ echo "~/{install} is not deployed: run make deploy" '
        f">&2; exit 2; }}"
    )


def _start_master(host: Host) -> None:
    amoc = f"~/{MASTER}/bin/amoc --name master"
    code, out = host.run(
        f"{_need(MASTER)}; {_RAISE_NOFILE}; "
        f"if {amoc} status >/dev/null 2>&1; then echo \"node 'master' already running\"; "
        f"else {amoc} start; fi"
    )
    _say(host, out)
    if code != 0:
        raise Exit(f"the master did not start on {host.name}", code=1)


def _start_slaves(host: Host) -> tuple[str, list[str]]:
    count = str(host.slave_nodes) if host.slave_nodes else "$(nproc)"
    script = f"""{_need(SLAVES)}
{_RAISE_NOFILE}
uname -n
for i in $(seq 1 {count}); do
  ( if ~/{SLAVES}/bin/amoc --name s$i status >/dev/null 2>&1; then
      echo "node 's$i' already running"
    else ~/{SLAVES}/bin/amoc --name s$i start; fi ) &
done
failed=0
for job in $(jobs -p); do wait "$job" || failed=1; done
exit $failed"""
    code, out = host.run(script)
    hostname, _, rest = out.partition("\n")
    _say(host, rest)
    if code != 0:
        raise Exit(f"slave nodes did not all start on {host.name}", code=1)
    started = [line for line in rest.splitlines() if line.startswith("node 's")]
    names = [line.split("'")[1] for line in started]
    return hostname.strip(), names


def _cluster_nodes(master: Host) -> list[dict[str, Any]]:
    code, out = master.run(f"~/{MASTER}/bin/amoc --name master status --json")
    if code != 0:
        raise Exit(f"the master on {master.name} does not answer:\n{out}")
    cluster = json.loads(out).get("cluster") or {}
    return list(cluster.get("node", []))


@task
def start(c: Any) -> None:
    """Start the master, then every slave host's nodes; wait until all have joined."""
    cluster = load_cluster()
    _start_master(cluster.master)
    started = parallel(cluster.slaves, _start_slaves)
    expected = {f"{name}@{hostname}" for hostname, names in started for name in names}
    deadline = time.monotonic() + JOIN_TIMEOUT
    while True:
        up = {n["name"] for n in _cluster_nodes(cluster.master) if n.get("up")}
        if expected <= up:
            break
        if time.monotonic() > deadline:
            missing = ", ".join(sorted(expected - up))
            raise Exit(
                f"slave nodes not seen by the master after {JOIN_TIMEOUT:.0f} s: {missing} "
                f"(can the slaves reach the master's cluster_port?)"
            )
        time.sleep(0.5)
    print(
        f"cluster up: {len(expected)} slave nodes on {len(cluster.slaves)} hosts; "
        "make console opens the master's console"
    )


_STOP_ALL = """test -d ~/{install}/run || exit 0
for dir in ~/{install}/run/*/; do
  [ -f "$dir/node.pid" ] || continue
  ~/{install}/bin/amoc --name "$(basename "$dir")" stop &
done
failed=0
for job in $(jobs -p); do wait "$job"; rc=$?; [ $rc = 0 ] || [ $rc = 3 ] || failed=1; done
exit $failed"""


@task
def stop(c: Any) -> None:
    """Stop every slave node, then the master."""
    cluster = load_cluster()

    def stop_on(install: str) -> Callable[[Host], int]:
        def work(host: Host) -> int:
            code, out = host.run(_STOP_ALL.format(install=install))
            _say(host, out or "no node running")
            return code

        return work

    codes = [*parallel(cluster.slaves, stop_on(SLAVES)), stop_on(MASTER)(cluster.master)]
    if any(codes):
        raise Exit("some nodes did not stop (see above)", code=1)


_STATUS_ALL = """test -d ~/{install}/run || {{ echo "~/{install} is not deployed"; exit 0; }}
found=0
for dir in ~/{install}/run/*/; do
  [ -f "$dir/node.pid" ] || continue
  found=1
  ~/{install}/bin/amoc --name "$(basename "$dir")" status
done
[ $found = 1 ] || echo "no node running"
exit 0"""


@task
def status(c: Any) -> None:
    """Show every node of every host: running or not, and its users."""
    cluster = load_cluster()
    _say(cluster.master, cluster.master.run(_STATUS_ALL.format(install=MASTER))[1])
    for host, (_, out) in zip(
        cluster.slaves,
        parallel(cluster.slaves, lambda h: h.run(_STATUS_ALL.format(install=SLAVES))),
        strict=True,
    ):
        _say(host, out)


@task
def logs(c: Any, lines: int = 40, follow: bool = False) -> None:
    """Print the end of every node's log; --follow keeps printing (Ctrl+C ends)."""
    cluster = load_cluster()
    pairs = [(cluster.master, MASTER)] + [(h, SLAVES) for h in cluster.slaves]
    if not follow:
        for host, install in pairs:
            _say(host, host.run(f"tail -n {int(lines)} ~/{install}/log/*.log 2>&1")[1])
        return

    def tail(host: Host, install: str) -> None:
        class Prefixed:
            def write(self, text: str) -> None:
                _say(host, text.rstrip("\r\n").replace("\r", ""))

            def flush(self) -> None:
                pass

        with host.connect() as conn:  # a terminal: the remote tail ends when we leave
            conn.run(
                f"tail -n {int(lines)} -F ~/{install}/log/*.log",
                out_stream=Prefixed(),
                pty=True,
                warn=True,
            )

    threads = [threading.Thread(target=tail, args=pair, daemon=True) for pair in pairs]
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads):
            time.sleep(0.2)
    except KeyboardInterrupt:
        print()


@task
def console(c: Any) -> None:
    """Attach to the master's console over ssh, with a terminal (Ctrl+D detaches)."""
    master = load_cluster().master
    command = master.ssh_command(f"~/{MASTER}/bin/amoc --name master attach")
    sys.stdout.flush()
    os.execvp(command[0], command)
