"""Fabric tasks for an amoc cluster deployed by `make deploy` (see mk/deploy.mk).

    fab start               the master, then each slave host's nodes s1..sN, in parallel
    fab stop                every slave node, then the master
    fab restart             the master, then the slaves (on the release deployed last)
    fab status              each host's nodes, their users, and who runs an older release
    fab logs [--lines 40] [--follow]
    fab reports             the master's reports into reports/ beside the inventory
    fab run --scenario S --users N --duration D [--thresholds 'C; C'] [--settings 'K=V ...']
                            a headless run on the cluster (the master's bin/amoc run)
    fab console             the master's console over ssh (Ctrl+D detaches)

The hosts come from the Ansible inventory AMOC_INVENTORY (default `hosts`, with the
group_vars/amoc next to it), read by `ansible-inventory`. The tasks log in as the run user
(amoc_user, whom `make prepare` made) with the host's ssh key (ansible_ssh_private_key_file,
or AMOC_SSH_KEY for every host), and check host keys against AMOC_KNOWN_HOSTS when it is
set (a host whose key is not there is refused). A slave host runs amoc_slave_nodes nodes
(default: one per core), named sN@<its host name>.

A task goes on past a host it cannot reach or that fails, and ends with one line per host
and exit status 1 when any host failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import stat
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
from invoke.exceptions import CommandTimedOut, Exit
from paramiko import RejectPolicy

HERE = Path(__file__).resolve().parent
MASTER = "amoc_master"  # the master's installation, in the run user's home
SLAVES = "amoc"  # the slaves' installation
REPORTS = "amoc_reports"  # where the master writes its reports, in the run user's home
JOIN_TIMEOUT = 60.0  # s for every started slave node to show up on the master

T = TypeVar("T")


class HostError(Exception):
    """A host the tasks could not reach (its address, port, key or host key) or use."""


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
    known_hosts: str | None = None

    def connect(self) -> Connection:
        """A Fabric connection as the run user."""
        kwargs: dict[str, Any] = {"key_filename": [self.key]} if self.key else {}
        conn = Connection(
            self.address, user=self.user, port=self.port, connect_timeout=15, connect_kwargs=kwargs
        )
        if self.known_hosts:
            conn.client.load_host_keys(self.known_hosts)
            conn.client.set_missing_host_key_policy(RejectPolicy())
        return conn

    def where(self) -> str:
        """user@address:port, for messages."""
        return f"{self.user}@{self.address}:{self.port}"

    def run(self, command: str, timeout: float = 120) -> tuple[int, str]:
        """Run a shell command as the run user; its exit code and output (both streams)."""
        try:
            with self.connect() as conn:
                done = conn.run(command, hide=True, warn=True, timeout=timeout, pty=False)
        except Exit:
            raise
        except Exception as exc:  # paramiko and socket errors have no common base
            raise HostError(self.unreachable(exc)) from None
        return done.exited, (done.stdout + done.stderr).rstrip()

    def unreachable(self, exc: BaseException) -> str:
        """Why the host could not be reached, and what to do about it."""
        text = str(exc).strip() or type(exc).__name__
        if "known_hosts" in text or "host key" in text.lower() or "Host key" in text:
            text += (
                " (a host key this machine does not know yet, or one that changed: check it "
                "and add it to the known_hosts file, e.g. `ssh-keyscan -p "
                f"{self.port} {self.address} >> {self.known_hosts or '~/.ssh/known_hosts'}`; "
                "README, 'First contact with new hosts')"
            )
        return f"unreachable as {self.where()}: {text}"

    def ssh_command(self, remote: str) -> list[str]:
        """The OpenSSH command line that runs `remote` on the host with a terminal."""
        args = ["ssh", "-t", "-p", str(self.port)]
        if self.known_hosts:  # before the inventory's options: ssh takes the first one
            args += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        args += self.ssh_args
        if self.key:
            args += ["-i", self.key]
        return [*args, f"{self.user}@{self.address}", remote]


@dataclass(frozen=True)
class Cluster:
    """The inventory: one master host, the slave hosts."""

    master: Host
    slaves: list[Host]
    inventory: Path

    @property
    def hosts(self) -> list[Host]:
        """The master's host, then the slave hosts."""
        return [self.master, *self.slaves]


