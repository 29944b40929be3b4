"""The report directory: index.html (offline, SVG plots), series.csv, summary.json."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from amoc.report.figures import COLUMNS, FEATURE_HISTOGRAMS, FEATURE_RATES

CHARTS = (
    ("Users", (("running", "running"), ("target", "target"), ("failed", "failed runs"))),
    ("Rates (per second)", (("logins_s", "logins"), ("messages_s", "messages"))),
    ("Time to delivery (ms)", (("ttd_p50", "p50"), ("ttd_p99", "p99"))),
    ("Errors (cumulative)", (("errors", "errors"),)),
)
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
W, H, PAD = 720, 220, 48


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def chart(title: str, times: Sequence[float], lines: Sequence[tuple[str, Sequence[float]]]) -> str:
    """An SVG line chart of several series over `times` (seconds since the start)."""
    ys = [v for _, values in lines for v in _finite(values)]
    top = max(ys, default=1.0) or 1.0
    span = max(times[-1] if times else 1.0, 1e-9)

    def x(t: float) -> float:
        return PAD + (W - 2 * PAD) * t / span

    def y(v: float) -> float:
        return H - PAD + (2 * PAD - H) * v / top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f'<text x="{PAD}" y="20" font-weight="bold">{html.escape(title)}</text>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#888"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#888"/>',
        f'<text x="{PAD - 6}" y="{PAD + 4}" text-anchor="end" font-size="11">{top:.4g}</text>',
        f'<text x="{PAD - 6}" y="{H - PAD + 4}" text-anchor="end" font-size="11">0</text>',
        f'<text x="{W - PAD}" y="{H - PAD + 16}" text-anchor="end" font-size="11">'
        f"{span:.0f} s</text>",
    ]
    for k, (label, values) in enumerate(lines):
        colour = COLOURS[k % len(COLOURS)]
        points = " ".join(
            f"{x(t):.1f},{y(v):.1f}"
            for t, v in zip(times, values, strict=True)
            if not math.isnan(v)
        )
        if points:
            parts.append(
                f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" '
                f'points="{points}"/>'
            )
        parts.append(
            f'<text x="{W - PAD - 150}" y="{PAD + 14 * k}" fill="{colour}" font-size="12">'
            f"{html.escape(label)}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def write(
    directory: Path,
    rows: Sequence[dict[str, float]],
    info: dict[str, Any],
    parameters: Sequence[tuple[str, Any, str, str]],
    summary: dict[str, Any],
) -> Path:
    """Write the report, readable by its owner only (0600 files, 0700 directory).

    The path of index.html. `parameters` are shown as given: pass Config.describe()'s rows,
    in which secrets are already ***."""
    private_dir(directory)
    columns = ["t", *(c for c, _ in COLUMNS)]
    extra = sorted({k for r in rows for k in r} - set(columns))
    columns += extra
    table = io.StringIO(newline="")
    out = csv.writer(table)
    out.writerow(columns)
    for r in rows:
        out.writerow([_cell(r.get(c, math.nan)) for c in columns])
    private_write(directory / "series.csv", table.getvalue())
    private_write(
        directory / "summary.json",
        json.dumps({"run": info, "metrics": summary}, indent=2, default=str) + "\n",
    )
    times = [r["t"] for r in rows]
    charts = [
        chart(title, times, [(label, [r.get(c, math.nan) for r in rows]) for c, label in series])
        for title, series in (*CHARTS, *feature_charts(extra))
    ]
    params = "\n".join(
        f"<tr><td>{html.escape(n)}</td><td>{html.escape(repr(v))}</td>"
        f"<td>{html.escape(s)}</td><td>{html.escape(d)}</td></tr>"
        for n, v, s, d in parameters
    )
    figures = "\n".join(
        f"<tr><td>{html.escape(n)}</td><td>{html.escape(_figure(v))}</td></tr>"
        for n, v in sorted(summary.items())
    )
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>amoc report: {html.escape(str(info.get("scenario")))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: left; font-size: 13px; }}
svg {{ display: block; margin: 1em 0; background: #fafafa; }}
</style></head><body>
<h1>amoc report: {html.escape(str(info.get("scenario")))}</h1>
<p>Comment: <b>{html.escape(str(info.get("comment") or "-"))}</b></p>
<p>Started {started}, lasted {info.get("duration_s", 0):.0f} s, {len(rows)} samples;
node {html.escape(str(info.get("node")))}. Raw series: <a href="series.csv">series.csv</a>,
figures: <a href="summary.json">summary.json</a>.</p>
<h2>Plots</h2>
{"".join(charts)}
<h2>Figures at the end</h2>
<table><tr><th>metric</th><th>value</th></tr>
{figures}
</table>
<h2>Parameters</h2>
<table><tr><th>name</th><th>value</th><th>source</th><th>description</th></tr>
{params}
</table>
</body></html>
"""
    index = directory / "index.html"
    private_write(index, page)
    return index


def private_dir(directory: Path) -> None:
    """Make `directory` (and missing parents) with mode 0700; an existing one is narrowed."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)


def private_write(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 (an existing file is narrowed, never followed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def feature_charts(columns: Sequence[str]) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Charts for the feature figures a run recorded (groupchat, pubsub, MAM, SM, IQ)."""
    present = set(columns)
    out: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    latency = tuple(
        (f"{prefix}_{q}", f"{title} {q}")
        for _name, prefix, title in FEATURE_HISTOGRAMS
        for q in ("p50", "p99")
        if f"{prefix}_{q}" in present
    )
    if latency:
        out.append(("Feature latency (ms)", latency))
    rates = tuple((c, title) for c, title, _n in FEATURE_RATES if c in present)
    if rates:
        out.append(("Feature rates (per second)", rates))
    iqs = tuple((c, c[3:-4]) for c in sorted(present) if c.startswith("iq_") and c.endswith("_p99"))
    if iqs:
        out.append(("IQ response time p99 (ms)", iqs))
    return out


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"


def _figure(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()
        )
    return str(value)
