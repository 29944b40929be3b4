"""Real XMPP servers for the tests (ejabberd or Prosody), started by tools/xmpp_server.py and
always stopped, and what the XMPP tests share: counters, the settings that reach a server, a
scenario run."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from amoc import metrics
from amoc.config import amoc_config
from amoc.runner import Controller, State
from tests.net import free_port

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "xmpp_server.py"
SCENARIOS = [ROOT / "scenarios"]


@dataclass
class XmppServer:
    """How tests reach the server, and the tool's verbs for it."""

    name: str
    host: str
    port: int
    http_port: int
    domain: str = "localhost"
    user_prefix: str = "user_"
    password_prefix: str = "password_"
    kind: str = "ejabberd"  # or "prosody"
    tls: bool = False  # STARTTLS required on c2s
    scram: bool = False  # SCRAM hashes stored instead of plain passwords
    tls_port: int = 0  # a direct-TLS (XEP-0368) c2s port too, 0: none
    cert: str = ""  # the server's self-signed certificate (PEM, verify with it) once started
    mam: bool = True  # every message archived (off for plain throughput: MAM costs 6-9x)
    scram_hash: str = "sha1"  # with scram: sha1 or sha256 hashes stored
    https_port: int = 0  # WebSocket and BOSH over TLS too, 0: none

    @property
    def muc_domain(self) -> str:
        """The MUC service."""
        return f"conference.{self.domain}"

    @property
    def pubsub_domain(self) -> str:
        """The PubSub service."""
        return f"pubsub.{self.domain}"

    def tool(self, verb: str, *extra: str, timeout: float = 180, check: bool = True) -> str:
        """Run tools/xmpp_server.py VERB for this instance; its output."""
        done = subprocess.run(
            [sys.executable, str(TOOL), verb, "--name", self.name, *extra],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"xmpp_server.py {verb} failed: {done.stderr or done.stdout}")
        return done.stdout

    def start(self) -> None:
        """Start (or restart after stop) on the same ports."""
        out = self.tool(
            "start", "--kind", self.kind,
            "--host", self.host, "--port", str(self.port),
            "--http-port", str(self.http_port), "--domain", self.domain,
            "--tls" if self.tls else "--no-tls", "--tls-port", str(self.tls_port),
            "--scram" if self.scram else "--no-scram",
            "--mam" if self.mam else "--no-mam", "--scram-hash", self.scram_hash,
            "--https-port", str(self.https_port),
        )  # fmt: skip
        self.cert = self.state().get("cert", "")
        assert bool(self.cert) == bool(self.tls or self.tls_port or self.https_port), out

    def state(self) -> dict[str, Any]:
        """What the tool saved about this instance (its instance.json)."""
        found = re.search(r"files in (.+)$", self.tool("status", check=False), re.M)
        assert found, f"no instance directory for {self.name!r}"
        return dict(json.loads((Path(found.group(1)) / "instance.json").read_text()))

    def stop(self) -> None:
        """Stop the server."""
        self.tool("stop")

    def register(self, first: int, last: int) -> None:
        """Register users first..last (user_<id> / password_<id>)."""
        self.tool("register", "--first", str(first), "--last", str(last))


@contextmanager
def own_server(
    name: str,
    users: int = 0,
    *,
    kind: str = "ejabberd",
    tls: bool = False,
    scram: bool = False,
    tls_port: int = 0,
    mam: bool = True,
    scram_hash: str = "sha1",
    https_port: int = 0,
) -> Iterator[XmppServer]:
    """A server called `name` (ejabberd, or Prosody with kind="prosody") on free loopback
    ports, with users 1..`users` registered; stopped and removed at the end. `tls` requires
    STARTTLS (the certificate is in `.cert`), `scram` stores SCRAM hashes, `tls_port` adds a
    direct-TLS port, `mam=False` leaves message archiving out."""
    server = XmppServer(
        name, "127.0.0.1", free_port(), free_port(),
        kind=kind, tls=tls, scram=scram, tls_port=tls_port, mam=mam, scram_hash=scram_hash,
        https_port=https_port,
    )  # fmt: skip
    server.tool("install", "--kind", kind, timeout=600)
    try:
        server.start()
        if users:
            server.register(1, users)
        yield server
    finally:
        server.tool("remove")


@pytest.fixture(scope="session")
def xmpp_server() -> Iterator[XmppServer]:
    """One ejabberd for the whole session on free loopback ports: plain TCP, no MAM (the
    throughput tests run on it as before archiving existed)."""
    with own_server(f"pytest{free_port()}", mam=False) as server:
        yield server


@pytest.fixture(scope="session")
def prosody_server() -> Iterator[XmppServer]:
    """One Prosody for the whole session: STARTTLS required, SCRAM storage, direct TLS on
    `tls_port`, WebSocket and BOSH over TLS on `https_port`."""
    name = f"pytest_prosody{free_port()}"
    with own_server(
        name, kind="prosody", tls=True, scram=True, tls_port=free_port(), https_port=free_port()
    ) as s:
        yield s


@pytest.fixture(scope="session")
def ejabberd_tls_server() -> Iterator[XmppServer]:
    """One ejabberd for the whole session: STARTTLS required, direct TLS on `tls_port`,
    WebSocket and BOSH over TLS on `https_port`."""
    name = f"pytest_ejabberd_tls{free_port()}"
    with own_server(name, tls=True, tls_port=free_port(), https_port=free_port()) as server:
        yield server


def count(name: str) -> int:
    """A counter's current value (counters are process-wide: tests compare deltas)."""
    return int(metrics.counter(name).value)


def server_settings(server: XmppServer, client: str) -> dict[str, Any]:
    """The xmpp_* settings that reach `server` with the `client` implementation."""
    return {
        "xmpp_client": client,
        "xmpp_host": server.host,
        "xmpp_port": server.port,
        "xmpp_domain": server.domain,
        "xmpp_username_prefix": server.user_prefix,
        "xmpp_password_prefix": server.password_prefix,
    }


def connect_kw(server: XmppServer, client: str) -> dict[str, Any]:
    """The same as `amoc.xmpp.connect` overrides (short names)."""
    return {k.removeprefix("xmpp_"): v for k, v in server_settings(server, client).items()}


async def run_scenario(
    settings: dict[str, Any],
    first: int,
    last: int,
    deadline_s: float,
    name: str = "xmpp_one_to_one",
) -> dict[str, Any]:
    """Run scenario `name` for ids first..last with the runner; return its final status
    (with `took_s`, from `do` to the end)."""
    ctl = Controller(scenario_dirs=SCENARIOS)
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        await ctl.do(name, first, last, settings=settings)
        end = began + deadline_s
        while ctl.status().state != State.FINISHED.value:
            assert loop.time() < end, f"{name} still running after {deadline_s} s"
            await asyncio.sleep(0.05)
        return {**ctl.status().to_dict(), "took_s": loop.time() - began}
    finally:
        await ctl.close()
        for key in settings:
            amoc_config.unset(key)