@dataclass
class Outcome:
    """What a task did on one host, in one line; `ok` False when the host failed."""

    host: Host
    ok: bool
    text: str


def _ansible_inventory() -> str:
    beside = Path(sys.executable).parent / "ansible-inventory"
    return str(beside) if beside.exists() else "ansible-inventory"


def group_vars_problem(inventory: Path) -> str | None:
    """Why an inventory cannot be used as it is: no group_vars/amoc beside it (or None)."""
    directory = (inventory if inventory.is_dir() else inventory.parent) / "group_vars"
    if any((directory / f"amoc{suffix}").exists() for suffix in ("", ".yml", ".yaml", ".json")):
        return None
    return (
        f"the inventory {str(inventory)!r} has no group_vars/amoc beside it "
        f"({directory / 'amoc'} is missing): copy this checkout's group_vars/amoc there "
        "(INVENTORY=path needs its group_vars/amoc next to it)"
    )


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
    problem = group_vars_problem(Path(inventory))
    if problem is not None:
        raise Exit(problem, code=2)
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
    known_hosts = os.environ.get("AMOC_KNOWN_HOSTS") or None
    if known_hosts is not None:
        if not Path(known_hosts).is_file():
            raise Exit(f"the known_hosts file {known_hosts!r} does not exist (KNOWN_HOSTS=)")
        known_hosts = str(Path(known_hosts).resolve())

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
            known_hosts=known_hosts,
        )

    return Cluster(host(masters[0]), [host(name) for name in slaves], Path(inventory))


def parallel(hosts: list[Host], work: Callable[[Host], T]) -> list[T]:
    """`work` on every host at once; the results in the hosts' order."""
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(hosts)))) as pool:
        return list(pool.map(work, hosts))


def on_host(work: Callable[[Host], Outcome]) -> Callable[[Host], Outcome]:
    """`work`, with a host that cannot be reached turned into a failed Outcome."""

    def guarded(host: Host) -> Outcome:
        try:
            return work(host)
        except HostError as exc:
            _say(host, str(exc))
            return Outcome(host, False, str(exc))

    return guarded


def summary(task_name: str, outcomes: list[Outcome]) -> None:
    """One line per host; exit status 1 when any host failed."""
    width = max(len(o.host.name) for o in outcomes)
    print(f"\n{task_name}: summary")
    for o in outcomes:
        print(f"  {o.host.name:<{width}}  {'ok    ' if o.ok else 'FAILED'}  {o.text}")
    failed = [o.host.name for o in outcomes if not o.ok]
    if failed:
        raise Exit(
            f"{task_name}: {len(failed)} of {len(outcomes)} hosts failed: {', '.join(failed)}",
            code=1,
        )


def _merge(*steps: list[Outcome]) -> list[Outcome]:
    """Per host, the outcomes of several steps in one: failed when any step failed."""
    merged: dict[str, Outcome] = {}
    for step in steps:
        for o in step:
            seen = merged.get(o.host.name)
            if seen is None:
                merged[o.host.name] = Outcome(o.host, o.ok, o.text)
            else:
                seen.ok, seen.text = seen.ok and o.ok, f"{seen.text}; {o.text}"
    return list(merged.values())


def _say(host: Host, text: str) -> None:
    for line in text.splitlines() or [""]:
        print(f"[{host.name}] {line}", flush=True)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


# Shell snippets run on the hosts (POSIX sh, as the run user).
_RAISE_NOFILE = 'ulimit -n "$(ulimit -Hn)" 2>/dev/null || true'


def _need(install: str) -> str:
    return (
        f'test -x ~/{install}/bin/amoc || {{ echo "~/{install} is not deployed: run make deploy" '
        f">&2; exit 2; }}"
    )


@on_host
def _start_master(host: Host) -> Outcome:
    amoc = f"~/{MASTER}/bin/amoc --name master"
    code, out = host.run(
        f"{_need(MASTER)}; {_RAISE_NOFILE}; "
        f"if {amoc} status >/dev/null 2>&1; then echo \"node 'master' already running\"; "
        f"else {amoc} start; fi"
    )
    _say(host, out)
    if code != 0:
        return Outcome(host, False, "the master did not start (see above)")
    already = "already running" in out
    return Outcome(host, True, "master already running" if already else "master started")


