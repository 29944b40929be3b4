"""Real hosts on this machine: a network namespace each, with its own sshd, address,
host name and /home, joined by a bridge (see shared/FACTS.md, "Several real hosts").

    hosts = NetnsHosts(workdir, ["master", "slave1", "slave2"])
    hosts.up()                 # root logs in with hosts.key; nothing else can
    ...                        # ssh root@hosts.address("master") -i hosts.key
    hosts.down()               # always: processes by pid, sshd, links, namespaces

Everything made here is named with a tag unique to this process, and removed by down(),
which also works on a half-made set.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.77.x.0/24 that no interface of this machine uses yet."""
    used = _ip("-o", "-4", "addr", "show").stdout
    start = os.getpid() % 200
    for i in range(200):
        net = ipaddress.IPv4Network(f"10.77.{20 + (start + i) % 200}.0/24")
        if f" 10.77.{net.network_address.packed[2]}." not in used:
            return net
    raise RuntimeError("no free 10.77.x.0/24 subnet for the test hosts")


@dataclass
class Host:
    """One namespace host."""

    name: str
    netns: str
    hostname: str
    address: str
    veth: str
    dir: Path
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def home(self) -> Path:
        """What the host sees as /home."""
        return self.dir / "home"


class NetnsHosts:
    """A set of namespace hosts behind one bridge, reachable from this namespace."""

    def __init__(self, workdir: Path, names: list[str]) -> None:
        self.tag = f"{os.getpid() % 100000:05d}"
        self.workdir = workdir
        self.net = _free_subnet()
        self.bridge = f"amb{self.tag}"
        self.gateway = str(self.net.network_address + 1)
        self.key = workdir / "id_ed25519"
        self.known_hosts = workdir / "known_hosts"
        self.hosts = {
            name: Host(
                name=name,
                netns=f"amoc-{self.tag}-{name}",
                hostname=f"{name}-{self.tag}",
                address=str(self.net.network_address + 10 + i),
                veth=f"am{self.tag}v{i}",
                dir=workdir / name,
            )
            for i, name in enumerate(names)
        }

    def address(self, name: str) -> str:
        """The host's address (on the bridge)."""
        return self.hosts[name].address

    def up(self) -> None:
        """Make the bridge, the namespaces and their sshd; wait until each answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "amoc-tests", "-f", self.key],
            check=True,
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{self.net.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for host in self.hosts.values():
            self._make(host)
        for host in self.hosts.values():
            self._wait_for_sshd(host)

    def _make(self, host: Host) -> None:
        host.home.mkdir(parents=True)
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", host.veth, "master", self.bridge)
        _ip("link", "set", host.veth, "up")
        inside = ["netns", "exec", host.netns, "ip"]
        _ip(*inside, "addr", "add", f"{host.address}/{self.net.prefixlen}", "dev", "eth0")
        _ip(*inside, "link", "set", "eth0", "up")
        _ip(*inside, "link", "set", "lo", "up")
        host_key = host.dir / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key], check=True)
        root_keys = host.dir / "root_authorized_keys"
        root_keys.write_text(Path(f"{self.key}.pub").read_text())
        config = host.dir / "sshd_config"
        # Root logs in with the test's key from a file of ours; other users (the run user
        # that `make prepare` makes) with their own ~/.ssh/authorized_keys, as on a real host.
        config.write_text(
            f"ListenAddress {host.address}\n"
            "Port 22\n"
            f"HostKey {host_key}\n"
            f"PidFile {host.dir / 'sshd.pid'}\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "AuthorizedKeysFile .ssh/authorized_keys\n"
            "Subsystem sftp internal-sftp\n"
            "LogLevel VERBOSE\n"
            "Match User root\n"
            f"    AuthorizedKeysFile {root_keys}\n"
        )
        script = (
            f"hostname {host.hostname} && mount --bind {host.home} /home && "
            f"exec {SSHD} -D -e -f {config}"
        )
        with open(host.dir / "sshd.log", "ab") as log:
            # ip netns exec, unshare and sh all exec: the pid we get is sshd's.
            host.sshd = subprocess.Popen(
                [
                    "ip", "netns", "exec", host.netns,
                    "unshare", "--mount", "--uts", "--propagation", "private",
                    "sh", "-c", script,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def _wait_for_sshd(self, host: Host, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert host.sshd is not None
            if host.sshd.poll() is not None:
                log = (host.dir / "sshd.log").read_text(errors="replace")
                raise RuntimeError(f"sshd of {host.name} exited:\n{log}")
            try:
                with socket.create_connection((host.address, 22), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd of {host.name} at {host.address} did not answer")
            time.sleep(0.1)

    def processes(self, name: str) -> list[int]:
        """Pids of the processes inside the host's network namespace (all started by us)."""
        done = _ip("netns", "pids", self.hosts[name].netns, check=False)
        return [int(p) for p in done.stdout.split()]

    def down(self) -> None:
        """Remove everything up() made, in reverse; safe on a half-made set."""
        for host in self.hosts.values():
            for pid in self.processes(host.name):
                if host.sshd is None or pid != host.sshd.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if host.sshd is not None and host.sshd.poll() is None:
                host.sshd.terminate()
                try:
                    host.sshd.wait(10)
                except subprocess.TimeoutExpired:
                    host.sshd.kill()
                    host.sshd.wait(10)
        for host in self.hosts.values():
            _ip("link", "del", host.veth, check=False)
            _ip("netns", "del", host.netns, check=False)
        _ip("link", "del", self.bridge, check=False)


if __name__ == "__main__":  # a manual check: make the hosts, wait for Enter, remove them
    import sys
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="amoc-hosts-"))
    hosts = NetnsHosts(work, sys.argv[1:] or ["master", "slave1", "slave2"])
    try:
        hosts.up()
        for h in hosts.hosts.values():
            print(f"{h.name}: ssh -i {hosts.key} root@{h.address}  (hostname {h.hostname})")
        input("Enter removes them ")
    finally:
        hosts.down()
