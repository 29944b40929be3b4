"""Reading Linux's /proc: the host's CPU, memory, load and network, and named processes.

The same parsers serve this machine (files read directly) and a remote host (the files'
text fetched in one SSH command, see `COMMAND` and `split`). A `Counters` value is
cumulative (CPU jiffies, bytes); two of them make an interval's `Reading` (`between`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Linux's USER_HZ is 100 everywhere that matters; /proc reports CPU time in its ticks.
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# The marker between the files in a remote command's output.
MARK = "@@amoc@@"
# One shell command that prints every file a sample needs, each after a marker line:
# stat, meminfo, loadavg, net/dev, then `pid comm` and `pid stat` of every process (the
# remote side filters nothing: names are matched here, so the command stays fixed).
COMMAND = (
    f"for f in stat meminfo loadavg net/dev; do echo '{MARK} '$f; cat /proc/$f; done; "
    f"echo '{MARK} procs'; for d in /proc/[0-9]*; do "
    'read -r s < $d/stat 2>/dev/null && echo "$s"; done; '
    f"echo '{MARK} pagesize'; getconf PAGESIZE; echo '{MARK} ticks'; getconf CLK_TCK"
)


class ProcError(Exception):
    """/proc could not be read or made no sense."""


@dataclass(frozen=True)
class Proc:
    """One process from its /proc/PID/stat line."""

    pid: int
    ppid: int
    name: str  # comm: at most 15 characters
    cpu_ticks: int  # utime + stime
    rss_pages: int


@dataclass
class Counters:
    """A host's cumulative figures at one moment (`time`: the sampler's clock, s)."""

    time: float
    cpu: list[tuple[int, int]]  # per core: (busy ticks, total ticks); [0] is every core
    mem_total: int  # bytes
    mem_available: int  # bytes
    load1: float
    net_rx: int  # bytes over every interface but lo
    net_tx: int
    procs: dict[str, list[Proc]] = field(default_factory=dict)  # watched name -> processes
    ticks: int = TICKS
    page: int = PAGE


@dataclass(frozen=True)
class ProcReading:
    """A watched process (or every process of that name) over an interval."""

    cpu: float  # share of one core (1.5: one and a half cores), NaN on the first sample
    cpu_seconds: float  # cumulative CPU seconds now
    rss: float  # bytes now
    count: int  # processes matched now
    comm: str = ""  # the first match's name (what a pid is: beam.smp)


@dataclass(frozen=True)
class Reading:
    """A host's figures over an interval: what a monitor source yields each sample."""

    time: float
    cpu: float  # busy cores (1.5: one and a half cores busy), NaN on the first sample
    cores: tuple[float, ...]  # each core's busy share (0..1)
    mem_used: float  # bytes (total - available)
    mem_total: float
    load1: float
    net_rx_s: float  # bytes per second
    net_tx_s: float
    net_rx: float  # cumulative bytes
    net_tx: float
    procs: dict[str, ProcReading] = field(default_factory=dict)
    series: dict[str, float] = field(default_factory=dict)  # a scrape's chosen series


def parse_stat(text: str) -> list[tuple[int, int]]:
    """/proc/stat -> per cpu line (all, cpu0, cpu1...): (busy ticks, total ticks)."""
    out = []
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        parts = line.split()
        values = [int(v) for v in parts[1:]]
        # user nice system idle iowait irq softirq steal guest guest_nice: guest time is in
        # user already, idle and iowait are not busy.
        total = sum(values[:8])
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        out.append((total - idle, total))
    if not out:
        raise ProcError("/proc/stat has no cpu lines")
    return out


def parse_meminfo(text: str) -> tuple[int, int]:
    """/proc/meminfo -> (total, available) bytes."""
    found = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("MemTotal", "MemAvailable", "MemFree"):
            found[name] = int(rest.split()[0]) * 1024
    if "MemTotal" not in found:
        raise ProcError("/proc/meminfo has no MemTotal")
    return found["MemTotal"], found.get("MemAvailable", found.get("MemFree", 0))


def parse_loadavg(text: str) -> float:
    """/proc/loadavg -> the 1-minute load."""
    try:
        return float(text.split()[0])
    except (IndexError, ValueError):
        raise ProcError(f"/proc/loadavg is {text[:40]!r}") from None


def parse_net_dev(text: str) -> tuple[int, int]:
    """/proc/net/dev -> (received, transmitted) bytes over every interface but lo."""
    rx = tx = 0
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        if not rest or name.strip() == "lo":
            continue
        fields = rest.split()
        rx += int(fields[0])
        tx += int(fields[8])
    return rx, tx


_STAT = re.compile(r"^(\d+) \((.*)\) (\S) (-?\d+)")


