"""The monitor's sources: this machine's /proc, a remote host's over SSH, a Prometheus scrape.

A source is narrow: `sample()` gives a `procfs.Reading` (or raises `SourceError` when the
host cannot be read) and `close()` lets go of its connection. The sampler
(`amoc.monitor.service`) paces them, backs off when one fails, and never lets one stall a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import threading
import time
from typing import Any, Protocol

from amoc.errors import AmocError
from amoc.monitor import procfs
from amoc.monitor.spec import SourceSpec

log = logging.getLogger("amoc.monitor")

SSH_TIMEOUT_S = 5.0
SCRAPE_TIMEOUT_S = 5.0


class SourceError(AmocError):
    """A monitored host could not be read this time (unreachable, refused, bad output)."""


class MonitorError(AmocError):
    """`monitor_hosts` asks for something that cannot be: refused before a run starts."""


class Source(Protocol):
    """What the sampler needs of a source."""

    spec: SourceSpec

    async def sample(self) -> procfs.Reading:
        """The host's figures since the last sample."""
        ...

    async def close(self) -> None:
        """Let go of any connection."""
        ...


def _missing(spec: SourceSpec, counters: procfs.Counters, where: str) -> None:
    """MonitorError naming the first watched process that matches nothing."""
    for name, found in counters.procs.items():
        if not found:
            what = f"pid {name}" if name.isdigit() else f"process named {name!r}"
            raise MonitorError(
                f"monitor_hosts: {spec.describe()}: no {what} runs on {where} (a name is a "
                "process's comm, as `ps -o comm` shows it, or a pid)"
            )


class LocalSource:
    """This machine's /proc (read in the default executor: many small files)."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self._last: procfs.Counters | None = None

    def check(self) -> None:
        """Refuse names and pids that match no process now."""
        _missing(self.spec, procfs.read_local(self.spec.processes, time.time()), "this machine")

    async def sample(self) -> procfs.Reading:
        """This machine's figures since the last sample."""
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, self._read)
        except (OSError, procfs.ProcError) as exc:
            raise SourceError(f"/proc could not be read: {exc}") from None
        old, self._last = self._last, new
        return procfs.between(old, new)

    def _read(self) -> procfs.Counters:
        return procfs.read_local(self.spec.processes, time.time())

    async def close(self) -> None:
        """Nothing to let go of."""


class SshSource:
    """A remote host's /proc over one SSH connection (paramiko), kept open between samples;
    each sample is one command on it. Host keys are checked (known_hosts, else the user's)."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self._client: Any = None
        self._lock = threading.Lock()  # one command at a time on the connection
        self._last: procfs.Counters | None = None
        self.connects = 0  # how many times a connection was made (one while it holds)

    def _connect(self) -> Any:
        import paramiko

        client = paramiko.SSHClient()
        client.load_system_host_keys()
        if self.spec.known_hosts:
            try:
                client.load_host_keys(os.path.expanduser(self.spec.known_hosts))
            except OSError as exc:
                raise SourceError(f"known_hosts {self.spec.known_hosts}: {exc}") from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.spec.host, port=self.spec.port, username=self.spec.user,
                key_filename=os.path.expanduser(self.spec.key) if self.spec.key else None,
                timeout=SSH_TIMEOUT_S, banner_timeout=SSH_TIMEOUT_S,
                auth_timeout=SSH_TIMEOUT_S, allow_agent=False,
            )  # fmt: skip
        except (OSError, paramiko.SSHException) as exc:
            client.close()
            raise SourceError(f"cannot connect: {type(exc).__name__}: {exc}") from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        self.connects += 1
        return client

    def _run(self) -> str:
        import paramiko

        with self._lock:
            if self._client is None or not self._client.get_transport().is_active():
                self._drop()
                self._client = self._connect()
            try:
                _in, out, err = self._client.exec_command(procfs.COMMAND, timeout=SSH_TIMEOUT_S)
                text = out.read().decode("utf-8", "replace")
                status = out.channel.recv_exit_status()
            except (OSError, paramiko.SSHException, EOFError) as exc:
                self._drop()
                raise SourceError(f"the command failed: {type(exc).__name__}: {exc}") from None
            if status != 0 and procfs.MARK not in text:
                problem = err.read().decode("utf-8", "replace").strip()[:200]
                raise SourceError(f"reading /proc failed (exit {status}): {problem}")
            return str(text)

    def _drop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def read(self) -> procfs.Counters:
        """The host's counters now (blocking: call from a worker thread)."""
        text = self._run()
        try:
            return procfs.counters(procfs.split(text), self.spec.processes, time.time())
        except procfs.ProcError as exc:
            raise SourceError(str(exc)) from None

    def check(self, counters: procfs.Counters) -> None:
        """Refuse names that match no process on the host (when it could be read)."""
        _missing(self.spec, counters, self.spec.host)

    async def sample(self) -> procfs.Reading:
        """The host's figures since the last sample."""
        new = await asyncio.get_running_loop().run_in_executor(None, self.read)
        old, self._last = self._last, new
        return procfs.between(old, new)

    async def close(self) -> None:
        """Close the connection."""
        await asyncio.get_running_loop().run_in_executor(None, self._close)

    def _close(self) -> None:
        with self._lock:
            self._drop()


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format -> (name, labels, value) per sample (comments skipped)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        out.append((match.group(1), labels, value))
    return out


