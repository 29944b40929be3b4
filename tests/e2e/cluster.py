"""A cluster from the release for the tests: a master console, slave processes, keys."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.terminal import Terminal, amoc
from tests.net import free_port

HOST = socket.gethostname()


@dataclass
class Cluster:
    """A master console and slave nodes, all from one release, on one port of loopback."""

    release: Path
    tag: str
    endpoint: str
    keys: Path
    slaves: list[str] = field(default_factory=list)
    master: Terminal | None = None
    # Slaves may run from their own copy of the release (another "host"'s files).
    homes: dict[str, Path] = field(default_factory=dict)

    def env(self, role: str, keys: Path | None = None) -> dict[str, str]:
        return {
            "AMOC_CLUSTER_ROLE": role,
            "AMOC_CLUSTER_BIND": self.endpoint,
            "AMOC_CLUSTER_MASTER": self.endpoint,
            "AMOC_CLUSTER_KEYS": str(keys or self.keys),
            "AMOC_CLUSTER_HEARTBEAT": "300",
            "AMOC_CLUSTER_DOWN_AFTER": "2000",
            "AMOC_INTERARRIVAL": "0",
            "AMOC_DUMMY_WAIT": "600000",
        }

    def name(self, i: int) -> str:
        return f"{self.tag}s{i}"

    def node(self, i: int) -> str:
        """The cluster's name for slave i."""
        return f"{self.name(i)}@{HOST}"

    def start_master(self, **extra: str) -> Terminal:
        args = ["--name", f"{self.tag}m", "console"]
        self.master = Terminal(self.release, args, {**self.env("master"), **extra})
        return self.master

    def start_slave(
        self,
        i: int,
        keys: Path | None = None,
        release: Path | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        home = release or self.release
        env = {**self.env("slave", keys), **(extra or {})}
        done = amoc(home, "--name", self.name(i), "start", env=env)
        assert done.returncode == 0, done.stderr
        self.slaves.append(self.name(i))
        self.homes[self.name(i)] = home

    def home(self, name: str) -> Path:
        return self.homes.get(name, self.release)

    def up(self) -> list[str]:
        assert self.master is not None
        nodes = self.master.value('[n["name"] for n in nodes() if n["up"]]')
        assert isinstance(nodes, list)
        return nodes

    def slave_pid(self, i: int) -> int:
        return int((self.home(self.name(i)) / "run" / self.name(i) / "node.pid").read_text())

    def slave_users(self, i: int) -> list[int]:
        """The ids running on slave i, asked on its own console (attach)."""
        term = Terminal(self.home(self.name(i)), ["--name", self.name(i), "attach"], {})
        try:
            users = term.value("amoc_local.users()")
        finally:
            term.leave()
        assert isinstance(users, list)
        return users

    def log(self, name: str) -> str:
        path = self.home(name) / "log" / f"{name}.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def cluster(release: Path, tmp_path: Path) -> Iterator[Cluster]:
    tag = f"c{os.getpid() % 10000}{int(time.time() * 1000) % 10000}"
    keys = tmp_path / "keys"
    made = amoc(release, "keys", str(keys))
    assert made.returncode == 0, made.stderr
    c = Cluster(release, tag, f"tcp://127.0.0.1:{free_port()}", keys)
    try:
        yield c
    finally:
        if c.master is not None and c.master.child.isalive():
            c.master.leave()
        for name in c.slaves:
            amoc(c.home(name), "--name", name, "stop")