def parse_proc_stat(line: str) -> Proc | None:
    """One /proc/PID/stat line -> Proc (None when it is not one)."""
    match = _STAT.match(line)
    if not match:
        return None
    rest = line[match.end(2) + 2 :].split()
    try:
        # After "(comm) ": state ppid ... utime is field 14, stime 15, rss 24 (1-based).
        return Proc(
            int(match.group(1)), int(rest[1]), match.group(2), int(rest[11]) + int(rest[12]),
            int(rest[21]),
        )  # fmt: skip
    except (IndexError, ValueError):
        return None


def split(output: str) -> dict[str, str]:
    """The output of `COMMAND` -> {file: text}."""
    parts: dict[str, str] = {}
    current: str | None = None
    lines: list[str] = []
    for line in output.splitlines():
        if line.startswith(MARK + " "):
            if current is not None:
                parts[current] = "\n".join(lines)
            current, lines = line[len(MARK) + 1 :].strip(), []
        else:
            lines.append(line)
    if current is not None:
        parts[current] = "\n".join(lines)
    return parts


def matches(proc: Proc, wanted: str) -> bool:
    """Whether a process is the one watched: by pid (`pid:N` or a number) or comm name."""
    if wanted.isdigit():
        return proc.pid == int(wanted)
    # comm is cut to 15 characters: `prosody` may run as lua5.4, `beam.smp` as beam.smp.
    return proc.name == wanted[:15]


def pick(procs: Iterable[Proc], names: Sequence[str]) -> dict[str, list[Proc]]:
    """The processes of each watched name (or pid)."""
    out: dict[str, list[Proc]] = {n: [] for n in names}
    for proc in procs:
        for name in names:
            if matches(proc, name):
                out[name].append(proc)
    return out


def counters(files: Mapping[str, str], names: Sequence[str], now: float) -> Counters:
    """A host's Counters from the text of its /proc files (`split`'s keys)."""
    try:
        cpu = parse_stat(files["stat"])
        total, available = parse_meminfo(files["meminfo"])
        load1 = parse_loadavg(files["loadavg"])
        rx, tx = parse_net_dev(files.get("net/dev", ""))
        procs = [p for p in map(parse_proc_stat, files.get("procs", "").splitlines()) if p]
        ticks = int(files.get("ticks", "").strip() or TICKS)
        page = int(files.get("pagesize", "").strip() or PAGE)
    except KeyError as exc:
        raise ProcError(f"/proc/{exc.args[0]} is missing from the output") from None
    except ValueError as exc:
        raise ProcError(f"unexpected /proc contents: {exc}") from None
    return Counters(now, cpu, total, available, load1, rx, tx, pick(procs, names), ticks, page)


def between(old: Counters | None, new: Counters) -> Reading:
    """The Reading over the interval from `old` to `new` (the first: rates are NaN)."""
    nan = math.nan
    seconds = new.time - old.time if old is not None else 0.0
    cpu = nan
    cores: tuple[float, ...] = ()
    rx_s = tx_s = nan
    if old is not None and seconds > 0:
        shares = []
        for (busy, total), (busy0, total0) in zip(new.cpu, old.cpu, strict=False):
            shares.append((busy - busy0) / (total - total0) if total > total0 else 0.0)
        cores = tuple(shares[1:])
        # Busy cores: the all-cpu line's share times the number of cores.
        cpu = shares[0] * max(1, len(cores))
        rx_s = max(0, new.net_rx - old.net_rx) / seconds
        tx_s = max(0, new.net_tx - old.net_tx) / seconds
    procs = {}
    for name, found in new.procs.items():
        ticks = sum(p.cpu_ticks for p in found)
        share = nan
        if old is not None and seconds > 0 and name in old.procs:
            # Only processes seen both times: one that started or ended in between would
            # count its whole life in this interval.
            before = {p.pid: p.cpu_ticks for p in old.procs[name]}
            moved = sum(p.cpu_ticks - before[p.pid] for p in found if p.pid in before)
            share = max(0, moved) / new.ticks / seconds
        procs[name] = ProcReading(
            share, ticks / new.ticks, sum(p.rss_pages for p in found) * new.page, len(found),
            found[0].name if found else "",
        )  # fmt: skip
    return Reading(
        new.time, cpu, cores, new.mem_total - new.mem_available, new.mem_total, new.load1,
        rx_s, tx_s, new.net_rx, new.net_tx, procs,
    )  # fmt: skip


def read_local(names: Sequence[str], now: float, root: Path = Path("/proc")) -> Counters:
    """This machine's Counters: /proc read directly (only the watched pids' stat files when
    every name is a pid; every process's when a name is to be matched)."""
    files = {f: (root / f).read_text() for f in ("stat", "meminfo", "loadavg", "net/dev")}
    if names and all(n.isdigit() for n in names):
        pids = [root / n / "stat" for n in names]
    else:
        pids = [d / "stat" for d in root.iterdir() if d.name.isdigit()] if names else []
    lines = []
    for path in pids:
        try:
            lines.append(path.read_text())
        except OSError:  # ended meanwhile
            continue
    files["procs"] = "\n".join(lines)
    return counters(files, names, now)
