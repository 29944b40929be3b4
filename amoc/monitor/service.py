"""The monitor: samples every source of `monitor_hosts` on the node's clock, in its loop.

Each source has its own task: a sample every `monitor_interval` ms, each within a timeout.
A source that fails is logged once (and once more when it is back), retried after 1, 2,
4... up to `MAX_BACKOFF_S` seconds, and meanwhile has no data: it never stalls or fails a
run. The latest reading of each source feeds /metrics (gauges with a `host` label), the
live view, and the recorder's rows (the `mon.*` columns, `columns()`), which the report
plots under the client load and the capacity search checks (`server_values`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from amoc.config import Config, Param, positive_ms
from amoc.metrics.promnames import Family
from amoc.monitor import procfs, sources, spec

log = logging.getLogger("amoc.monitor")

MAX_BACKOFF_S = 30.0
MIB = 1024 * 1024

PARAMETERS: tuple[Param, ...] = (
    Param(
        "monitor_hosts",
        [],
        "servers under test to sample: a list of sources, each {kind = local | ssh | "
        "prometheus, ...} or 'local:NAME', 'ssh://user@host/NAME', 'http://host:port/metrics'",
        spec.verify,
        start_only=True,
    ),
    Param(
        "monitor_interval",
        1000,
        "ms between two samples of each monitored host",
        positive_ms,
        start_only=True,
    ),
)

# (what, family, kind, help) of the /metrics gauges, per host or per host and process.
_HOST_FAMILIES = (
    ("up", "amoc_monitor_up", "gauge", "1 when the monitored host's last sample worked"),
    ("sampled", "amoc_monitor_sample_timestamp_seconds", "gauge",
     "when the figures of the monitored host were read (Unix time)"),
    ("cpu", "amoc_monitor_host_cpu_cores", "gauge",
     "busy cores of the monitored host over the last interval (1.5: one and a half)"),
    ("mem_used", "amoc_monitor_host_memory_used_bytes", "gauge",
     "memory in use on the monitored host (total - available)"),
    ("mem_total", "amoc_monitor_host_memory_total_bytes", "gauge",
     "memory of the monitored host"),
    ("load1", "amoc_monitor_host_load1", "gauge", "the monitored host's 1-minute load"),
    ("net_rx", "amoc_monitor_host_network_receive_bytes_total", "counter",
     "bytes received by the monitored host (every interface but lo)"),
    ("net_tx", "amoc_monitor_host_network_transmit_bytes_total", "counter",
     "bytes sent by the monitored host (every interface but lo)"),
)  # fmt: skip
_PROC_FAMILIES = (
    ("cpu", "amoc_monitor_process_cpu_cores", "gauge",
     "cores a monitored process used over the last interval (1.0: one core)"),
    ("cpu_seconds", "amoc_monitor_process_cpu_seconds_total", "counter",
     "CPU seconds a monitored process has used (user + system)"),
    ("rss", "amoc_monitor_process_resident_memory_bytes", "gauge",
     "resident memory of a monitored process"),
    ("count", "amoc_monitor_processes", "gauge", "processes matched by the name"),
)  # fmt: skip
_SERIES_FAMILY = Family(
    "amoc_monitor_series", "gauge",
    "a series chosen from a monitored Prometheus endpoint (a counter as its rate per second)",
)  # fmt: skip

# Metrics a capacity search's threshold may name on the server side: (name, help).
SERVER_METRICS = {
    "server.cpu": "% of one core used by a watched process (or a host with none), mean over "
    "the hold",
    "server.host_cpu": "% of one core busy on a monitored host (200: two cores), mean over "
    "the hold",
    "server.rss_mb": "resident MiB of a watched process, highest in the hold",
    "server.mem_used_mb": "MiB in use on a monitored host, highest in the hold",
    "server.load1": "1-minute load of a monitored host, highest in the hold",
}


def column(label: str, what: str, process: str | None = None) -> str:
    """The recorder's column of a figure: `mon.<label>.<what>` or `mon.<label>.<proc>.<what>`."""
    return f"mon.{label}.{process}.{what}" if process else f"mon.{label}.{what}"


