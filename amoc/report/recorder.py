"""One row of figures a second while a scenario runs; the report when it stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amoc import health, metrics
from amoc.config import Config, Param, optional_text
from amoc.metrics.histogram import difference
from amoc.report import html, markers
from amoc.report.figures import row, total

log = logging.getLogger("amoc.report")

MAX_ROWS = 7 * 24 * 3600  # a week of seconds
# Runs that start within one second share a time stamp: their directories get -2, -3...
_MAX_SUFFIX = 10_000


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected True or False, got {value!r}")
    return value


PARAMETERS: tuple[Param, ...] = (
    Param("report", True, "write a report when a scenario stops", _flag),
    Param("report_dir", None, "where reports go (default: the release's reports/)", optional_text),
)

Sampler = Callable[[], dict[str, Any]]
# Settings whose run-time changes the report marks (they change the pace of user starts).
RATE_SETTINGS = ("interarrival", "user_rate")


class Recorder:
    """Samples the figures every `interval` s between scenario_start and scenario_stop."""

    def __init__(
        self,
        sample: Sampler,
        config: Config,
        default_dir: Path,
        node: str,
        interval: float = 1.0,
        monitor: Any = None,
    ) -> None:
        self.sample = sample
        # The servers under test (an amoc.monitor.Monitor or None): its columns join each row.
        self.monitor = monitor
        # Which load node was saturated when, on the run's time axis (amoc.health).
        self.saturation = health.Saturation(health.Bounds.from_config(config))
        self.config = config
        self.default_dir = default_dir
        self.node = node
        self.interval = interval
        self.rows: deque[dict[str, float]] = deque(maxlen=MAX_ROWS)
        # A cluster's run: each node's figures (html.NODE_COLUMNS) a second, by node name.
        self.node_rows: dict[str, deque[dict[str, float]]] = {}
        # What changed the load: do, add, remove, rate changes, stop (s since the start).
        self.markers: list[dict[str, Any]] = []
        self._changes: deque[tuple[float, str]] = deque(maxlen=1000)  # (when, text), any thread
        self.info: dict[str, Any] | None = None
        self.last_report: Path | None = None
        self._task: asyncio.Task[None] | None = None
        self._before: dict[str, Any] | None = None
        self._before_nodes: dict[str, Any] = {}  # each node's last snapshot (health)
        self._at_start: dict[str, Any] | None = None  # the figures when the run started

    def start(self) -> None:
        """Listen for scenario starts and stops (inside the node's loop) and rate changes."""
        metrics.REGISTRY.on_annotation(self._event)
        self.config.on_change(self._config_changed)

    def _config_changed(self, name: str, value: Any) -> None:
        # Any thread (the console's): noted here, turned into a marker by the next sample.
        if name in RATE_SETTINGS:
            self._changes.append((time.time(), f"{name} {value}"))

    async def stop(self) -> None:
        """Stop listening and sampling; a run still going (a master's) gets its report now."""
        metrics.REGISTRY.off_annotation(self._event)
        await self._halt()
        if self.info is not None:
            self._finish()

    async def _halt(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _event(self, event: dict[str, Any]) -> None:
        if event["what"] == "scenario_start":
            self.info = {
                "scenario": event["tags"].get("scenario"),
                "users": event["tags"].get("users"),
                "comment": event.get("comment"),
                # An adopted run (a restarted master) started before the event.
                "started": event["tags"].get("since") or event["when"],
                "node": self.node,
            }
            self.rows.clear()
            self.node_rows.clear()
            self.saturation = health.Saturation(health.Bounds.from_config(self.config))
            self.markers = [
                {
                    "t": event["when"] - self.info["started"],
                    "text": f"do {self.info['scenario']} ({self.info['users']} users)",
                }
            ]
            self._changes.clear()
            self._before = None
            self._before_nodes = {}
            self._at_start = metrics.REGISTRY.snapshot()
            self._take()
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._run(), name="recorder")
        elif markers.text(event) is not None and self.info is not None:
            self._mark(event["when"], str(markers.text(event)))
        elif event["what"] == "scenario_stop" and self.info is not None:
            self._take()
            self._mark(event["when"], "stop")
            if self._task is not None:
                self._task.cancel()
                self._task = None
            self._finish()

    def _finish(self) -> None:
        if self.config.get("report"):
            try:
                self.last_report = self.write()
                log.info("report written: %s", self.last_report)
            except OSError as exc:
                log.error("the report could not be written: %s", exc)
        self.info = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self._take()
            except Exception:  # a sample must never stop the node
                log.exception("sampling the figures failed")

    def _take(self) -> None:
        assert self.info is not None
        now = self.sample()
        merged = total(list(now["nodes"].values()))
        before = self._before
        seconds = now["time"] - before["time"] if before else self.interval
        target = sum(now["targets"].values()) if now["targets"] else None
        figures = row(merged, before["merged"] if before else None, seconds, target)
        figures["t"] = now["time"] - self.info["started"]
        if self.monitor is not None:
            figures.update(self.monitor.columns(self.info["started"]))
        self.rows.append(figures)
        self._per_node(now, seconds, figures["t"])
        self._health(now)
        self._rate_markers()
        self._before = {"time": now["time"], "merged": merged, "nodes": now["nodes"]}
        if now.get("state") == "finished" and self._task is not None:
            # Every user has done its runs: the report is written now, not at a later stop.
            log.info("every user of %s has finished", self.info["scenario"])
            self._task.cancel()
            self._task = None
            self._finish()

    def _mark(self, when: float, text: str) -> None:
        assert self.info is not None
        self.markers.append({"t": when - self.info["started"], "text": text})

    def _per_node(self, now: dict[str, Any], seconds: float, t: float) -> None:
        """Each node's figures, when the run is a cluster's (not this node's alone)."""
        if set(now["nodes"]) == {self.node}:
            return
        old = self._before["nodes"] if self._before else {}
        for name, snap in now["nodes"].items():
            figures = row(snap, old.get(name), seconds, now["targets"].get(name))
            kept = {c: figures[c] for c in html.NODE_COLUMNS}
            self.node_rows.setdefault(name, deque(maxlen=MAX_ROWS)).append({"t": t, **kept})

    def _health(self, now: dict[str, Any]) -> None:
        """Each node's loop lag and CPU over the interval, into the saturation spells; a
        marker where a node's spell becomes client-bound."""
        assert self.info is not None
        old = self._before_nodes
        started = self.info["started"]
        for name, snap in now["nodes"].items():
            before = old.get(name)
            if before is not None and snap.get("time", 0.0) <= before.get("time", 0.0):
                continue  # no newer snapshot from that node (no heartbeat since the last row)
            old[name] = snap
            if before is None:
                continue
            t0, t1 = before.get("time", 0.0) - started, snap.get("time", 0.0) - started
            was = {id(s) for s in self.saturation.now_bound()}
            self.saturation.add(name, t0, t1, health.reading(snap, before))
            for spell in self.saturation.now_bound():
                if id(spell) not in was and spell.node == name:
                    self.markers.append({"t": spell.start, "text": f"client-bound {name}"})

    def client_bound(self, since: float = -1e18, until: float = 1e18) -> str | None:
        """The client-bound verdict over the run (or [since, until], s on its axis)."""
        return self.saturation.verdict(since, until)

    def monitored(self) -> dict[str, dict[str, Any]]:
        """Per monitored source: what it is, how many of the run's rows have its data, and
        its status (`no data` when none)."""
        if self.monitor is None:
            return {}
        now = self.monitor.status()
        out = {}
        for label, what in self.monitor.describe().items():
            prefix = f"mon.{label}."
            samples = sum(
                1 for r in self.rows if any(k.startswith(prefix) and r[k] == r[k] for k in r)
            )
            if samples == 0:
                status = now[label] if now[label] != "ok" else "no data"
            elif samples < len(self.rows):
                status = f"data in {samples} of {len(self.rows)} samples; now {now[label]}"
            else:
                status = "ok"
            out[label] = {"what": what, "samples": samples, "status": status}
        return out

    def _rate_markers(self) -> None:
        """Markers for the rate settings changed since the last sample."""
        while self._changes:
            when, text = self._changes.popleft()
            self._mark(when, text)

    def write(self) -> Path:
        """The report of the run so far, in its own directory."""
        assert self.info is not None
        base = Path(self.config.get("report_dir") or self.default_dir)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.info["started"]))
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(self.info["scenario"]))
        directory = _new_directory(base, f"{stamp}-{name}")
        info = {**self.info, "duration_s": time.time() - self.info["started"]}
        run = since(metrics.REGISTRY.snapshot(), self._at_start)
        return html.write(
            directory,
            list(self.rows),
            info,
            self.config.describe(),
            metrics.summary(run),
            nodes={name: list(rows) for name, rows in self.node_rows.items()},
            markers=self.markers,
            histograms=run.get("histograms", {}),
            servers=self.monitor.charts() if self.monitor is not None else (),
            monitored=self.monitored(),
            client_bound=self.client_bound(),
        )


def _new_directory(base: Path, name: str) -> Path:
    """A directory of its own under `base`: `name`, else `name-2`, `name-3`..."""
    base.mkdir(parents=True, exist_ok=True)
    for n in range(1, _MAX_SUFFIX):
        directory = base / (name if n == 1 else f"{name}-{n}")
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return directory
    raise OSError(f"{_MAX_SUFFIX} reports named {name} in {base}: remove some")


def since(now: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    """The figures of a run: counters and histograms from `before`, gauges as they are now."""
    if before is None:
        return now
    old = before.get("counters", {})
    old_hists = before.get("histograms", {})
    return {
        **now,
        # A node restarted during the run counts from 0 again: never below 0.
        "counters": {n: max(0, v - old.get(n, 0)) for n, v in now.get("counters", {}).items()},
        "histograms": {
            n: difference(h, old_hists.get(n)) for n, h in now.get("histograms", {}).items()
        },
    }