@dataclass
class SlavesStarted:
    """A slave host's start: its outcome, its host name and the nodes running there."""

    outcome: Outcome
    hostname: str = ""
    names: tuple[str, ...] = ()


def _start_slaves(host: Host) -> SlavesStarted:
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
    try:
        code, out = host.run(script)
    except HostError as exc:
        _say(host, str(exc))
        return SlavesStarted(Outcome(host, False, str(exc)))
    hostname, _, rest = out.partition("\n")
    _say(host, rest)
    started = [line for line in rest.splitlines() if line.startswith("node 's")]
    names = tuple(line.split("'")[1] for line in started)
    if code != 0:
        return SlavesStarted(Outcome(host, False, "slave nodes did not all start (see above)"))
    return SlavesStarted(
        Outcome(host, True, f"{_count(len(names), 'node')} up"), hostname.strip(), names
    )


def _master_status(master: Host) -> dict[str, Any] | None:
    """The master daemon's cluster status (None: it does not run)."""
    code, out = master.run(f"~/{MASTER}/bin/amoc --name master status --json")
    if code == 3:
        return None
    if code != 0:
        raise HostError(f"the master does not answer: {out}")
    return dict(json.loads(out).get("cluster") or {})


def _up(status: dict[str, Any]) -> set[str]:
    """The slave nodes a cluster status says are up."""
    return {str(n["name"]) for n in status.get("node", []) if n.get("up")}


def _cluster_nodes(master: Host) -> list[dict[str, Any]]:
    status = _master_status(master)
    if status is None:
        raise HostError("the master does not answer: it is not running")
    return list(status.get("node", []))


def _start(cluster: Cluster, master: Outcome | None = None) -> list[Outcome]:
    """The master (unless `master` says how its start went), then the slaves (they dial it
    by themselves); wait until they have joined it."""
    master = master or _start_master(cluster.master)
    started = parallel(cluster.slaves, _start_slaves)
    outcomes = [master, *(s.outcome for s in started)]
    if not master.ok:
        return outcomes
    expected = {
        f"{name}@{s.hostname}": s.outcome for s in started if s.outcome.ok for name in s.names
    }
    deadline = time.monotonic() + JOIN_TIMEOUT
    while expected:
        try:
            up = {n["name"] for n in _cluster_nodes(cluster.master) if n.get("up")}
        except HostError as exc:
            master.ok, master.text = False, f"{master.text}; {exc}"
            return outcomes
        if set(expected) <= up:
            break
        if time.monotonic() > deadline:
            for name in sorted(set(expected) - up):
                outcome = expected[name]
                outcome.ok = False
                outcome.text += (
                    f"; {name} not seen by the master after {JOIN_TIMEOUT:.0f} s "
                    "(can the slaves reach the master's cluster_port?)"
                )
            break
        time.sleep(0.5)
    if all(o.ok for o in outcomes):
        print(
            f"cluster up: {_count(len(expected), 'slave node')} on "
            f"{_count(len(cluster.slaves), 'host')}; make console opens the master's console"
        )
    return outcomes


@task
def start(c: Any) -> None:
    """Start the master, then every slave host's nodes; wait until all have joined."""
    summary("start", _start(load_cluster()))


_STOP_ALL = """test -d ~/{install}/run || {{ echo "~/{install} is not deployed"; exit 0; }}
for dir in ~/{install}/run/*/; do
  [ -f "$dir/node.pid" ] || continue
  ~/{install}/bin/amoc --name "$(basename "$dir")" stop &
done
failed=0
for job in $(jobs -p); do wait "$job"; rc=$?; [ $rc = 0 ] || [ $rc = 3 ] || failed=1; done
exit $failed"""


def _stopper(install: str) -> Callable[[Host], Outcome]:
    @on_host
    def work(host: Host) -> Outcome:
        code, out = host.run(_STOP_ALL.format(install=install))
        _say(host, out or "no node running")
        stopped = sum(1 for line in out.splitlines() if line.endswith("' stopped"))
        if code != 0:
            return Outcome(host, False, f"some nodes did not stop ({stopped} did; see above)")
        return Outcome(host, True, f"{_count(stopped, 'node')} stopped")

    return work