@dataclass
class _State:
    source: Any
    reading: procfs.Reading | None = None
    up: bool = False
    failures: int = 0
    error: str = ""
    samples: int = 0
    comms: dict[str, str] = field(default_factory=dict)  # a watched name -> its comm, seen
    # The rates of the readings since the recorder's last row: figure -> (sum of rate x
    # seconds, seconds), so that a row's rate covers its whole interval, not only the last
    # sample's (a row a second, a sample each 0.5 s: half the samples' CPU would not show).
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)

    def note(self, new: procfs.Reading) -> None:
        """Take `new` as the latest reading and add its rates over its interval to `spans`."""
        old, self.reading = self.reading, new
        seconds = new.time - old.time if old is not None else 0.0
        if seconds <= 0:
            return
        rates = {"cpu": new.cpu, "net_rx_kb_s": new.net_rx_s, "net_tx_kb_s": new.net_tx_s}
        rates.update((f"{name}.cpu", p.cpu) for name, p in new.procs.items())
        for what, rate in rates.items():
            if not math.isnan(rate):
                area, span = self.spans.get(what, (0.0, 0.0))
                self.spans[what] = (area + rate * seconds, span + seconds)

    def rate(self, what: str, latest: float) -> float:
        """The mean of rate `what` over the readings since the last row (`latest`, the last
        reading's, when none has an interval yet)."""
        area, span = self.spans.get(what, (0.0, 0.0))
        return area / span if span > 0 else latest


