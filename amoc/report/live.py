"""The live view: a table refreshed every second, per node and in total, with a progress bar."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from amoc.report.figures import COLUMNS, feature_lines, fmt, row, total

# What a view needs, from the node (or over the attach socket): {"time": wall clock,
# "nodes": {name: snapshot}, "targets": {name: users placed}, "scenario": name or None,
# "state": the run's state (idle, starting, running, finished, stopping)}.
Sample = dict[str, Any]


def progress(running: float, target: float, width: int = 30) -> str:
    """`[#####-----]  50% 5/10 users`."""
    share = 0.0 if target <= 0 else min(1.0, running / target)
    done = round(share * width)
    return f"[{'#' * done}{'-' * (width - done)}] {share:4.0%} {int(running)}/{int(target)} users"


def frame(now: Sample, before: Sample | None) -> list[str]:
    """The lines of one frame."""
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
    return lines


def watch(
    sample: Callable[[], Sample],
    seconds: float | None = None,
    out: TextIO | None = None,
    interval: float = 1.0,
) -> None:
    """Redraw the view every `interval` s for `seconds` (None: until Ctrl+C)."""
    out = out or sys.stdout
    deadline = None if seconds is None else time.monotonic() + seconds
    before: Sample | None = None
    drawn = 0
    try:
        while True:
            now = sample()
            lines = frame(now, before)
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