def _stop(cluster: Cluster) -> list[Outcome]:
    """Every slave node, then the master."""
    slaves = parallel(cluster.slaves, _stopper(SLAVES))
    return [_stopper(MASTER)(cluster.master), *slaves]


@task
def stop(c: Any) -> None:
    """Stop every slave node, then the master; every host it can reach, whatever others do."""
    summary("stop", _stop(load_cluster()))


@task
def restart(c: Any) -> None:
    """Restart the master, then every slave host's nodes (on the release deployed last)."""
    # The master first. Slaves re-dial a master by themselves and keep their users while it
    # is away, and a restarted master adopts the run they report; a slave restarted after it
    # rejoins the new master, which hands it back its users with the new release's scenario
    # source and config. The other way round, restarted slaves would rejoin the old master,
    # which would ship them its (old) scenario source and run-time config for their users.
    cluster = load_cluster()
    before = _cluster_view(cluster.master)
    stopped = _stopper(MASTER)(cluster.master)
    (master,) = _merge([stopped], [_start_master(cluster.master)] if stopped.ok else [])
    if master.ok and before is not None:
        # The slaves stop only once the new master holds what the old one did: every node
        # back, and the run they carry adopted. Else the run would end with them.
        taken = _taken_over(cluster.master, *before)
        master.ok, master.text = master.ok and taken.ok, f"{master.text}; {taken.text}"
    slaves = parallel(cluster.slaves, _stopper(SLAVES))
    reachable = Cluster(cluster.master, [o.host for o in slaves if o.ok], cluster.inventory)
    started = _start(reachable, master) if reachable.slaves else [master]
    summary("restart", _merge(started[:1], slaves, started[1:]))


RUN_MARGIN = 180.0  # s a headless run may take beyond its duration (slaves, stop, report)


def _headless_command(scenario: str, users: int, duration: float, options: dict[str, Any]) -> str:
    """bin/amoc run on the master, with the task's options."""
    words = [f"~/{MASTER}/bin/amoc", "--name", "master", "run", shlex.quote(scenario)]
    words += ["--users", str(int(users)), "--duration", repr(float(duration))]
    words += ["--slaves", str(options["slaves"])]
    if options.get("first"):
        words += ["--first", str(int(options["first"]))]
    if options.get("rate"):
        words += ["--rate", repr(float(options["rate"]))]
    if options.get("comment"):
        words += ["--comment", shlex.quote(options["comment"])]
    for condition in re.split(r"[;,]", options.get("thresholds") or ""):
        if condition.strip():
            words += ["--threshold", shlex.quote(condition.strip())]
    for setting in shlex.split(options.get("settings") or ""):
        words += ["--set", shlex.quote(setting)]
    return f"cd ~ && {_RAISE_NOFILE} && exec " + " ".join(words)


def _stream(host: Host, command: str, timeout: float) -> int:
    """Run `command` on `host` with a terminal (Ctrl+C reaches it), its lines printed as they
    come; its exit code."""

    class Prefixed:
        def __init__(self) -> None:
            self.pending = ""

        def write(self, text: str) -> None:
            *lines, self.pending = (self.pending + text.replace("\r", "")).split("\n")
            for line in lines:
                _say(host, line)

        def flush(self) -> None:
            pass

    out = Prefixed()
    try:
        with host.connect() as conn:
            done = conn.run(command, out_stream=out, pty=True, warn=True, timeout=timeout)
    except CommandTimedOut:
        # Leaving closes its terminal: the hangup stops it, and it writes its report.
        _say(host, f"the run did not end within {timeout:g} s: hung up on it")
        return 2
    except Exit:
        raise
    except Exception as exc:  # paramiko and socket errors have no common base
        raise HostError(host.unreachable(exc)) from None
    if out.pending:
        _say(host, out.pending)
    return int(done.exited)


ACTIVE = ("running", "starting")  # the cluster states of a run under way


