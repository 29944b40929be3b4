"""The README's road to many machines, on real hosts: a master and two slave hosts as
network namespaces of this machine (tests/e2e/netns.py), each with its own sshd, address,
host name and /home. The real `make prepare` (twice: the second changes nothing), `make
deploy`, `make start`, the master's console through `make console` (ssh with a terminal),
a failed deploy that leaves every host as it was, three deploys while a run is active (the
running releases are kept, the run goes on), `make restart` onto a changed setting, a
misspelled `--set`, `make status` and `make stop` past an unreachable host, `make reports`;
then the bad inputs and the first contact with hosts whose keys are unknown.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pexpect
import pytest

from tests.e2e.netns import SSHD, NetnsHosts
from tests.e2e.terminal import ANSI, PROMPT, Terminal
from tests.integration.xmpp_fixture import XmppServer
from tests.net import free_port, relay

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RUN_USER = "amoce2e"  # not `amoc`: the test makes and removes it on this machine
LIMITS = Path(f"/etc/security/limits.d/amoc-{RUN_USER}.conf")
PAM_SSHD = Path("/etc/pam.d/sshd")
RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


@dataclass
class Site:
    """The namespace hosts and the inventory (with its group_vars/amoc) that names them."""

    hosts: NetnsHosts
    inventory: Path
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def make(
        self,
        target: str,
        *args: str,
        inventory: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run `make TARGET INVENTORY=...` in the checkout; time it."""
        started = time.monotonic()
        done = subprocess.run(
            ["make", "-s", target, f"INVENTORY={inventory or self.inventory}", *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.timings.setdefault(target, time.monotonic() - started)
        return done

    def ssh(self, host: str, command: str) -> str:
        """Run a command on a host as the run user, with OpenSSH."""
        options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"]
        options += ["-o", f"UserKnownHostsFile={self.hosts.known_hosts}"]
        done = subprocess.run(
            [
                "ssh",
                "-i",
                str(self.hosts.key),
                *options,
                f"{RUN_USER}@{self.hosts.address(host)}",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{host}: {command}: {done.stderr}"
        return done.stdout

    def home(self, host: str) -> Path:
        """The run user's home on `host`, seen from this namespace."""
        return self.hosts.hosts[host].home / RUN_USER

    def hostname(self, host: str) -> str:
        """The host name of `host` (node names are sN@<host name>)."""
        return self.hosts.hosts[host].hostname


def recap(output: str) -> dict[str, tuple[int, int, int]]:
    """Ansible's PLAY RECAP: host -> (changed, unreachable, failed)."""
    return {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in RECAP.finditer(output)}


def write_inventory(
    directory: Path,
    hosts: NetnsHosts,
    extra: str = "",
    key: Path | None = None,
    common: str | None = None,
) -> Path:
    """An inventory for the namespace hosts, with the checkout's group_vars/amoc (edited);
    `common`: the ssh options (default: any host key taken, into the test's known_hosts)."""
    if common is None:
        common = f"-o StrictHostKeyChecking=no -o UserKnownHostsFile={hosts.known_hosts}"
    (directory / "group_vars").mkdir(parents=True, exist_ok=True)
    inventory = directory / "hosts"
    inventory.write_text(
        "[amoc_master]\n"
        f"master ansible_host={hosts.address('master')}\n\n"
        "[amoc_slaves]\n"
        f"slave1 ansible_host={hosts.address('slave1')} amoc_slave_nodes=2 amoc_capacity=2.0\n"
        f"slave2 ansible_host={hosts.address('slave2')} amoc_slave_nodes=1\n"
        f"{extra}\n"
        "[amoc:children]\namoc_master\namoc_slaves\n\n"
        "[amoc:vars]\n"
        "ansible_user=root\n"
        # Root's shell here puts pyenv's shims first in PATH; the hosts' own Python is this.
        "ansible_python_interpreter=/usr/bin/python3\n"
        f"ansible_ssh_private_key_file={key or hosts.key}\n"
        f"ansible_ssh_common_args='{common}'\n"
    )
    settings = (ROOT / "group_vars" / "amoc").read_text()
    for name, value in {
        "interarrival": "0",
        "scenario_params": "{dummy_wait: 600000}",  # users stay running while we look
        "amoc_user": RUN_USER,
    }.items():
        settings, count = re.subn(rf"^{name}:.*$", f"{name}: {value}", settings, flags=re.M)
        assert count == 1, f"group_vars/amoc has no single {name} line"
    settings += f"amoc_keys_dir: {directory.parent / 'keys'}\n"
    settings += "amoc_keep_releases: 1\n"  # prune all it may: never what runs
    (directory / "group_vars" / "amoc").write_text(settings)
    return inventory


def set_group_var(inventory: Path, name: str, value: str) -> None:
    """Change one setting in the group_vars/amoc next to `inventory`."""
    path = inventory.parent / "group_vars" / "amoc"
    text, count = re.subn(rf"^{name}:.*$", f"{name}: {value}", path.read_text(), flags=re.M)
    assert count == 1
    path.write_text(text)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    assert os.geteuid() == 0, "the deploy tests make network namespaces: run them as root"
    assert SSHD.exists(), f"{SSHD} is missing: `make deps` installs openssh-server"
    work = tmp_path_factory.mktemp("deploy")
    user_existed = subprocess.run(["id", RUN_USER], capture_output=True).returncode == 0
    limits_existed = LIMITS.exists()
    pam_before = PAM_SSHD.read_bytes() if PAM_SSHD.exists() else None
    hosts = NetnsHosts(work / "hosts", ["master", "slave1", "slave2"])
    env = {
        **os.environ,
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(work / "cp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_PATTERN_MISMATCH": "ignore",
    }
    s = Site(hosts, work / "inventory" / "hosts", env)
    try:
        hosts.up()
        write_inventory(work / "inventory", hosts)
        yield s
    finally:
        print(f"\ntimings (s): {', '.join(f'{k} {v:.1f}' for k, v in s.timings.items())}")
        hosts.down()  # every process in the namespaces, sshd by pid, links, namespaces
        if not user_existed:
            subprocess.run(["userdel", RUN_USER], capture_output=True)
        if not limits_existed:
            LIMITS.unlink(missing_ok=True)
        if pam_before is not None and PAM_SSHD.read_bytes() != pam_before:
            PAM_SSHD.write_bytes(pam_before)
        shutil.rmtree(work, ignore_errors=True)


class SshConsole(Terminal):
    """The master's console through `make console` (ssh -t ... bin/amoc attach)."""

    def __init__(self, site: Site) -> None:  # Terminal's methods on another program
        self.child = pexpect.spawn(
            "make",
            ["-s", "console", f"INVENTORY={site.inventory}"],
            cwd=str(ROOT),
            env={**site.env, "TERM": "dumb"},
            encoding="utf-8",
            timeout=60,
            dimensions=(50, 200),
        )
        self.child.expect(PROMPT)
        self.banner = ANSI.sub("", self.child.before)


def test_prepare_deploy_start_console_stop(site: Site) -> None:
    first = site.make("prepare")
    assert first.returncode == 0, first.stdout + first.stderr
    assert set(recap(first.stdout)) >= {"master", "slave1", "slave2"}
    assert all(u == f == 0 for _, u, f in recap(first.stdout).values()), first.stdout

    started = time.monotonic()
    again = site.make("prepare")
    site.timings["prepare again"] = time.monotonic() - started
    assert again.returncode == 0, again.stdout + again.stderr
    for host in ("master", "slave1", "slave2"):
        assert recap(again.stdout)[host] == (0, 0, 0), f"{host} changed on a 2nd prepare"

    deploy = site.make("deploy")
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    master = site.hosts.address("master")
    config = site.ssh("master", "cat ~/amoc_master/priv/app.config")
    assert 'cluster_role = "master"' in config
    assert f'cluster_bind = "tcp://{master}:4200"' in config
    config = site.ssh("slave1", "cat ~/amoc/priv/app.config")
    assert 'cluster_role = "slave"' in config and "cluster_capacity = 2.0" in config
    assert f'cluster_master = "tcp://{master}:4200"' in config
    assert "interarrival = 0" in config and "dummy_wait = 600000" in config
    keys = site.ssh("master", "cd ~/amoc_master/keys && stat -c '%a %n' *").split()
    assert keys == ["600", "master.key_secret", "600", "node.key"]
    keys = site.ssh("slave2", "cd ~/amoc/keys && stat -c '%a %n' *").split()
    assert keys == ["600", "master.key", "600", "node.key_secret"]

    start = site.make("start")
    assert start.returncode == 0, start.stdout + start.stderr
    assert "cluster up: 3 slave nodes on 2 hosts" in start.stdout, start.stdout

    s1, s2 = site.hostname("slave1"), site.hostname("slave2")
    nodes = [f"s1@{s1}", f"s1@{s2}", f"s2@{s1}"]
    term = SshConsole(site)
    try:
        assert "amoc console on cluster master 'master'" in term.banner
        seen = term.value('sorted((n["name"], n["host"], n["up"]) for n in nodes())')
        assert seen == [(nodes[0], s1, True), (nodes[1], s2, True), (nodes[2], s1, True)]
        out = term.run('amoc_dist.do("dummy", 1, 6)')
        assert out.startswith("running dummy: 6 placed"), out
        term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 6)
        placement = term.value("amoc_dist.placement()")
        assert isinstance(placement, dict) and sorted(placement) == nodes
        assert all(len(ids) == 2 for ids in placement.values()), placement
        assert sorted(i for ids in placement.values() for i in ids) == [1, 2, 3, 4, 5, 6]
        by_host = term.value(
            '{h: sum(n["running"] for n in nodes() if n["host"] == h) '
            'for h in {n["host"] for n in nodes()}}'
        )
        assert by_host == {s1: 4, s2: 2}
        assert "detached" in term.leave()
    finally:
        if term.child.isalive():
            term.child.close(force=True)

    # What each host runs, as `make status` sees it on the hosts themselves.
    status = site.make("status")
    assert status.returncode == 0, status.stderr
    running = re.findall(r"^\[(slave\d)\]\s+users: (\d+) running", status.stdout, re.M)
    assert sorted(running) == [("slave1", "2"), ("slave1", "2"), ("slave2", "2")], status.stdout
    logs = site.make("logs", "LINES=5")
    assert logs.returncode == 0 and "scenario dummy: starting 2 users" in logs.stdout

    # A deploy that fails on one host switches no host: all keep what they run.
    links = {h: os.readlink(site.home(h) / n) for h, n in _installs()}
    releases = site.home("slave2") / "releases"
    releases.chmod(0o555)
    set_group_var(site.inventory, "interarrival", "5")  # a new release everywhere
    try:
        failed = site.make("deploy")
    finally:
        releases.chmod(0o755)
        set_group_var(site.inventory, "interarrival", "0")
    assert failed.returncode != 0
    assert re.search(r"^(fatal|failed): \[slave2\]", failed.stdout, re.M), failed.stdout
    assert {h: os.readlink(site.home(h) / n) for h, n in _installs()} == links
    assert "interarrival = 0" in site.ssh("slave1", "cat ~/amoc/priv/app.config")
    status = site.make("status")
    assert len(re.findall(r"users: 2 running", status.stdout)) == 3, status.stdout
    for host, install in _installs():  # the failed deploy took its releases away
        assert _releases(site, host, install) == [os.path.basename(links[host])]

    _three_deploys_while_a_run_is_active(site)
    _restart_takes_a_changed_setting(site)
    _a_headless_cluster_run(site)
    _a_monitored_xmpp_run(site)
    _a_capacity_search_on_the_cluster(site)
    _a_misspelled_set_is_refused(site)
    _status_and_stop_go_past_an_unreachable_host(site)
    _reports_come_back(site)


def _installs() -> list[tuple[str, str]]:
    return [("master", "amoc_master"), ("slave1", "amoc"), ("slave2", "amoc")]


def _releases(site: Site, host: str, install: str) -> list[str]:
    """The releases of `install` on `host`, by name."""
    return sorted(p.name for p in (site.home(host) / "releases").glob(f"{install}-*"))


def _three_deploys_while_a_run_is_active(site: Site) -> None:
    running = {h: os.path.basename(os.readlink(site.home(h) / n)) for h, n in _installs()}
    s1, s2 = site.hostname("slave1"), site.hostname("slave2")
    for interarrival in (1, 2, 3):  # a new config, so a new release, each time
        set_group_var(site.inventory, "interarrival", str(interarrival))
        started = time.monotonic()
        deploy = site.make("deploy")
        site.timings[f"deploy {interarrival} under a run"] = time.monotonic() - started
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        assert "running nodes that still run an older release" in deploy.stdout, deploy.stdout
        for node, host in (("master", "master"), (f"s1@{s1}", "slave1"), (f"s2@{s1}", "slave1")):
            assert f"{node} on {host}: older config" in deploy.stdout, deploy.stdout
        assert f"s1@{s2} on slave2: older config" in deploy.stdout
    for host, install in _installs():
        current = os.path.basename(os.readlink(site.home(host) / install))
        # amoc_keep_releases is 1: the deployed release and the one the nodes run, no other.
        names = sorted({current, running[host]})
        assert _releases(site, host, install) == names, (host, names)
        site.ssh(host, f"test -f ~/releases/{running[host]}/scenarios/dummy.py")
    term = SshConsole(site)
    try:
        term.run("amoc_dist.stop()")
        reports = site.home("master") / "amoc_reports"
        deadline = time.monotonic() + 20
        while not list(reports.glob("*-dummy/index.html")):
            assert time.monotonic() < deadline, f"no report in {reports}"
            time.sleep(0.2)
        out = term.run('amoc_dist.do("dummy", 1, 6)')  # its scenarios are all there
        assert out.startswith("running dummy: 6 placed"), out
        term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 6)
        assert term.value('amoc_config.get("interarrival")') == 0  # still the old config
        term.leave()
    finally:
        if term.child.isalive():
            term.child.close(force=True)


def _restart_takes_a_changed_setting(site: Site) -> None:
    restart = site.make("restart")
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert re.search(r"^  master\s+ok\s+1 node stopped; master started", restart.stdout, re.M)
    assert re.search(r"^  slave1\s+ok\s+2 nodes stopped; 2 nodes up", restart.stdout, re.M)
    status = site.make("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "older release" not in status.stdout, status.stdout
    term = SshConsole(site)
    try:
        assert term.value('amoc_config.get("interarrival")') == 3  # group_vars' new value
        # Every restarted slave has joined the restarted master, which adopted the run: its
        # six users run again on the restarted slaves, each id once.
        term.wait('sorted(n["up"] for n in nodes())', lambda up: up == [True] * 3)
        term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 6)
        assert term.value('amoc_dist.status()["scenario"]') == "dummy"
        placement = term.value("amoc_dist.placement()")
        assert sorted(i for ids in placement.values() for i in ids) == [1, 2, 3, 4, 5, 6]
        term.run("amoc_dist.stop()")
        out = term.run('amoc_dist.do("dummy", 1, 6)')
        assert out.startswith("running dummy: 6 placed"), out
        term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 6)
        term.leave()
    finally:
        if term.child.isalive():
            term.child.close(force=True)


def _a_headless_cluster_run(site: Site) -> None:
    # The console left a run going: `make run` refuses to take it over.
    busy = site.make("run", "SCENARIO=dummy", "USERS=6", "DURATION=3")
    assert busy.returncode == 2, busy.stdout + busy.stderr
    assert "the cluster runs 'dummy' now (6 users placed): stop it first" in busy.stderr
    missing = site.make("run", "SCENARIO=dummy")
    assert missing.returncode == 2 and "make run needs SCENARIO=name USERS=count" in missing.stderr
    term = SshConsole(site)
    try:
        term.run("amoc_dist.stop()")
        term.leave()
    finally:
        if term.child.isalive():
            term.child.close(force=True)
    started = time.monotonic()
    done = site.make(
        "run",
        "SCENARIO=dummy",
        "USERS=6",
        "DURATION=3",
        "THRESHOLDS=users.started >= 6; users.started > 100",
        "SET=dummy_wait=100000",
    )
    site.timings["headless cluster run"] = time.monotonic() - started
    out = done.stdout + done.stderr
    # make exits 2 for any failed recipe; the task's own code (fab run) is the run's.
    assert done.returncode != 0 and "run: a threshold failed (exit 1)" in done.stderr, out
    assert re.search(
        r"^\[master\] scenario dummy on 3 slaves: 6 users placed, 6 started", out, re.M
    )
    assert "threshold failed: users.started > 100 (was 6)" in out
    assert "threshold failed: users.started >= 6" not in out
    assert re.search(r"^\[master\] report: .*/amoc_reports/[^/]*-dummy/index.html$", out, re.M), out
    summary = r"^  master\s+ok\s+run a threshold failed \(exit 1\); master daemon started again, 3"
    assert re.search(summary, out, re.M), out
    status = site.make("status")  # the daemon is back, and every slave with it
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"^  master\s+ok\s+1 node running$", status.stdout, re.M), status.stdout


def _a_monitored_xmpp_run(site: Site) -> None:
    """A headless XMPP run whose master monitors slave2 over ssh (its /proc, no agent) and a
    second host that does not exist: that one is logged once and marked no data; the run
    delivers every message and the master's report has slave2's series."""
    gateway = site.hosts.gateway  # the slaves reach this machine's side of the bridge
    server = XmppServer(f"deploy{os.getpid()}", "127.0.0.1", free_port(), free_port(), mam=False)
    server.tool("install", "--kind", "ejabberd", timeout=600)
    # The master's run user logs in to slave2 as root with the test's key, checking its host
    # key in known_hosts (what Ansible's logins put there).
    ssh_dir = site.home("master") / ".ssh"
    uid, gid = (int(site.ssh("master", f"id -{w}")) for w in ("u", "g"))
    for source, name in ((site.hosts.key, "id_ed25519"), (site.hosts.known_hosts, "known_hosts")):
        target = ssh_dir / name
        shutil.copy(source, target)
        os.chown(target, uid, gid)
        target.chmod(0o600)
    watched, nowhere = site.hosts.address("slave2"), str(site.hosts.net.network_address + 250)
    sources = f"ssh://root@{watched}/sshd;ssh://root@{nowhere}/sshd"
    try:
        server.start()
        server.register(1, 20)
        # The server serves loopback only: the slaves reach it through a relay on the bridge.
        with relay(gateway, ("127.0.0.1", server.port)) as port:
            started = time.monotonic()
            done = site.make(
                "run", "SCENARIO=xmpp_one_to_one", "USERS=20", "DURATION=60",
                "THRESHOLDS=error_ratio <= 0",
                f"SET=xmpp_host={gateway} xmpp_port={port} repeat_num=1 "
                f"messages_per_user=20 message_interval=300 monitor_hosts={sources}",
            )  # fmt: skip
            site.timings["monitored xmpp run"] = time.monotonic() - started
    finally:
        server.tool("remove")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert re.search(r"^\[master\]\s+xmpp\.messages\.received: 400$", out, re.M), out
    assert re.search(r"^\[master\]\s+xmpp\.messages\.sent: 400$", out, re.M), out
    assert "one_to_one.incomplete" not in out, out
    # The host that does not answer: one line for the whole run, then no data.
    assert len(re.findall(rf"monitor {re.escape(nowhere)} \(", out)) == 1, out
    assert re.search(rf"server {re.escape(nowhere)} \(.*\): 0 samples, no data", out), out
    assert re.search(rf"server {re.escape(watched)} \(ssh root@.*\): \d+ samples, ok", out), out
    index = Path(re.search(r"report: (\S+/index\.html)$", out, re.M).group(1))  # type: ignore[union-attr]
    local = site.home("master") / index.relative_to(f"/home/{RUN_USER}")
    summary = json.loads((local.parent / "summary.json").read_text())
    assert summary["monitored"][watched]["status"] == "ok", summary["monitored"]
    assert summary["monitored"][nowhere]["status"].startswith("no data"), summary["monitored"]
    rows = (local.parent / "series.csv").read_text().splitlines()
    head = rows[0].split(",")
    cpu, rss = head.index(f"mon.{watched}.sshd.cpu"), head.index(f"mon.{watched}.sshd.rss_mb")
    assert sum(1 for r in rows[1:] if r.split(",")[rss]) >= 3, rows
    assert all(not r.split(",")[head.index(f"mon.{nowhere}.cpu")] for r in rows[1:])
    assert any(r.split(",")[cpu] for r in rows[1:]), rows
    page = local.read_text()
    assert "Servers under test: CPU" in page and f"sshd on {watched}" in page


def _a_capacity_search_on_the_cluster(site: Site) -> None:
    """make find-capacity: the master's search over the three slave nodes (no server: the
    limit is on the users running), then the master daemon is back."""
    started = time.monotonic()
    done = site.make(
        "find-capacity", "SCENARIO=dummy", "USERS=3:3:9", "THRESHOLDS=users.running <= 6",
        "HOLD=1s", "RESOLUTION=3", "SET=dummy_wait=600000",
    )  # fmt: skip
    site.timings["find-capacity"] = time.monotonic() - started
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    steps = re.findall(r"^\[master\] +(\d) +(\d) .* (ok|FAIL .*|failed, .*)$", out, re.M)
    tried = [("1", "3", "ok"), ("2", "6", "ok"), ("3", "9", "fail"), ("4", "9", "FAIL")]
    assert [(n, load, r[:4]) for n, load, r in steps] == tried, out  # a failed one runs again
    assert re.search(r"^\[master\] capacity: 6 users held; first limit: users\.running <= 6 "
                     r"\(was 9\) at 9 users$", out, re.M), out  # fmt: skip
    summary = r"^  master\s+ok\s+find-capacity found a capacity \(exit 0\); master daemon started"
    assert re.search(summary, out, re.M), out


def _a_misspelled_set_is_refused(site: Site) -> None:
    out = site.ssh(
        "master",
        "AMOC_CLUSTER_ROLE=local ~/amoc_master/bin/amoc --name setcheck run dummy --users 1 "
        "--duration 1 --set dumy_wait=5 2>&1; echo rc=$?",
    )
    assert "unknown setting 'dumy_wait' for scenario 'dummy'; did you mean 'dummy_wait'?" in out
    assert out.rstrip().endswith("rc=2"), out


def _status_and_stop_go_past_an_unreachable_host(site: Site) -> None:
    with socket.socket() as sock:  # a loopback port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    inventory = write_inventory(
        site.inventory.parent.parent / "one_unreachable",
        site.hosts,
        extra=f"slave3 ansible_host=127.0.0.1 ansible_port={port}\n",
    )
    status = site.make("status", inventory=inventory)
    assert status.returncode != 0
    lines = [
        r"^  master\s+ok\s+1 node running$",
        r"^  slave1\s+ok\s+2 nodes running$",
        r"^  slave2\s+ok\s+1 node running$",
        rf"^  slave3\s+FAILED\s+unreachable as {RUN_USER}@127\.0\.0\.1:{port}: ",
    ]
    for line in lines:
        assert re.search(line, status.stdout, re.M), (line, status.stdout)
    assert "status: 1 of 4 hosts failed: slave3" in status.stderr
    stop = site.make("stop", inventory=inventory)
    assert stop.returncode != 0
    for line in (r"^  master\s+ok\s+1 node stopped$", r"^  slave1\s+ok\s+2 nodes stopped$"):
        assert re.search(line, stop.stdout, re.M), (line, stop.stdout)
    assert re.search(r"^  slave3\s+FAILED\s+unreachable as ", stop.stdout, re.M)
    assert "stop: 1 of 4 hosts failed: slave3" in stop.stderr
    status = site.make("status")
    assert status.returncode == 0 and status.stdout.count("no node running") == 3, status.stdout