def _wanted(selector: str) -> tuple[str, dict[str, str]]:
    name, _, rest = selector.partition("{")
    return name, dict(_LABEL.findall(rest))


def select(samples: list[tuple[str, dict[str, str], float]], selector: str) -> float:
    """The sum of the samples a selector (`name` or `name{label="v"}`) matches; NaN: none."""
    name, labels = _wanted(selector)
    found = [
        v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items())
    ]
    return sum(found) if found else math.nan


def _node_exporter(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, float]:
    """The host figures node_exporter gives, cumulative where it counts."""
    busy = total = 0.0
    cores: dict[str, list[float]] = {}  # per cpu label: [busy, total] seconds
    for name, labels, value in samples:
        if name == "node_cpu_seconds_total":
            total += value
            core = cores.setdefault(labels.get("cpu", ""), [0.0, 0.0])
            core[1] += value
            if labels.get("mode") not in ("idle", "iowait"):
                busy += value
                core[0] += value
    rx = sum(
        v for n, ls, v in samples
        if n == "node_network_receive_bytes_total" and ls.get("device") != "lo"
    )  # fmt: skip
    tx = sum(
        v for n, ls, v in samples
        if n == "node_network_transmit_bytes_total" and ls.get("device") != "lo"
    )  # fmt: skip
    per_core: dict[str, float] = {}  # core0.busy, core0.total, ... in the cpu labels' order
    for k, label in enumerate(sorted(cores, key=lambda c: (len(c), c))):
        per_core[f"core{k}.busy"], per_core[f"core{k}.total"] = cores[label]
    return {
        **per_core,
        "busy": busy, "total": total, "cores": float(len(cores)), "rx": rx, "tx": tx,
        "load1": select(samples, "node_load1"),
        "mem_total": select(samples, "node_memory_MemTotal_bytes"),
        "mem_available": select(samples, "node_memory_MemAvailable_bytes"),
    }  # fmt: skip


class PrometheusSource:
    """A Prometheus scrape: node_exporter's host figures when it has them, and the chosen
    series (a counter, `..._total`, as its rate per second)."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self._session: Any = None
        self._last: tuple[float, dict[str, float], dict[str, float]] | None = None

    async def _fetch(self) -> str:
        import aiohttp

        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
            self._session = aiohttp.ClientSession(timeout=timeout)
        try:
            async with self._session.get(self.spec.url) as reply:
                if reply.status != 200:
                    raise SourceError(f"{self.spec.url} answered HTTP {reply.status}")
                return str(await reply.text())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise SourceError(f"cannot scrape {self.spec.url}: {why}") from None

    async def sample(self) -> procfs.Reading:
        """The scrape's figures since the last one."""
        now = time.time()
        samples = parse_exposition(await self._fetch())
        host = _node_exporter(samples)
        chosen = {s: select(samples, s) for s in self.spec.series}
        last, self._last = self._last, (now, host, chosen)
        return self._reading(now, host, chosen, last)

    def _reading(
        self,
        now: float,
        host: dict[str, float],
        chosen: dict[str, float],
        last: tuple[float, dict[str, float], dict[str, float]] | None,
    ) -> procfs.Reading:
        nan = math.nan
        seconds = now - last[0] if last else 0.0
        cpu = rx_s = tx_s = nan
        cores: tuple[float, ...] = ()
        if last and seconds > 0:
            old = last[1]
            if host["total"] > old["total"]:
                cpu = (host["busy"] - old["busy"]) / (host["total"] - old["total"]) * host["cores"]
                shares = []
                for k in range(int(host["cores"])):
                    busy, total = f"core{k}.busy", f"core{k}.total"
                    spent = host[total] - old.get(total, host[total])
                    shares.append((host[busy] - old.get(busy, 0.0)) / spent if spent > 0 else 0.0)
                cores = tuple(shares)
            rx_s = max(0.0, host["rx"] - old["rx"]) / seconds
            tx_s = max(0.0, host["tx"] - old["tx"]) / seconds
        series = {}
        for name, value in chosen.items():
            if name.split("{")[0].endswith("_total"):
                before = last[2].get(name, nan) if last else nan
                series[name] = max(0.0, value - before) / seconds if seconds > 0 else nan
            else:
                series[name] = value
        used = host["mem_total"] - host["mem_available"]
        return procfs.Reading(
            now, cpu, cores, used, host["mem_total"], host["load1"], rx_s, tx_s,
            host["rx"], host["tx"], {}, series,
        )  # fmt: skip

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def make(spec: SourceSpec) -> LocalSource | SshSource | PrometheusSource:
    """The source a spec asks for."""
    if spec.kind == "local":
        return LocalSource(spec)
    if spec.kind == "ssh":
        return SshSource(spec)
    return PrometheusSource(spec)
