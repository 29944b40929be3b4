"""The live view: a table refreshed every second, per node and in total, with a progress bar."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from amoc import health
from amoc.report.figures import COLUMNS, feature_lines, fmt, row, total

# What a view needs, from the node (or over the attach socket): {"time": wall clock,
# "nodes": {name: snapshot}, "targets": {name: users placed}, "scenario": name or None,
# "state": the run's state (idle, starting, running, finished, stopping), "monitor": the
# monitored servers' latest figures (amoc.monitor.Monitor.view)}.
Sample = dict[str, Any]


def progress(running: float, target: float, width: int = 30) -> str:
    """`[#####-----]  50% 5/10 users`."""
    share = 0.0 if target <= 0 else min(1.0, running / target)
    done = round(share * width)
    return f"[{'#' * done}{'-' * (width - done)}] {share:4.0%} {int(running)}/{int(target)} users"


def server_lines(view: dict[str, Any]) -> list[str]:
    """A line per monitored server: `server localhost: cpu 85%  mem 2.1 GiB  load 1.3  beam.smp
    cpu 64% rss 310 MiB` (`no data` while it does not answer)."""
    lines = []
    for label, entry in sorted(view.items()):
        if not entry.get("up"):
            why = entry.get("error") or "not sampled yet"
            lines.append(f"server {label}: no data ({why})")
            continue
        gib = entry.get("mem_used", math.nan) / 2**30
        parts = [f"cpu {fmt('', 100 * entry.get('cpu', math.nan))}%",
                 f"mem {'-' if math.isnan(gib) else f'{gib:.1f}'} GiB",
                 f"load {fmt('', entry.get('load1', math.nan))}"]  # fmt: skip
        for name, p in sorted(entry.get("procs", {}).items()):
            parts.append(f"{name} cpu {fmt('', 100 * p['cpu'])}% rss {p['rss'] / 2**20:.0f} MiB")
        lines.append(f"server {label}: " + "  ".join(parts))
    return lines


def health_line(now: Sample, before: Sample | None, saturation: health.Saturation) -> str | None:
    """The client-bound line when a load node has been saturated for long enough."""
    if before is None:
        return None
    for name, snap in now["nodes"].items():
        old = before["nodes"].get(name)
        if old is not None and snap.get("time", 0.0) > old.get("time", 0.0):
            saturation.add(name, old["time"], snap["time"], health.reading(snap, old))
    return health.verdict_line(saturation.now_bound())


def frame(
    now: Sample, before: Sample | None, saturation: health.Saturation | None = None
) -> list[str]:
    """The lines of one frame (`saturation`: the view's spells, for the client-bound line)."""
    seconds = now["time"] - before["time"] if before else 1.0
    names = list(now["nodes"])
    rows: list[tuple[str, dict[str, float]]] = []
    for name in names:
        old = before["nodes"].get(name) if before else None
        rows.append((name, row(now["nodes"][name], old, seconds, now["targets"].get(name))))
    merged_now = total(list(now["nodes"].values()))
    merged_before = total(list(before["nodes"].values())) if before else None
    target = sum(now["targets"].values()) if now["targets"] else None
    all_row = row(merged_now, merged_before, seconds, target)
    if len(rows) != 1:
        rows.append(("total", all_row))
    header = ("node", *(title for _, title in COLUMNS))
    table = [header] + [(n, *(fmt(c, r[c]) for c, _ in COLUMNS)) for n, r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    clock = time.strftime("%H:%M:%S", time.localtime(now["time"]))
    state = now.get("state")
    title = f"amoc watch {clock}  scenario {now.get('scenario') or '-'}" + (
        f"  {state}" if state else ""
    )
    if state == "finished":
        done = merged_now.get("counters", {}).get("users.finished", 0)
        lines = [title, f"finished: every user has done its runs ({int(done)} users finished)"]
    else:
        lines = [title, progress(all_row["running"], all_row["target"])]
    for line in table:
        lines.append("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in
                               enumerate(zip(line, widths, strict=True))))  # fmt: skip
    lines.extend(feature_lines(all_row))
    lines.extend(server_lines(now.get("monitor") or {}))
    bound = health_line(now, before, saturation) if saturation is not None else None
    if bound:
        lines.append(bound)
    return lines


def watch(
    sample: Callable[[], Sample],
    seconds: float | None = None,
    out: TextIO | None = None,
    interval: float = 1.0,
    bounds: health.Bounds | None = None,
) -> None:
    """Redraw the view every `interval` s for `seconds` (None: until Ctrl+C); `bounds`: when
    a load node counts as saturated (the client-bound line)."""
    out = out or sys.stdout
    deadline = None if seconds is None else time.monotonic() + seconds
    before: Sample | None = None
    drawn = 0
    saturation = health.Saturation(bounds or health.Bounds())
    try:
        while True:
            now = sample()
            lines = frame(now, before, saturation)
            if drawn:
                out.write(f"\x1b[{drawn}F\x1b[J")  # back to the first line, clear below
            out.write("\n".join(lines) + "\n")
            out.flush()
            drawn, before = len(lines), now
            if deadline is not None and time.monotonic() + interval > deadline:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        out.write("\n")