def _cluster_view(master: Host) -> tuple[set[str], bool] | None:
    """The slave nodes up on the master and whether a run is under way (None: no master)."""
    try:
        status = _master_status(master)
    except HostError:
        return None
    if status is None:
        return None
    return _up(status), status.get("state") in ACTIVE


def _taken_over(master: Host, nodes: set[str], active: bool) -> Outcome:
    """Wait until the (new) master has every one of `nodes` up and, if a run was `active`,
    has adopted it."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while True:
        view = _cluster_view(master)
        if view is not None and view[0] >= nodes and (view[1] or not active):
            what = "the run adopted" if active else "no run to adopt"
            return Outcome(master, True, f"{_count(len(nodes), 'slave node')} back, {what}")
        if time.monotonic() > deadline:
            seen = len(view[0] & nodes) if view else 0
            return Outcome(
                master,
                False,
                f"after {JOIN_TIMEOUT:.0f} s, {seen} of {len(nodes)} slave nodes back"
                + (" and the run not adopted" if active and not (view and view[1]) else ""),
            )
        time.sleep(0.5)


def _gone(master: Host) -> None:
    """Wait (a bounded time) until no node named master runs: the headless run has ended."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    with contextlib.suppress(HostError):
        while master.run(f"~/{MASTER}/bin/amoc --name master status")[0] != 3:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)


@task(
    help={
        "scenario": "the scenario's name (a deployed one)",
        "users": "how many users, ids first..first+users-1",
        "duration": "seconds the run lasts at most",
        "thresholds": "conditions the run must meet, ';' or ',' between them",
        "settings": "NAME=VALUE settings for the run, separated by spaces",
        "first": "the first user id (default 1)",
        "rate": "users started per second",
        "comment": "the run's annotation comment",
    }
)
def run(
    c: Any,
    scenario: str,
    users: int,
    duration: float,
    thresholds: str = "",
    settings: str = "",
    first: int = 1,
    rate: float = 0.0,
    comment: str = "",
) -> None:
    """A headless run on the deployed cluster: the master's `bin/amoc run` drives every slave
    node, prints the merged figures, writes the report in ~/amoc_reports (make reports
    fetches it) and exits 0 (passed), 1 (a threshold failed) or 2 (refused)."""
    master, up = _idle_cluster("run")
    options = {"slaves": len(up), "first": first, "rate": rate, "comment": comment}
    options |= {"thresholds": thresholds, "settings": settings}
    command = _headless_command(scenario, users, duration, options)
    code = _headless(master, up, command, float(duration) + RUN_MARGIN, "run")
    if code != 0:
        verdict = {1: "a threshold failed", 2: "refused"}.get(code, "failed")
        raise Exit(f"run: {verdict} (exit {code})", code=code)


def _headless(master: Host, up: set[str], command: str, timeout: float, verb: str) -> int:
    """Run a headless `bin/amoc` command on the master in the daemon's place (it holds the
    cluster's port) and start the daemon again after it, whatever the outcome; its code."""
    stopped = _stopper(MASTER)(master)
    code = 2
    try:
        if stopped.ok:
            code = _stream(master, command, timeout)
    except HostError as exc:
        _say(master, str(exc))
    finally:
        _gone(master)
        back = _start_master(master)
        joined = _taken_over(master, up, active=False) if back.ok else back
    words = _VERDICTS[verb]
    verdict = words.get(code, "failed")
    again = "master daemon started again, " if back.ok else ""
    text = f"{verb} {verdict} (exit {code}); {again}{joined.text}"
    summary(verb, [Outcome(master, joined.ok and code in (0, 1), text)])
    return code


_VERDICTS = {
    "run": {0: "passed", 1: "a threshold failed", 2: "refused"},
    "find-capacity": {0: "found a capacity", 1: "found none (the first step failed)",
                      2: "refused"},
}  # fmt: skip


def _idle_cluster(verb: str) -> tuple[Host, set[str]]:
    """The master and its up slaves, when the cluster is started and runs nothing."""
    cluster = load_cluster()
    master = cluster.master
    try:
        status = _master_status(master)
    except HostError as exc:
        raise Exit(f"{verb}: {exc}", code=2) from None
    if status is None:
        raise Exit(f"{verb}: the cluster is not started (make start first)", code=2)
    if status.get("state") in ACTIVE:
        raise Exit(
            f"{verb}: the cluster runs {status.get('scenario')!r} now "
            f"({status['users']['placed']} users placed): stop it first (make console, then "
            "amoc_dist.stop())",
            code=2,
        )
    up = _up(status)
    if not up:
        raise Exit(f"{verb}: no slave node is up (make start, make status)", code=2)
    return master, up