class Monitor:
    """Samples `specs` every `interval` s once started (in the node's loop)."""

    def __init__(self, specs: Sequence[spec.SourceSpec], interval: float = 1.0) -> None:
        self.specs = tuple(specs)
        self.interval = interval
        self.timeout = max(2.0, min(10.0, 5 * interval))
        self._states = {s.label: _State(sources.make(s)) for s in self.specs}
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_config(cls, config: Config) -> Monitor | None:
        """The monitor the settings ask for (None: no `monitor_hosts`)."""
        config.declare(PARAMETERS)
        specs = spec.parse(config.get("monitor_hosts"))
        if not specs:
            return None
        return cls(specs, float(config.get("monitor_interval")) / 1000.0)

    async def check(self) -> None:
        """Refuse, before any user starts, what cannot be monitored: a process name or pid
        that matches nothing here (or on an SSH host that answers). Unreachable hosts are
        not refused: they are logged and retried."""
        await asyncio.gather(*(self._check(label, s) for label, s in self._states.items()))

    async def _check(self, label: str, state: _State) -> None:
        source, loop = state.source, asyncio.get_running_loop()
        if isinstance(source, sources.LocalSource):
            await loop.run_in_executor(None, source.check)
        elif isinstance(source, sources.SshSource) and source.spec.processes:
            try:
                read = loop.run_in_executor(None, source.read)
                counters = await asyncio.wait_for(read, self.timeout)
            except (sources.SourceError, TimeoutError) as exc:
                self._failed(label, state, exc)  # logged once; sampled again with backoff
                return
            source.check(counters)

    def start(self) -> None:
        """A sampling task per source."""
        loop = asyncio.get_running_loop()
        for label, state in self._states.items():
            self._tasks.append(loop.create_task(self._run(label, state), name=f"monitor-{label}"))

    async def stop(self) -> None:
        """Stop sampling and close the connections."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for state in self._states.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(state.source.close(), 5)

    async def _run(self, label: str, state: _State) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            try:
                reading = await asyncio.wait_for(state.source.sample(), self.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a source must never stop the node
                delay = self._failed(label, state, exc)
                await asyncio.sleep(delay)
                due = loop.time()
                continue
            if not state.up and state.failures:
                log.warning("monitor %s (%s): sampling again after %d failed tries",
                            label, state.source.spec.describe(), state.failures)  # fmt: skip
            state.note(reading)
            state.up, state.failures, state.error = True, 0, ""
            state.samples += 1
            state.comms.update((n, p.comm) for n, p in reading.procs.items() if p.comm)
            due += self.interval
            await asyncio.sleep(max(0.0, due - loop.time()))
            if loop.time() - due > self.interval:  # fell behind (a slow host): skip ahead
                due = loop.time()

    def _failed(self, label: str, state: _State, exc: BaseException) -> float:
        """Note a failed sample; the delay before the next try."""
        text = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            text = f"no answer within {self.timeout:g} s"
        if state.failures == 0:
            log.warning("monitor %s (%s): %s; retrying with backoff, no data until it answers",
                        label, state.source.spec.describe(), text)  # fmt: skip
        state.failures += 1
        state.up, state.error, state.reading = False, text, None
        return float(min(MAX_BACKOFF_S, self.interval * 2 ** (state.failures - 1)))

    # -- what the others read ---------------------------------------------------------------

    def status(self) -> dict[str, str]:
        """Per source: `ok`, or `no data: <why>`."""
        out = {}
        for label, state in self._states.items():
            if state.up:
                out[label] = "ok"
            else:
                out[label] = "no data" + (f": {state.error}" if state.error else "")
        return out

    def describe(self) -> dict[str, str]:
        """Per source label, what it is (`ssh root@host (beam.smp)`)."""
        return {label: s.source.spec.describe() for label, s in self._states.items()}

    def readings(self) -> dict[str, procfs.Reading | None]:
        """The latest reading of each source (None: no data)."""
        return {label: s.reading if s.up else None for label, s in self._states.items()}

    def columns(self, started: float = 0.0) -> dict[str, float]:
        """The recorder's `mon.*` columns of a row now (NaN where a source has no data); each
        source's `t` is when its reading was taken, in s since `started` (the run's axis).
        Rates (CPU, network) are their means over every reading since the last row."""
        out: dict[str, float] = {}
        for label, state in self._states.items():
            r = state.reading if state.up else None
            nan = math.nan
            out[column(label, "t")] = r.time - started if r else nan
            out[column(label, "cpu")] = 100 * state.rate("cpu", r.cpu) if r else nan
            out[column(label, "mem_mb")] = r.mem_used / MIB if r else nan
            out[column(label, "load1")] = r.load1 if r else nan
            for what, latest in (("net_rx_kb_s", r.net_rx_s if r else nan),
                                 ("net_tx_kb_s", r.net_tx_s if r else nan)):  # fmt: skip
                out[column(label, what)] = state.rate(what, latest) / 1024 if r else nan
            for name in state.source.spec.processes:
                p = r.procs.get(name) if r else None
                share = state.rate(f"{name}.cpu", p.cpu) if p else nan
                out[column(label, "cpu", name)] = 100 * share
                out[column(label, "cpu_s", name)] = p.cpu_seconds if p else nan
                out[column(label, "rss_mb", name)] = p.rss / MIB if p else nan
            for name in state.source.spec.series:
                out[column(label, name, "series")] = r.series.get(name, nan) if r else nan
            state.spans.clear()
        return out

    def charts(self) -> list[tuple[str, str, list[tuple[str, str]]]]:
        """The report's charts of the servers: (title, unit, [(column, legend)])."""
        cpu: list[tuple[str, str]] = []
        mem: list[tuple[str, str]] = []
        other: list[tuple[str, str]] = []
        for label, state in self._states.items():
            s = state.source.spec
            for name in s.processes:
                shown = self._shown(state, name)
                cpu.append((column(label, "cpu", name), f"{shown} on {label}"))
                mem.append((column(label, "rss_mb", name), f"{shown} RSS on {label}"))
            if s.kind != "prometheus" or not s.series:
                cpu.append((column(label, "cpu"), f"host {label}"))
                mem.append((column(label, "mem_mb"), f"used on {label}"))
                other.append((column(label, "load1"), f"load1 {label}"))
            other += [(column(label, n, "series"), f"{n} on {label}") for n in s.series]
        out = [("Servers under test: CPU", "% of one core", cpu),
               ("Servers under test: memory", "MiB", mem)]  # fmt: skip
        if other:
            out.append(("Servers under test: load and chosen series", "value", other))
        return out

    @staticmethod
    def _shown(state: _State, name: str) -> str:
        """A watched name as a legend shows it: a pid with its process's name."""
        comm = state.comms.get(name) if name.isdigit() else None
        return f"{comm} {name}" if comm else name

    def view(self) -> dict[str, Any]:
        """A JSON-friendly view for the live table (over the attach socket too)."""
        out: dict[str, Any] = {}
        for label, state in self._states.items():
            r = state.reading if state.up else None
            entry: dict[str, Any] = {"up": bool(r), "error": state.error}
            if r is not None:
                entry.update(cpu=r.cpu, mem_used=r.mem_used, load1=r.load1)
                entry["procs"] = {n: {"cpu": p.cpu, "rss": p.rss} for n, p in r.procs.items()}
            out[label] = entry
        return out

    def exposition(self) -> list[tuple[Family, tuple[tuple[str, str], ...], float]]:
        """The /metrics samples: (family, labels, value), `host` and `process` labels."""
        out: list[tuple[Family, tuple[tuple[str, str], ...], float]] = []
        for label, state in self._states.items():
            r = state.reading if state.up else None
            host = (("host", label),)
            values: dict[str, float] = {"up": 1.0 if r else 0.0}
            if r is not None:
                values.update(sampled=r.time, cpu=r.cpu, mem_used=r.mem_used, mem_total=r.mem_total,
                              load1=r.load1, net_rx=r.net_rx, net_tx=r.net_tx)  # fmt: skip
            for what, name, kind, text in _HOST_FAMILIES:
                if what in values and not math.isnan(values[what]):
                    out.append((Family(name, kind, text), host, values[what]))
            for proc, p in r.procs.items() if r else ():
                figures = {"cpu": p.cpu, "cpu_seconds": p.cpu_seconds, "rss": float(p.rss),
                           "count": float(p.count)}  # fmt: skip
                for what, name, kind, text in _PROC_FAMILIES:
                    if not math.isnan(figures[what]):
                        out.append((Family(name, kind, text), (*host, ("process", proc)),
                                    figures[what]))  # fmt: skip
            for series, value in r.series.items() if r else ():
                if not math.isnan(value):
                    out.append((_SERIES_FAMILY, (*host, ("series", series)), value))
        return out


