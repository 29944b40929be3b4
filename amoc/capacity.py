"""The capacity search: how much load the server holds within the user's limits, and what breaks.

`find-capacity` runs probes: each is a fresh run of the scenario at one load (users, or an
arrival rate of users per second through the `user_rate` throttle), ramped up, settled, then
held for a steady window in which the thresholds are checked (client side on the merged
metrics of the hold: `xmpp.ttd_ms.p99`, `error_ratio`...; `xmpp.login*` over the ramp and
the hold; server side on the monitored hosts: `server.cpu`, `server.rss_mb`...). The load
rises step by step until a probe fails, then the search bisects between the last good and
the first bad load down to the resolution.

A probe that fails while a load node was saturated (amoc.health) is not a server limit: the
search stops there, says the run was client-bound, and estimates how many more amoc nodes
the load needs.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from amoc import health
from amoc.config import closest
from amoc.errors import AmocError
from amoc.metrics.promnames import HELP
from amoc.metrics.registry import summary as summarise
from amoc.monitor.service import SERVER_METRICS, server_values
from amoc.monitor.spec import SourceSpec
from amoc.report.figures import total
from amoc.report.recorder import since
from amoc.report.thresholds import Threshold, ThresholdError, error_ratio
from amoc.report.thresholds import parse as parse_threshold
from amoc.status import Runner

MODES = ("users", "rate")
_STATS = ("count", "mean", "p50", "p90", "p99", "max")
DEFAULT_ERRORS = "error_ratio <= 0.01"
PACES = ("interarrival", "user_rate")  # the settings a probe sets to pace its arrivals
RAMP_MARGIN_S = 30.0  # beyond load / arrival rate, before a ramp that does not end fails


class CapacityError(AmocError):
    """A capacity search that cannot be run as asked (bad plan, threshold, duration)."""


@dataclass(frozen=True)
class Steps:
    """START:STEP:MAX, a plan that rises."""

    start: float
    step: float
    stop: float

    def loads(self) -> list[float]:
        """START, START + STEP, ... up to MAX (MAX last even when off the grid)."""
        out, load = [], self.start
        while load < self.stop - 1e-9:
            out.append(load)
            load += self.step
        out.append(self.stop)
        return out


def parse_steps(text: str, option: str, whole: bool) -> Steps:
    """`100:100:1000` -> Steps, or CapacityError naming `option`."""
    parts = str(text).split(":")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) != 3 or not all(math.isfinite(n) for n in numbers):
        raise CapacityError(f"{option} {text!r}: expected START:STEP:MAX, e.g. 100:100:1000")
    start, step, stop = numbers
    if whole and not all(n.is_integer() for n in numbers):
        raise CapacityError(f"{option} {text!r}: users are whole numbers")
    if start <= 0:
        raise CapacityError(f"{option} {text!r}: START must be > 0")
    if step <= 0 or stop <= start:
        raise CapacityError(
            f"{option} {text!r}: the plan does not rise (STEP must be > 0 and MAX > START)"
        )
    return Steps(start, step, stop)


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|min)?\s*$")


def parse_duration(text: Any, option: str, zero: bool = False) -> float:
    """`60s`, `2m`, `500ms` or a number of seconds -> seconds > 0 (>= 0 with `zero`), or
    CapacityError."""
    match = _DURATION.match(str(text))
    if not match:
        raise CapacityError(f"{option} {text!r}: expected a duration such as 60s, 2m or 500ms")
    value = float(match.group(1)) * {"ms": 0.001, "m": 60, "min": 60}.get(match.group(2), 1)
    if value < 0 or (value == 0 and not zero):
        raise CapacityError(f"{option} {text!r}: must be > 0")
    return value


def known_metrics() -> list[str]:
    """The metrics a capacity threshold may name."""
    names = ["error_ratio", *SERVER_METRICS]
    for name in HELP:
        if name.endswith("_ms") or name == "node.loop_lag_ms":
            names += [f"{name}.{s}" for s in _STATS]
        else:
            names.append(name)
    return names


def parse_thresholds(texts: Sequence[str], monitored: bool | None = None) -> list[Threshold]:
    """The thresholds of a search (`error_ratio <= 0.01` added unless one names it), each
    naming a known metric; CapacityError naming `--thresholds` otherwise."""
    items = [t.strip() for text in texts for t in str(text).split(";") if t.strip()]
    if not any(re.match(r"^\s*error_ratio\b", t) for t in items):
        items.append(DEFAULT_ERRORS)
    known = known_metrics()
    out = []
    for item in items:
        try:
            threshold = parse_threshold(item)
        except ThresholdError as exc:
            raise CapacityError(f"--thresholds: {exc}") from None
        if threshold.metric not in known:
            near = closest(threshold.metric, known)
            hint = f" (did you mean {near!r}?)" if near else ""
            raise CapacityError(
                f"--thresholds {item!r}: unknown metric {threshold.metric!r}{hint}; known: "
                "error_ratio, server.cpu, server.host_cpu, server.rss_mb, server.mem_used_mb, "
                "server.load1, xmpp.ttd_ms.p99 (any histogram's .p50 .p90 .p99 .max .mean "
                ".count), xmpp.login_time_ms.p99, xmpp.logins.failed, ..."
            )
        if threshold.metric.startswith("server.") and monitored is False:
            raise CapacityError(
                f"--thresholds {item!r}: a server metric needs monitor_hosts (set it with "
                "--set monitor_hosts=... or in the app config)"
            )
        out.append(threshold)
    return out


@dataclass(frozen=True)
class Plan:
    """What to search: a scenario, a mode (users or rate) and its steps, the windows, the
    limits."""

    scenario: str
    mode: str
    steps: Steps
    thresholds: tuple[Threshold, ...]
    hold_s: float = 60.0
    settle_s: float = 2.0
    cooldown_s: float = 5.0  # after a probe, before the next: the server drains its backlog
    confirm: int = 1  # a failed probe runs again this many times before it counts
    resolution: float = 0.0  # 0: a quarter of a step
    arrival: float = 100.0  # users per second while a users-mode probe ramps up
    ramp_s: float = 10.0  # rate mode: how long users arrive before the hold
    first: int = 1
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def unit(self) -> float:
        """The smallest change of load: 2 when every step is even (pairs stay pairs)."""
        if self.mode == "users":
            numbers = (self.steps.start, self.steps.step, self.steps.stop)
            return 2.0 if all(n % 2 == 0 for n in numbers) else 1.0
        return 0.0

    @property
    def finest(self) -> float:
        """When the bisection stops (bad - good at most this)."""
        base = self.resolution or self.steps.step / 4
        return max(base, self.unit)

    def count(self, load: float) -> int:
        """How many user ids a probe at `load` takes."""
        if self.mode == "users":
            return int(load)
        return math.ceil(load * (self.ramp_s + self.settle_s + self.hold_s + 5))

    def ids_needed(self) -> int:
        """At most how many ids a search takes: every probe has fresh ones (the steps, the
        bisection's probes and the tries again of failed ones, each at most the maximum)."""
        rising = sum(self.count(load) for load in self.steps.loads())
        halvings = math.ceil(math.log2(max(2.0, self.steps.step / self.finest))) + 1
        most = self.count(self.steps.stop)
        return rising + self.confirm * most + halvings * (1 + self.confirm) * most

    def probe_settings(self, load: float) -> dict[str, Any]:
        """The settings of a probe's run: the pace of arrivals."""
        out = dict(self.settings)
        if self.mode == "users":
            out["interarrival"] = 1000.0 / self.arrival
        else:
            out["user_rate"] = load * 60.0
        return out

    def describe(self) -> str:
        """One line for the table's head."""
        s = self.steps
        unit = "users" if self.mode == "users" else "users/s arriving"
        limits = "; ".join(t.text for t in self.thresholds)
        return (
            f"find-capacity {self.scenario}: {unit} {s.start:g}:{s.step:g}:{s.stop:g}, hold "
            f"{self.hold_s:g} s, thresholds: {limits}; user ids from {self.first}, at most "
            f"{self.first + self.ids_needed() - 1}"
        )


def make_plan(
    scenario: str,
    *,
    users: str | None = None,
    rate: str | None = None,
    thresholds: str | Sequence[str] = (),
    hold: Any = "60s",
    settle: Any = "2s",
    ramp: Any = "10s",
    cooldown: Any = "5s",
    confirm: int = 1,
    resolution: float | None = None,
    arrival: float | None = None,
    first: int = 1,
    settings: Mapping[str, Any] | None = None,
) -> Plan:
    """A Plan from the options of `find-capacity` (the CLI's and the console's), or
    CapacityError naming the option that is wrong."""
    if (users is None) == (rate is None):
        raise CapacityError("give one of --users START:STEP:MAX or --rate START:STEP:MAX")
    mode = "users" if users is not None else "rate"
    steps = parse_steps(str(users if users is not None else rate), f"--{mode}", mode == "users")
    for name, value in (("--arrival", arrival), ("--resolution", resolution)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value <= 0
        ):  # fmt: skip
            raise CapacityError(f"{name} must be a number > 0, got {value!r}")
    if isinstance(first, bool) or not isinstance(first, int) or first < 1:
        raise CapacityError(f"--first must be an integer >= 1, got {first!r}")
    if isinstance(confirm, bool) or not isinstance(confirm, int) or not 0 <= confirm <= 5:
        raise CapacityError(f"--confirm must be an integer from 0 to 5, got {confirm!r}")
    texts = [thresholds] if isinstance(thresholds, str) else list(thresholds)
    return Plan(
        scenario=scenario, mode=mode, steps=steps, thresholds=tuple(parse_thresholds(texts)),
        hold_s=parse_duration(hold, "--hold"), settle_s=parse_duration(settle, "--settle"),
        cooldown_s=parse_duration(cooldown, "--cooldown", zero=True), confirm=confirm,
        ramp_s=parse_duration(ramp, "--ramp"), resolution=float(resolution or 0.0),
        arrival=float(arrival or 100.0), first=first, settings=dict(settings or {}),
    )  # fmt: skip


def search(plan: Plan, bench: Bench, log: Callable[[str], None] | None = None) -> Outcome:
    """Check the plan against what the bench monitors, then run it."""
    parse_thresholds([t.text for t in plan.thresholds], monitored=bool(bench.specs))
    return Search(plan, bench, log).run()


@dataclass
class Result:
    """One probe."""

    load: float
    ok: bool
    failed: list[str]  # `threshold (was X on WHERE)` per broken threshold
    figures: dict[str, float]
    client_bound: str | None = None  # the verdict when a load node was saturated
    started: float = 0.0
    report: str | None = None
    retried: bool = False  # it failed and was run again (the next row)

    @property
    def client_limited(self) -> bool:
        """Failed while the load generator was saturated: not the server's limit."""
        return not self.ok and self.client_bound is not None


@dataclass
class Outcome:
    """What a search found."""

    plan: Plan
    held: float | None  # the largest load that held (None: not even the first)
    broke: Result | None  # the probe at the lowest load that failed
    results: list[Result]
    more_nodes: int | None = None  # when client-bound: how many more amoc nodes
    interrupted: str | None = None
    written: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def client_bound(self) -> bool:
        """The search stopped on the load generator, not the server."""
        return self.broke is not None and self.broke.client_limited

    def exit_code(self) -> int:
        """0: a capacity was found, 1: even the first step failed."""
        return 0 if self.held is not None else 1

    def verdict(self) -> str:
        """The closing line."""
        unit = "users" if self.plan.mode == "users" else "users/s"
        held = f"{self.held:g} {unit}" if self.held is not None else None
        b = self.broke
        if b is not None and b.client_limited:
            more = f"about {self.more_nodes} more amoc node(s)" if self.more_nodes else "more"
            where = f"held {held}; at" if held else "not found: at"
            return (
                f"capacity: {where} {b.load:g} {unit} the load generator was saturated, not "
                f"the server ({b.client_bound}); run it again with {more}"
            )
        if b is None:
            return f"capacity: {held} held: no threshold broke up to the plan's maximum"
        broke = "; ".join(b.failed)
        if held is None:
            return f"capacity: not found: the first step ({b.load:g} {unit}) failed: {broke}"
        return f"capacity: {held} held; first limit: {broke} at {b.load:g} {unit}"

    def table(self) -> str:
        """The steps as a table, in the order they ran."""
        head = ("step", "load", "msgs/s", "ttd p99 ms", "errors", "amoc cpu %", "lag p99 ms",
                "server cpu %", "result")  # fmt: skip
        rows = [head]
        for n, r in enumerate(self.results, 1):
            f = r.figures
            if r.ok:
                result = "ok" + (" (client-bound)" if r.client_bound else "")
            elif r.client_limited:
                result = "client-bound"
            else:
                result = ("failed, tried again: " if r.retried else "FAIL ") + "; ".join(r.failed)
            rows.append((
                str(n), f"{r.load:g}", _cell(f.get("messages_s")), _cell(f.get("ttd_p99")),
                _cell(f.get("error_ratio"), 4), _cell(f.get("amoc_cpu")),
                _cell(f.get("lag_p99")), _cell(f.get("server_cpu")), result,
            ))  # fmt: skip
        widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
        lines = []
        for row in rows:
            cells = [c.rjust(w) for c, w in zip(row[:-1], widths, strict=True)]
            lines.append("  ".join([*cells, row[-1]]))
        return "\n".join(lines)

    def __repr__(self) -> str:
        text = f"{self.plan.describe()}\n{self.table()}\n{self.verdict()}"
        text += "".join(f"\n({note})" for note in self.notes)
        if self.interrupted:
            text += f"\n(interrupted: {self.interrupted})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (capacity.json)."""
        plan = asdict(self.plan)
        plan["thresholds"] = [t.text for t in self.plan.thresholds]
        return {
            "plan": plan,
            "held": self.held,
            "client_bound": self.client_bound,
            "more_nodes": self.more_nodes,
            "broke": asdict(self.broke) if self.broke else None,
            "verdict": self.verdict(),
            "steps": [asdict(r) for r in self.results],
            "interrupted": self.interrupted,
            "notes": self.notes,
        }


def _cell(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}" if value < 1000 else f"{value:.0f}"


Call = Callable[..., Any]  # Node.call(coroutine, timeout=None)
Read = Callable[..., Any]  # Node.read(fn, timeout=None)


@dataclass
class Bench:
    """What a search drives and reads, on a started node (local or a cluster's master)."""

    runner: Runner
    call: Call  # Node.call
    read: Read  # Node.read
    sample: Callable[[], dict[str, Any]]  # Node.sample (read in the loop)
    recorder: Any  # the node's report.recorder.Recorder
    specs: tuple[SourceSpec, ...] = ()  # the monitored servers
    bounds: health.Bounds = field(default_factory=health.Bounds)  # when a node is saturated
    stopping: threading.Event = field(default_factory=threading.Event)
    config: Any = None  # the node's Config: the pace the search set is put back after it


class Search:
    """Runs a Plan's probes on a Bench; `run()` gives the Outcome."""

    def __init__(self, plan: Plan, bench: Bench, log: Callable[[str], None] | None = None):
        self.plan = plan
        self.bench = bench
        self.log = log or (lambda line: None)
        self.results: list[Result] = []
        self._next_id = plan.first  # each probe's users are fresh ones

    def run(self) -> Outcome:
        """Rise until a probe fails, then bisect; stop early when client-bound. The pace of
        arrivals it set (interarrival, user_rate) is put back after it."""
        config = self.bench.config
        paces = {name: config.get(name) for name in PACES} if config is not None else {}
        try:
            return self._run()
        finally:
            for name, value in paces.items():
                config.set(name, value, strict=False)

    def _run(self) -> Outcome:
        good: float | None = None
        bad: Result | None = None
        try:
            for load in self.plan.steps.loads():
                r = self._confirmed(load)
                if r.client_limited:
                    return self._outcome(good, r)
                if not r.ok:
                    bad = r
                    break
                good = load
            if bad is None or good is None:
                return self._outcome(good, bad)
            while bad.load - good > self.plan.finest + 1e-9:
                mid = self._middle(good, bad.load)
                if mid is None:
                    break
                r = self._confirmed(mid)
                if r.client_limited:
                    # The server already failed above this load without the load generator
                    # short of CPU: that is the limit; this step says nothing more.
                    out = self._outcome(good, bad)
                    out.notes.append(
                        f"the step at {mid:g} was client-bound: the bisection stopped there"
                    )
                    return out
                if r.ok:
                    good = mid
                else:
                    bad = r
            return self._outcome(good, bad)
        except _Stopped as exc:
            out = self._outcome(good, bad)
            out.interrupted = str(exc)
            return out

    def _middle(self, good: float, bad: float) -> float | None:
        unit = self.plan.unit
        if unit:
            mid = good + math.floor((bad - good) / (2 * unit)) * unit
            mid = max(mid, good + unit)
        else:
            mid = (good + bad) / 2
        return mid if good < mid < bad else None

    def _outcome(self, good: float | None, bad: Result | None) -> Outcome:
        out = Outcome(self.plan, good, bad, list(self.results))
        if bad is not None and bad.client_limited:
            out.more_nodes = self._more_nodes(bad)
        return out

    def _more_nodes(self, bad: Result) -> int:
        """More amoc nodes for `bad`'s load: its CPU demand (per unit of load, from the
        largest good probe that was not saturated, else from `bad`) over what one node
        gives (the CPU bound, or what a saturated node got when less: a limited node)."""
        nodes = max(1, int(bad.figures.get("nodes", 1)))
        bounds = self.bench.bounds
        cpu_bad = bad.figures.get("amoc_cpu", math.nan) / 100
        per_node = bounds.cpu
        node_cpu = bad.figures.get("bound_cpu", math.nan)
        if not math.isnan(node_cpu) and node_cpu < bounds.cpu:
            per_node = max(node_cpu, 0.05)  # a node held below the bound (a CPU limit)
        clean = [r for r in self.results if r.ok and not r.client_bound and r.load > 0]
        if clean:
            best = max(clean, key=lambda r: r.load)
            demand = best.figures.get("amoc_cpu", math.nan) / 100 / best.load * bad.load
        else:
            demand = cpu_bad
        if math.isnan(demand) or demand <= 0:
            return 1
        return max(1, math.ceil(demand / per_node) - nodes)

    # -- one probe --------------------------------------------------------------------------

    def _wait(self, seconds: float) -> None:
        if self.bench.stopping.wait(seconds):
            raise _Stopped("stopped by a signal")

    def _confirmed(self, load: float) -> Result:
        """A probe; one that fails (not client-bound) runs again up to `confirm` times and
        fails only if every try does: a moment of noise on the machine is not a limit."""
        r = self._probe(load)
        for _ in range(self.plan.confirm):
            if r.ok or r.client_limited:
                break
            self.log(f"probe at {load:g} failed: trying it again to confirm")
            r.retried = True
            again = self._probe(load)
            if again.client_limited:  # says nothing of the server: the failure stands
                return r
            r = again
        return r

    def _probe(self, load: float) -> Result:
        plan, bench = self.plan, self.bench
        if self.results:
            self._wait(plan.cooldown_s)
        # Fresh ids: what a probe left on the server (offline messages to users it stopped,
        # sessions still closing) never reaches the next one's figures.
        first = self._next_id
        last = first + plan.count(load) - 1
        self._next_id = last + 1
        self.log(f"probe {len(self.results) + 1}: {load:g} {plan.mode} (ids {first}..{last})")
        began = time.time()
        at_start = bench.read(bench.sample)
        comment = f"find-capacity {plan.mode} {load:g}"
        bench.call(bench.runner.do(plan.scenario, first, last, plan.probe_settings(load), comment))
        try:
            short = self._ramp(load)
            self._wait(plan.settle_s)
            hold0 = bench.read(bench.sample)
            self._wait(plan.hold_s)
            hold1 = bench.read(bench.sample)
            state = bench.read(lambda: bench.runner.status().state)
            rows, started, spells = bench.read(lambda: self._recorded(began, hold1["time"]))
        finally:
            bench.call(bench.runner.stop(), 60)
        result = self._judge(load, at_start, hold0, hold1, rows, started, short)
        if state not in ("running", "starting"):
            result.ok = False
            result.failed.append(f"the run ended during the hold ({state}): make users last")
        result.client_bound, result.started = health.verdict_line(spells), began
        cpus = [s.cpu for s in spells if not math.isnan(s.cpu)]
        result.figures["bound_cpu"] = max(cpus) if cpus else math.nan
        report = bench.read(lambda: bench.recorder.last_report)
        result.report = str(report) if report else None
        self.results.append(result)
        self.log(f"probe {len(self.results)}: {load:g}: " + ("ok" if result.ok else "fail"))
        return result

    def _ramp(self, load: float) -> str | None:
        """Wait until the probe's users run (users mode) or have arrived for the ramp (rate
        mode); why it fell short, if it did."""
        plan, bench = self.plan, self.bench
        if plan.mode == "rate":
            self._wait(plan.ramp_s)
            return None
        deadline = time.monotonic() + load / plan.arrival + RAMP_MARGIN_S
        running = 0
        while time.monotonic() < deadline:
            status = bench.read(bench.runner.status)
            running = status.users.running
            if running >= load:
                return None
            if status.state not in ("running", "starting"):
                break
            self._wait(0.2)
        return f"ramp: {running} of {load:g} users running"

    def _recorded(
        self, began: float, until: float
    ) -> tuple[list[dict[str, float]], float, list[health.Spell]]:
        """The run's rows, its start, and the sustained spells in the probe in which a node
        lacked CPU."""
        rec = self.bench.recorder
        if rec is None or rec.info is None:
            return [], began, []
        started = float(rec.info["started"])
        rows = [dict(r) for r in rec.rows]
        # A failure is the load generator's when a node was short of CPU, not only late.
        return rows, started, rec.saturation.starved(began - started, until - started)

    def _judge(
        self,
        load: float,
        at_start: dict[str, Any],
        hold0: dict[str, Any],
        hold1: dict[str, Any],
        rows: list[dict[str, float]],
        started: float,
        short: str | None,
    ) -> Result:
        seconds = max(1e-6, hold1["time"] - hold0["time"])
        window = _window(hold1, hold0)
        ramp_and_hold = _window(hold1, at_start)
        held = [r for r in rows if hold0["time"] - started <= r["t"] <= hold1["time"] - started]
        servers = server_values(held, self.bench.specs) if self.bench.specs else {}
        failed = [short] if short else []
        for t in self.plan.thresholds:
            failed += self._check(t, window, ramp_and_hold, servers, hold0, hold1, at_start)
        figures = _figures(window, seconds, held, servers)
        figures["nodes"] = float(len(hold1["nodes"]))
        return Result(load, not failed, failed, figures)

    def _check(
        self,
        t: Threshold,
        window: dict[str, Any],
        ramp_and_hold: dict[str, Any],
        servers: dict[str, list[tuple[str, float]]],
        hold0: dict[str, Any],
        hold1: dict[str, Any],
        at_start: dict[str, Any],
    ) -> list[str]:
        """`threshold (was X on WHERE)` when it broke (empty: it held)."""
        if t.metric.startswith("server."):
            values = servers.get(t.metric, [])
            if not values:
                return [f"{t.text} (no monitored host)"]
            worst = [(w, v) for w, v in values if not t.holds(v)]
            return [
                f"{t.text} ({'no data' if math.isnan(v) else f'was {v:.4g}'} on {w})"
                for w, v in worst[:1]
            ]
        logins = t.metric.startswith("xmpp.login")
        snap = ramp_and_hold if logins else window
        value = t.value(snap, summarise(snap))
        if t.holds(value):
            return []
        seen = "never recorded" if math.isnan(value) else f"was {value:.4g}"
        return [f"{t.text} ({seen}{self._worst_node(t, hold0 if not logins else at_start, hold1)})"]

    def _worst_node(self, t: Threshold, before: dict[str, Any], after: dict[str, Any]) -> str:
        """` on node N`: the node whose own figures broke `t` the most."""
        worst: tuple[float, str] | None = None
        for name, snap in after["nodes"].items():
            part = since(snap, before["nodes"].get(name))
            value = t.value(part, summarise(part))
            if math.isnan(value) or t.holds(value):
                continue
            score = abs(value - t.limit)
            if worst is None or score > worst[0]:
                worst = (score, name)
        return f" on node {worst[1]}" if worst else ""


class _Stopped(Exception):
    pass


def _window(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """The merged figures between two of the node's samples (each node from its own)."""
    parts: list[Mapping[str, Any]] = [
        since(snap, before["nodes"].get(name)) for name, snap in after["nodes"].items()
    ]
    return total(parts)


def _mean(values: list[float]) -> float:
    found = [v for v in values if not math.isnan(v)]
    return sum(found) / len(found) if found else math.nan


def _figures(
    window: dict[str, Any],
    seconds: float,
    held: list[dict[str, float]],
    servers: dict[str, list[tuple[str, float]]],
) -> dict[str, float]:
    """The table's figures of a probe's hold."""
    counters = window.get("counters", {})
    moved = counters.get("xmpp.messages.sent", 0) + counters.get("xmpp.messages.received", 0)
    ttd = summarise(window).get("xmpp.ttd_ms")
    cpus = [v for _w, v in servers.get("server.cpu", []) if not math.isnan(v)]
    return {
        "messages_s": moved / seconds,
        "ttd_p99": float(ttd["p99"]) if isinstance(ttd, dict) and ttd["count"] else math.nan,
        "error_ratio": error_ratio(window),
        "amoc_cpu": _mean([r.get("cpu", math.nan) for r in held]),
        "lag_p99": max((r.get("lag_p99", math.nan) for r in held
                        if not math.isnan(r.get("lag_p99", math.nan))), default=math.nan),
        "server_cpu": max(cpus) if cpus else math.nan,
    }  # fmt: skip


def write(outcome: Outcome, directory: Path) -> Path:
    """capacity.json and capacity.txt (the table and the verdict) in a directory of their
    own under `directory`; the path of capacity.txt."""
    from amoc.report.html import private_dir, private_write

    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", outcome.plan.scenario)
    base = directory / f"capacity-{stamp}-{name}"
    n = 1
    while base.exists():
        n += 1
        base = directory / f"capacity-{stamp}-{name}-{n}"
    private_dir(base)
    private_write(base / "capacity.json", json.dumps(outcome.to_dict(), indent=2, default=str))
    reports = "\n".join(f"step {i}: {r.report}" for i, r in enumerate(outcome.results, 1))
    private_write(base / "capacity.txt", f"{outcome!r}\n\nreports of the steps:\n{reports}\n")
    outcome.written = str(base / "capacity.txt")
    return base / "capacity.txt"