def _reports_come_back(site: Site) -> None:
    fetched = site.make("reports")
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    into = site.inventory.parent / "reports"
    found = sorted(into.glob("*-dummy/summary.json"))
    assert found, fetched.stdout
    assert json.loads(found[0].read_text())["run"]["scenario"] == "dummy"
    assert (found[0].parent / "index.html").is_file()
    again = site.make("reports")
    assert again.returncode == 0 and "0 reports fetched" in again.stdout, again.stdout


def test_an_unreachable_host_is_named_and_nothing_changes(site: Site) -> None:
    with socket.socket() as sock:  # a loopback port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory = site.inventory.parent.parent / "unreachable"
    inventory = write_inventory(
        directory, site.hosts, extra=f"slave3 ansible_host=127.0.0.1 ansible_port={port}\n"
    )
    done = site.make("prepare", inventory=inventory)
    assert done.returncode != 0
    assert f"host slave3 is unreachable as root@127.0.0.1:{port}" in done.stdout, done.stdout
    assert "not every host is ready: slave3 failed" in done.stdout
    assert all(changed == 0 for changed, _, _ in recap(done.stdout).values())


def test_a_wrong_ssh_key_is_named(site: Site, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other], check=True)
    inventory = write_inventory(tmp_path / "inventory", site.hosts, key=other)
    # Its own ssh control sockets: the suite's would carry the right key's logins over.
    done = site.make(
        "deploy", inventory=inventory, env={"ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path)}
    )
    assert done.returncode != 0
    for host in ("master", "slave1", "slave2"):
        assert f"host {host} is unreachable as {RUN_USER}@" in done.stdout, done.stdout
    assert "Permission denied (publickey)" in done.stdout


def _offline_inventory(
    directory: Path, settings: dict[str, str], host_vars: str = "", extra: str = ""
) -> Path:
    """An inventory whose hosts are never contacted (the checks come first)."""
    (directory / "group_vars").mkdir(parents=True)
    text = (ROOT / "group_vars" / "amoc").read_text()
    for name, value in settings.items():
        text, count = re.subn(rf"^{name}:.*$", f"{name}: {value}", text, flags=re.M)
        assert count == 1
    text += extra
    (directory / "group_vars" / "amoc").write_text(text)
    inventory = directory / "hosts"
    inventory.write_text(
        f"[amoc_master]\nm ansible_host=127.0.0.1 ansible_port=9 {host_vars}\n"
        "[amoc_slaves]\ns ansible_host=127.0.0.1 ansible_port=9\n"
        "[amoc:children]\namoc_master\namoc_slaves\n"
    )
    return inventory


def test_monitor_hosts_in_group_vars_pass_the_checks(tmp_path: Path) -> None:
    """Sources as maps and strings are taken by the checks (the unreachable hosts stop it)."""
    sources = '[{kind: ssh, host: db1, user: amoc, processes: [beam.smp]}, "local:beam.smp"]'
    done = _make("deploy", _offline_inventory(tmp_path, {"monitor_hosts": sources}))
    assert done.returncode != 0
    assert "monitor_hosts must be" not in done.stdout and "unreachable" in done.stdout, done.stdout


def _make(target: str, inventory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", target, f"INVENTORY={inventory}"],
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("settings", "host_vars", "message"),
    [
        ({"xmpp_port": '"5222"'}, "", 'xmpp_port = "5222" (str) for host m: xmpp_port must be'),
        ({"repeat_num": "0"}, "", "repeat_num = 0 (int) for host m: repeat_num must be"),
        ({"interarrival": "fast"}, "", "interarrival must be a number of milliseconds"),
        ({"scenario_params": "{dummy_wait: {a: 1}}"}, "", "scenario_params.dummy_wait = "),
        ({}, "amoc_capacity=-1", "amoc_capacity = -1 for host m: amoc_capacity must be"),
        ({"monitor_hosts": "42"}, "", "monitor_hosts = 42 (int) for host m: monitor_hosts "
         "must be a list of monitor sources"),
    ],
)  # fmt: skip
def test_a_wrong_typed_variable_is_named(
    tmp_path: Path, settings: dict[str, str], host_vars: str, message: str
) -> None:
    done = _make("deploy", _offline_inventory(tmp_path, settings, host_vars))
    assert done.returncode != 0
    assert message in done.stdout, done.stdout
    assert "PLAY [Build the release" not in done.stdout  # stopped before any change


@pytest.mark.parametrize(
    ("settings", "host_vars", "extra", "message"),
    [
        ({}, "", "interarival: 30\n", "unknown setting 'interarival' in group_vars/amoc; "
         "did you mean 'interarrival'?"),
        ({"scenario_params": "{dumy_wait: 5}"}, "", "", "unknown setting 'dumy_wait' in "
         "scenario_params of group_vars/amoc; did you mean 'dummy_wait'?"),
        ({}, "amoc_slave_node=2", "", "unknown setting 'amoc_slave_node' in host m's line in "
         "the inventory; did you mean 'amoc_slave_nodes'?"),
    ],
)  # fmt: skip
def test_a_misspelled_setting_is_refused_with_the_closest_name(
    tmp_path: Path, settings: dict[str, str], host_vars: str, extra: str, message: str
) -> None:
    done = _make("deploy", _offline_inventory(tmp_path, settings, host_vars, extra))
    assert done.returncode != 0
    assert message in done.stdout, done.stdout
    assert "PLAY [Check the settings and reach" not in done.stdout  # before any host


def test_an_inventory_without_its_group_vars_is_refused(tmp_path: Path) -> None:
    inventory = _offline_inventory(tmp_path, {})
    shutil.rmtree(tmp_path / "group_vars")  # only `hosts` copied
    message = f"the inventory {inventory} has no group_vars/amoc beside it"
    done = _make("deploy", inventory)
    assert done.returncode != 0 and message in done.stdout, done.stdout
    done = _make("status", inventory)
    assert done.returncode != 0 and f"the inventory '{inventory}' has no group_vars" in done.stderr


def test_a_missing_or_malformed_inventory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    done = _make("deploy", missing)
    assert done.returncode != 0
    assert f"the inventory '{missing}' does not exist" in done.stderr

    malformed = tmp_path / "hosts"
    malformed.write_text("[amoc_master\nm ansible_host=127.0.0.1\n")
    done = _make("prepare", malformed)
    assert done.returncode != 0
    assert f"Unable to parse {malformed} as an inventory source" in done.stdout + done.stderr
    done = _make("start", malformed)
    assert done.returncode != 0 and f"the inventory '{malformed}' cannot be read" in done.stderr

    no_master = tmp_path / "no_master"
    no_master.write_text("[amoc_slaves]\ns ansible_host=127.0.0.1\n[amoc:children]\namoc_slaves\n")
    done = _make("deploy", no_master)
    assert done.returncode != 0
    assert "needs exactly one host in [amoc_master] (it has 0)" in done.stdout, done.stdout


def test_first_contact_with_unknown_host_keys(site: Site, tmp_path: Path) -> None:
    """Hosts whose keys this machine does not know: refused, saying what to do; with their
    keys in a known_hosts file (KNOWN_HOSTS=path), the tasks go."""
    inventory = write_inventory(tmp_path / "inventory", site.hosts, common="")
    known = tmp_path / "known_hosts"
    known.write_text("")
    master = site.hosts.address("master")
    done = site.make(  # its own ssh control sockets: the suite's have checked the keys
        "deploy", f"KNOWN_HOSTS={known}", inventory=inventory,
        env={"ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode != 0
    assert "Host key verification failed" in done.stdout, done.stdout
    assert f"ssh-keyscan -p 22 {master} >> ~/.ssh/known_hosts" in done.stdout, done.stdout
    done = site.make("status", f"KNOWN_HOSTS={known}", inventory=inventory)
    assert done.returncode != 0
    assert "a host key this machine does not know yet" in done.stdout, done.stdout
    assert "status: 3 of 3 hosts failed" in done.stderr
    addresses = [site.hosts.address(h) for h in ("master", "slave1", "slave2")]
    scan = subprocess.run(
        ["ssh-keyscan", "-p", "22", *addresses], capture_output=True, text=True, timeout=60
    )
    known.write_text(scan.stdout)
    done = site.make("status", f"KNOWN_HOSTS={known}", inventory=inventory)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("no node running") == 3, done.stdout