@task(
    help={
        "scenario": "the scenario's name (a deployed one)",
        "users": "START:STEP:MAX users per step (or --rate)",
        "rate": "START:STEP:MAX users arriving per second",
        "thresholds": "the limits, ';' between them, e.g. 'xmpp.ttd_ms.p99 < 50; server.cpu < 90'",
        "hold": "the steady window of a step (60s)",
        "resolution": "bisect down to this (default: a quarter of a step)",
        "settings": "NAME=VALUE settings for every step, separated by spaces",
        "limit": "seconds the whole search may take at most (default 3600)",
    }
)
def find_capacity(
    c: Any,
    scenario: str,
    thresholds: str,
    users: str = "",
    rate: str = "",
    hold: str = "60s",
    resolution: float = 0.0,
    settings: str = "",
    limit: float = 3600.0,
) -> None:
    """A capacity search on the deployed cluster: the master's `bin/amoc find-capacity`
    raises the load over every slave node that is up, holds, bisects; it prints the table
    and the verdict and exits 0 (a capacity found), 1 (the first step failed), 2 (refused)."""
    master, up = _idle_cluster("find-capacity")
    words = [f"~/{MASTER}/bin/amoc", "--name", "master", "find-capacity", shlex.quote(scenario)]
    words += ["--slaves", str(len(up)), "--hold", shlex.quote(hold)]
    words += ["--thresholds", shlex.quote(thresholds)]
    for flag, value in (("--users", users), ("--rate", rate)):
        if value:
            words += [flag, shlex.quote(value)]
    if resolution:
        words += ["--resolution", repr(float(resolution))]
    for setting in shlex.split(settings or ""):
        words += ["--set", shlex.quote(setting)]
    command = f"cd ~ && {_RAISE_NOFILE} && exec " + " ".join(words)
    code = _headless(master, up, command, float(limit), "find-capacity")
    if code != 0:
        raise Exit(f"find-capacity: {_VERDICTS['find-capacity'].get(code, 'failed')}", code=code)


_STATUS_ALL = """test -d ~/{install}/run || {{ echo "~/{install} is not deployed"; exit 0; }}
deployed=$(cd ~/{install} 2>/dev/null && pwd -P)
found=0
for dir in ~/{install}/run/*/; do
  [ -f "$dir/node.pid" ] || continue
  found=1
  ~/{install}/bin/amoc --name "$(basename "$dir")" status || continue
  pid=$(cat "$dir/node.pid")
  runs=$(tr '\\0' '\\n' < /proc/"$pid"/environ 2>/dev/null | sed -n 's/^AMOC_HOME=//p')
  if [ -n "$runs" ] && [ "$runs" != "$deployed" ]; then
    echo "  older release: runs ${{runs##*/}}, deployed ${{deployed##*/}} (make restart)"
  fi
done
[ $found = 1 ] || echo "no node running"
exit 0"""


def _status_of(install: str) -> Callable[[Host], Outcome]:
    @on_host
    def work(host: Host) -> Outcome:
        _, out = host.run(_STATUS_ALL.format(install=install))
        _say(host, out)
        lines = out.splitlines()
        running = sum(1 for line in lines if line.startswith("node '") and "' running" in line)
        older = sum(1 for line in lines if line.startswith("  older release:"))
        text = _count(running, "node") + " running"
        return Outcome(host, True, text + (f", {older} on an older release" if older else ""))

    return work


@task
def status(c: Any) -> None:
    """Show every node of every host: running or not, its users, an older release."""
    cluster = load_cluster()
    master = _status_of(MASTER)(cluster.master)
    summary("status", [master, *parallel(cluster.slaves, _status_of(SLAVES))])