def server_values(
    rows: Sequence[Mapping[str, float]], specs: Sequence[spec.SourceSpec]
) -> dict[str, list[tuple[str, float]]]:
    """Per server metric (`SERVER_METRICS`), its value on each host or process over `rows`
    (a hold's rows): [(where, value)], NaN where a source had no data."""
    out: dict[str, list[tuple[str, float]]] = {name: [] for name in SERVER_METRICS}

    def series(col: str) -> list[float]:
        return [r[col] for r in rows if col in r and not math.isnan(r[col])]

    def mean(col: str) -> float:
        found = series(col)
        return sum(found) / len(found) if found else math.nan

    def high(col: str) -> float:
        found = series(col)
        return max(found) if found else math.nan

    for s in specs:
        host_cpu = mean(column(s.label, "cpu"))
        out["server.host_cpu"].append((s.label, host_cpu))
        out["server.mem_used_mb"].append((s.label, high(column(s.label, "mem_mb"))))
        out["server.load1"].append((s.label, high(column(s.label, "load1"))))
        for name in s.processes:
            where = f"{name} on {s.label}"
            out["server.cpu"].append((where, mean(column(s.label, "cpu", name))))
            out["server.rss_mb"].append((where, high(column(s.label, "rss_mb", name))))
        if not s.processes:
            out["server.cpu"].append((s.label, host_cpu))
    return out