@task
def logs(c: Any, lines: int = 40, follow: bool = False) -> None:
    """Print the end of every node's log; --follow keeps printing (Ctrl+C ends)."""
    cluster = load_cluster()
    pairs = [(cluster.master, MASTER)] + [(h, SLAVES) for h in cluster.slaves]
    if not follow:
        outcomes = []
        for host, install in pairs:
            try:
                _say(host, host.run(f"tail -n {int(lines)} ~/{install}/log/*.log 2>&1")[1])
                outcomes.append(Outcome(host, True, "log shown"))
            except HostError as exc:
                _say(host, str(exc))
                outcomes.append(Outcome(host, False, str(exc)))
        summary("logs", outcomes)
        return

    failures: list[Outcome] = []

    def tail(host: Host, install: str) -> None:
        class Prefixed:
            def write(self, text: str) -> None:
                _say(host, text.rstrip("\r\n").replace("\r", ""))

            def flush(self) -> None:
                pass

        try:
            with host.connect() as conn:  # a terminal: the remote tail ends when we leave
                conn.run(
                    f"tail -n {int(lines)} -F ~/{install}/log/*.log",
                    out_stream=Prefixed(),
                    pty=True,
                    warn=True,
                )
        except Exception as exc:  # paramiko and socket errors have no common base
            _say(host, host.unreachable(exc))
            failures.append(Outcome(host, False, host.unreachable(exc)))

    threads = [threading.Thread(target=tail, args=pair, daemon=True) for pair in pairs]
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads):
            time.sleep(0.2)
    except KeyboardInterrupt:
        print()
    if failures:
        summary("logs", failures)


def _fetch_tree(sftp: Any, remote: str, local: Path) -> int:
    """Copy the remote directory `remote` into `local` (made 0700, files 0600); files copied."""
    local.mkdir(mode=0o700)
    copied = 0
    for entry in sftp.listdir_attr(remote):
        path = f"{remote}/{entry.filename}"
        if stat.S_ISDIR(entry.st_mode or 0):
            copied += _fetch_tree(sftp, path, local / entry.filename)
        elif stat.S_ISREG(entry.st_mode or 0):
            sftp.get(path, str(local / entry.filename))
            os.chmod(local / entry.filename, 0o600)
            copied += 1
    return copied


def fetch_reports(master: Host, into: Path) -> Outcome:
    """Copy the master's finished reports that `into` lacks (each report a directory)."""
    into.mkdir(parents=True, exist_ok=True)
    try:
        with master.connect() as conn:
            sftp = conn.sftp()
            remote = f"{sftp.normalize('.')}/{REPORTS}"
            try:
                names = sorted(e.filename for e in sftp.listdir_attr(remote))
            except FileNotFoundError:
                names = []
            # index.html is the last file of a report: without it, it is being written.
            done = [n for n in names if _exists(sftp, f"{remote}/{n}/index.html")]
            new = [n for n in done if not (into / n).exists()]
            for name in new:
                partial = into / f".partial-{name}"
                if partial.exists():
                    _remove_tree(partial)
                _fetch_tree(sftp, f"{remote}/{name}", partial)
                partial.rename(into / name)
                _say(master, f"fetched {name}")
    except Exception as exc:  # paramiko and socket errors have no common base
        _say(master, master.unreachable(exc))
        return Outcome(master, False, master.unreachable(exc))
    there = len(done) - len(new)
    return Outcome(
        master, True, f"{_count(len(new), 'report')} fetched into {into} ({there} there already)"
    )


def _exists(sftp: Any, path: str) -> bool:
    try:
        sftp.stat(path)
    except FileNotFoundError:
        return False
    return True


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            _remove_tree(child)
        else:
            child.unlink()
    path.rmdir()


@task
def reports(c: Any) -> None:
    """Fetch the master's reports (~/amoc_reports) into reports/ beside the inventory."""
    cluster = load_cluster()
    into = cluster.inventory.resolve().parent / "reports"
    summary("reports", [fetch_reports(cluster.master, into)])


@task
def console(c: Any) -> None:
    """Attach to the master's console over ssh, with a terminal (Ctrl+D detaches)."""
    master = load_cluster().master
    command = master.ssh_command(f"~/{MASTER}/bin/amoc --name master attach")
    sys.stdout.flush()
    os.execvp(command[0], command)
